"""The Lambda layer, built for real (pika's wheel comes from PyPI) and imported in an
isolated interpreter that sees only the layer and boto3 (which the Lambda runtime has)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from courierflow.aws.layer import build_layer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

IMPORT_HANDLERS = """
import sys
sys.path[:0] = sys.argv[1:3]
import pika, courierflow.functions.publisher, courierflow.functions.delivery
import courierflow.functions.reconciler
print(pika.__file__)
print(courierflow.functions.delivery.__file__)
"""


def test_layer_imports_pika_and_the_handlers_in_an_isolated_interpreter(tmp_path: Path) -> None:
    layer = build_layer(tmp_path / "layer_contents.zip")
    with zipfile.ZipFile(layer) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "opt")
    assert all(name.startswith("python/") for name in names)
    assert "python/courierflow/functions/delivery.py" in names
    assert not any(
        name.startswith(("python/courierflow/local/", "python/boto3/")) for name in names
    )

    opt_python = tmp_path / "opt" / "python"
    boto3_site = Path(boto3.__file__).parent.parent  # stands in for the runtime's boto3
    result = subprocess.run(
        [sys.executable, "-I", "-c", IMPORT_HANDLERS, str(opt_python), str(boto3_site)],
        capture_output=True, text=True, timeout=60,
        env={"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pika_file, delivery_file = result.stdout.split()
    assert pika_file.startswith(str(opt_python))
    assert delivery_file.startswith(str(opt_python))
