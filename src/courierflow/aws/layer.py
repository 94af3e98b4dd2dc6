"""Build the Lambda layer: ``python/`` with pika and courierflow, for the Lambda runtime's
Python version and architecture whatever Python builds it (boto3 is in the runtime)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import courierflow

#: what the layer adds to the Lambda runtime
LAYER_REQUIREMENTS = ("pika>=1.3",)
#: parts of the package that only the local stack and the CLI use
LOCAL_ONLY = ("local", "report", "cli.py", "aws", "infra")


def build_layer(
    out: Path, python_version: str = "3.11", platform: str = "manylinux2014_x86_64"
) -> Path:
    """Write ``out`` (a zip with a top-level ``python/`` folder) and return its path.

    Raises:
        subprocess.CalledProcessError: pip could not fetch a wheel for the target.
    """
    with tempfile.TemporaryDirectory(prefix="courierflow-layer-") as tmp:
        target = Path(tmp) / "python"
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                "--target", str(target), "--platform", platform, "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp",
                *LAYER_REQUIREMENTS,
            ],
            check=True,
        )  # fmt: skip
        package = Path(courierflow.__file__).parent
        shutil.copytree(
            package,
            target / "courierflow",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *LOCAL_ONLY),
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(Path(tmp)))
    return out
