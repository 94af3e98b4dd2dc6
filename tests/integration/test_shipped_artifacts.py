"""What `courierflow deploy` ships, installed the way its targets install it.

The wheel goes into a clean venv with its core dependencies only, as the EC2 bootstrap
installs it (``pip install WHEEL``, no extras), and the manager's command must start from
there. The layer goes next to an interpreter that has only boto3 (what the Lambda Python
runtime ships) and every handler must import from it. Real pip, real installs: a
dependency that lives only in an extra fails here as it would on the instance.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import courierflow
from courierflow.aws import artifacts as shipped
from courierflow.aws.layer import build_layer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

HANDLERS = ("publisher", "delivery", "reconciler")
#: what a function's environment has besides the stack's variables (Lambda sets these)
LAMBDA_ENV = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "LANG": "C.UTF-8",
}


def _venv(path: Path, *requirements: str) -> Path:
    """A fresh venv with ``requirements`` pip-installed; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *requirements], check=True, timeout=480)
    return path / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    """Nothing of the test's own environment but PATH's system folders."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **extra}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """The wheel, bootstrap.sh and unit file, built by deploy's own code."""
    yield shipped.manager_artifacts(tmp_path_factory.mktemp("dist"), lambda _line: None)


def test_the_wheel_installed_without_extras_runs_the_manager_command(
    artifacts: list[Path], tmp_path: Path
) -> None:
    (wheel,) = [path for path in artifacts if path.suffix == ".whl"]
    bin_dir = _venv(tmp_path / "venv", str(wheel))
    installed = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format", "freeze"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert not names & {"moto", "aiohttp", "starlette", "uvicorn", "psutil", "matplotlib"}
    for command in (["manager", "--help"], ["--help"], ["--version"]):
        result = subprocess.run(
            [str(bin_dir / "courierflow"), *command],
            capture_output=True, text=True, timeout=60, env=_clean_env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"courierflow {courierflow.__version__}"

    # deploy from this install: no source tree, so its files are packed into the wheel the
    # instance gets, and the template and EC2 files come from the package; the report too
    out = tmp_path / "from-installed"
    code = (
        "import sys; from pathlib import Path; from courierflow.aws import artifacts; "
        "files = artifacts.manager_artifacts(Path(sys.argv[1]), lambda line: None); "
        "assert 'ContentUri: s3://b/k.zip' in artifacts.template_body('s3://b/k.zip'); "
        # report.html renders from the installed templates with the core dependencies
        "from courierflow.report.html import render_report; "
        "from courierflow.report.summary import summarize; "
        "assert '<h1>courierflow run report</h1>' in render_report(summarize(None, [], 0), []); "
        "print(*files, sep='\\n')"
    )
    built = subprocess.run(
        [str(bin_dir / "python"), "-c", code, str(out)],
        capture_output=True, text=True, timeout=120, env=_clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    files = [Path(line) for line in built.stdout.split()]
    assert [f.name for f in files[1:]] == ["bootstrap.sh", "courierflow-manager.service"]
    again = _venv(tmp_path / "venv-again", str(files[0]))  # the repacked wheel installs
    result = subprocess.run(
        [str(again / "courierflow"), "manager", "--help"],
        capture_output=True, text=True, timeout=60, env=_clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_wheel_holds_the_package_its_templates_ec2_files_and_the_license(
    artifacts: list[Path],
) -> None:
    (wheel,) = [path for path in artifacts if path.suffix == ".whl"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    version = courierflow.__version__
    assert {
        "courierflow/py.typed",
        "courierflow/infra/template.yaml",
        "courierflow/infra/ec2/bootstrap.sh",
        "courierflow/infra/ec2/courierflow-manager.service",
        "courierflow/functions/delivery.py",
        "courierflow/report/templates/report.html.j2",
        "courierflow/report/templates/charts.html.j2",
        "courierflow/report/templates/dashboard.html.j2",
        "courierflow/report/static/courierflow.css",
        "courierflow/report/static/dashboard.js",
        f"courierflow-{version}.dist-info/licenses/LICENSE",
        f"courierflow-{version}.dist-info/entry_points.txt",
    } <= names
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_every_handler_imports_from_the_layer_beside_the_runtimes_boto3_only(
    tmp_path: Path,
) -> None:
    layer = build_layer(tmp_path / "layer_contents.zip")
    with zipfile.ZipFile(layer) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "opt")
    assert all(name.startswith("python/") for name in names)
    assert "python/pika/__init__.py" in names
    assert not any(
        name.startswith(("python/courierflow/local/", "python/boto3/")) for name in names
    )
    runtime = _venv(tmp_path / "runtime", "boto3")  # the Lambda runtime ships boto3
    task = tmp_path / "task"  # the function's own code: the template's InlineCode stub
    task.mkdir()
    (task / "index.py").write_text("# code is in the layer\n")
    for handler in HANDLERS:
        module = f"courierflow.functions.{handler}"
        code = (
            "import sys; sys.path[:0] = sys.argv[1:3]; "
            f"import {module} as m; assert callable(m.lambda_handler); print(m.__file__)"
        )
        result = subprocess.run(
            [str(runtime / "python"), "-I", "-c", code, str(task), str(tmp_path / "opt/python")],
            capture_output=True, text=True, timeout=60,
            env={**_clean_env(), **LAMBDA_ENV, "COURIERFLOW_LEDGER_URL": "dynamodb://ledger"},
            cwd=task,
        )  # fmt: skip
        assert result.returncode == 0, f"{module}: {result.stderr}"
        assert result.stdout.strip().startswith(str(tmp_path / "opt/python")), result.stdout
