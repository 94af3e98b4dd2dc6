"""Functions run as AWS runs them: under their own interpreter (a venv with only boto3,
standing in for Lambda's Python runtime), with nothing on the path but their code, their
layers and that interpreter's packages, and only Lambda's environment variables.

The service itself is a real HTTP server in its own process, driven through boto3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

import courierflow
from courierflow.errors import ConfigError
from courierflow.local.lambda_service.config import FunctionConfig, parse_flags
from courierflow.local.lambda_service.isolated import RUNTIME_PACKAGE
from courierflow.local.processes import ManagedProcess, free_port, spawn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
NO_RETRIES = Config(retries={"total_max_attempts": 1}, read_timeout=30)
#: a site-packages folder inside a layer, for the interpreter the runtime venv is made of
LAYER_SITE = f"python/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
#: the variables Lambda sets (AWS_LAMBDA_LOG_STREAM_NAME per environment)
LAMBDA_VARIABLES = {
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_TIMEOUT", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_EXECUTION_ENV", "AWS_REGION", "AWS_DEFAULT_REGION",
    "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "_HANDLER", "TZ",
}  # fmt: skip

PROBE = '''
"""Reports what the function sees: its modules, import path and environment."""
import importlib
import os
import sys


def handler(event, context):
    modules = {}
    for name in event.get("imports", []):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            modules[name] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            modules[name] = {"file": module.__file__, "mark": getattr(module, "MARK", None)}
    return {
        "modules": modules,
        "sys_path": sys.path,
        "executable": sys.executable,
        "isolated_flag": sys.flags.isolated,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "pid": os.getpid(),
    }


def write_marker(event, context):
    import helper_lib

    with open(event["path"], "w") as out:
        out.write(helper_lib.greeting())
    print("wrote the marker with", helper_lib.__file__)
'''

CONNECTS_AT_IMPORT = '''
"""Holds a socket from import on: the zygote must re-exec, importing per environment."""
import socket

from probe import handler as probe

held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def handler(event, context):
    return probe(event, context)
'''


@dataclass
class Tree:
    """The runtime venv, the function's code and its layers, on disk."""

    runtime_python: Path
    runtime_venv: Path
    code: Path
    helpers: Path  # layer: python/helper_lib.py and a site-packages module
    shadow: Path  # layer: python/courierflow/__init__.py, a package named like ours


@dataclass
class Service:
    url: str
    state_dir: Path
    process: ManagedProcess
    tree: Tree

    def invoke(self, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict, Any]:
        client = boto3.client(
            "lambda", endpoint_url=self.url, region_name="us-east-1", config=NO_RETRIES
        )
        response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kwargs)
        return response, json.loads(response["Payload"].read() or b"null")

    def log(self, name: str) -> str:
        path = self.state_dir / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """A Lambda runtime stand-in (a fresh venv with boto3 only), code and two layers."""
    tmp = tmp_path_factory.mktemp("isolated")
    venv = tmp / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "boto3"],
        check=True,
        timeout=180,
    )
    code, helpers, shadow = tmp / "task", tmp / "layers" / "helpers", tmp / "layers" / "shadow"
    write(code / "probe.py", PROBE)
    write(code / "connects_at_import.py", CONNECTS_AT_IMPORT)
    write(
        helpers / "python" / "helper_lib.py",
        '''
        """A module shipped in a layer."""


        def greeting():
            return "hello from the layer"
        ''',
    )
    write(helpers / LAYER_SITE / "site_lib.py", 'MARK = "layer site-packages"\n')
    write(shadow / "python" / "courierflow" / "__init__.py", 'MARK = "layer"\n')
    return Tree(venv / "bin" / "python", venv, code, helpers, shadow)


def start_service(tmp: Path, tree: Tree) -> Service:
    """The service with isolated functions (TOML and ``--set``) and one in its own venv."""
    config = tmp / "functions.toml"
    common = (
        f"code_dir = {json.dumps(str(tree.code))}\n"
        f"runtime_python = {json.dumps(str(tree.runtime_python))}\n"
    )
    config.write_text(
        "[functions.isolated]\n"
        'handler = "probe.handler"\n'
        f"{common}"
        f"layers = [{json.dumps(str(tree.helpers))}]\n"
        'env = { STAGE = "rehearse" }\n'
        "[functions.shadowed]\n"
        'handler = "probe:handler"\n'
        f"{common}"
        f"layers = [{json.dumps(str(tree.shadow))}, {json.dumps(str(tree.helpers))}]\n"
        "[functions.connects]\n"
        'handler = "connects_at_import:handler"\n'
        f"{common}"
    )
    sets = [
        f"marker.code_dir={tree.code}", f"marker.layers={tree.helpers}",
        f"marker.runtime_python={tree.runtime_python}",
        f"plain.code_dir={tree.code}", f"plain.layers={tree.helpers}",
    ]  # fmt: skip
    port = free_port()
    argv = [
        sys.executable, "-m", "courierflow.local.lambda_service", "serve",
        "--port", str(port), "--state-dir", str(tmp / "state"), "--config", str(config),
        "--function", "marker=probe:write_marker", "--function", "plain=probe:handler",
        *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip
    write(tmp / "pythonpath" / "from_pythonpath.py", "MARK = 'pythonpath'\n")
    env = {
        **os.environ,
        "COURIERFLOW_MARKER": "the service's own",
        "PYTHONPATH": str(tmp / "pythonpath"),
        "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "session",
    }
    proc = spawn("lambda", argv, tmp / "service.log", env, port=port)
    proc.wait_for_port(60)
    return Service(f"http://127.0.0.1:{port}", tmp / "state", proc, tree)


@pytest.fixture(scope="module")
def service(tree: Tree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("isolated-service"), tree)
    try:
        yield svc
    finally:
        svc.process.stop()


def probe(service: Service, name: str, *imports: str) -> dict[str, Any]:
    response, body = service.invoke(name, {"imports": list(imports)})
    assert "FunctionError" not in response, body
    result: dict[str, Any] = body
    return result


def test_handler_imports_its_layer_and_the_runtime_boto3(service: Service) -> None:
    seen = probe(service, "isolated", "helper_lib", "site_lib", "boto3")
    helpers, venv = service.tree.helpers, service.tree.runtime_venv
    assert seen["modules"]["helper_lib"]["file"] == str(helpers / "python" / "helper_lib.py")
    assert seen["modules"]["site_lib"]["mark"] == "layer site-packages"
    assert seen["modules"]["boto3"]["file"].startswith(str(venv) + os.sep)
    assert seen["executable"] == str(service.tree.runtime_python)
    assert seen["isolated_flag"] == 1


def test_packages_of_the_services_venv_cannot_be_imported(service: Service) -> None:
    import pika  # present in the service's venv: the failures below are the isolation

    assert pika.__file__
    seen = probe(service, "isolated", "pika", "courierflow", "typer", "from_pythonpath")
    errors = {name: module.get("error", "") for name, module in seen["modules"].items()}
    assert errors == {
        "pika": "ModuleNotFoundError: No module named 'pika'",
        "courierflow": "ModuleNotFoundError: No module named 'courierflow'",
        "typer": "ModuleNotFoundError: No module named 'typer'",
        "from_pythonpath": "ModuleNotFoundError: No module named 'from_pythonpath'",
    }


def test_import_path_is_code_then_layers_then_the_runtime_only(service: Service) -> None:
    seen = probe(service, "shadowed")
    tree, runtime_root = service.tree, service.state_dir / "runtime"
    expected_front = [
        str(tree.code),
        str(tree.shadow / LAYER_SITE), str(tree.shadow / "python"),
        str(tree.helpers / LAYER_SITE), str(tree.helpers / "python"),
    ]  # fmt: skip
    path: list[str] = seen["sys_path"]
    assert path[: len(expected_front)] == expected_front
    assert path[-1] == str(runtime_root)  # the private runtime copy, last (/var/runtime)
    assert (runtime_root / RUNTIME_PACKAGE / "runtime.py").is_file()
    interpreter = path[len(expected_front) : -1]
    assert interpreter and all(
        p.startswith((str(tree.runtime_venv) + os.sep, sys.base_prefix + os.sep))
        for p in interpreter
    ), interpreter
    assert not [p for p in path if p.startswith(sys.prefix + os.sep)]  # the service's venv
    assert str(Path(courierflow.__file__).parents[1]) not in path
    assert seen["cwd"] == str(tree.code)  # Lambda runs in /var/task


def test_a_layer_shipping_courierflow_is_the_one_imported(service: Service) -> None:
    seen = probe(service, "shadowed", "courierflow")
    module = seen["modules"]["courierflow"]
    assert module["mark"] == "layer"
    assert module["file"] == str(service.tree.shadow / "python" / "courierflow" / "__init__.py")


def test_environment_is_lambdas_plus_aws_endpoints_and_credentials(service: Service) -> None:
    env = probe(service, "isolated")["env"]
    assert env["STAGE"] == "rehearse"
    assert env["AWS_ENDPOINT_URL_SQS"] == "http://127.0.0.1:1"
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    assert env["AWS_SESSION_TOKEN"] == "session"
    assert env["LAMBDA_TASK_ROOT"] == str(service.tree.code)
    assert env["LAMBDA_RUNTIME_DIR"] == str(service.state_dir / "runtime")
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python3.{sys.version_info.minor}"
    passed = {"PATH", "LANG", "LC_CTYPE", "STAGE"} | {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"
    }  # fmt: skip
    unexpected = {
        name
        for name in env
        if name not in LAMBDA_VARIABLES | passed and not name.startswith("AWS_ENDPOINT_URL")
    }
    assert unexpected == set()  # no COURIERFLOW_MARKER, PYTHONPATH, VIRTUAL_ENV, HOME...


def test_event_invoke_runs_in_the_isolated_environment(service: Service, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    response, _ = service.invoke("marker", {"path": str(marker)}, InvocationType="Event")
    assert response["StatusCode"] == 202
    deadline = time.monotonic() + 30
    while not (marker.exists() and "wrote the marker" in service.log("marker")):
        assert time.monotonic() < deadline, service.log("marker")
        time.sleep(0.1)
    assert marker.read_text() == "hello from the layer"
    assert str(service.tree.helpers / "python" / "helper_lib.py") in service.log("marker")


def test_module_holding_a_socket_at_import_reexecs_still_isolated(service: Service) -> None:
    seen = probe(service, "connects", "courierflow", "boto3")
    assert seen["modules"]["courierflow"]["error"].startswith("ModuleNotFoundError")
    assert seen["modules"]["boto3"]["file"].startswith(str(service.tree.runtime_venv))
    assert seen["sys_path"][0] == str(service.tree.code)
    assert seen["sys_path"][-1] == str(service.state_dir / "runtime")
    assert seen["executable"] == str(service.tree.runtime_python)
    runtime_log = (service.state_dir / "logs" / "connects.runtime.log").read_text()
    assert "opened network connections at import" in runtime_log


def test_without_runtime_python_code_and_layers_go_before_the_services_venv(
    service: Service,
) -> None:
    seen = probe(service, "plain", "helper_lib", "courierflow")
    tree = service.tree
    assert seen["sys_path"][:3] == [
        str(tree.code), str(tree.helpers / LAYER_SITE), str(tree.helpers / "python")
    ]  # fmt: skip
    assert seen["modules"]["helper_lib"]["file"] == str(tree.helpers / "python" / "helper_lib.py")
    assert seen["modules"]["courierflow"]["file"] == courierflow.__file__  # the service's venv
    assert seen["executable"] == sys.executable
    assert seen["env"]["COURIERFLOW_MARKER"] == "the service's own"
    assert seen["env"]["LAMBDA_TASK_ROOT"] == str(tree.code)


def test_a_runtime_python_that_does_not_exist_stops_the_service_at_start(
    tree: Tree, tmp_path: Path
) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "courierflow.local.lambda_service", "serve",
        "--port", str(port), "--state-dir", str(tmp_path / "state"),
        "--function", "ghost=probe:handler", "--set", f"ghost.code_dir={tree.code}",
        "--set", f"ghost.runtime_python={tmp_path / 'no-such-python'}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "is not an executable interpreter" in done.stderr


def test_new_settings_parse_from_flags_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "functions.toml"
    config.write_text(
        '[functions.a]\nhandler = "m:h"\ncode_dir = "/task"\nlayers = ["/l1", "/l2"]\n'
        'runtime_python = "/venv/bin/python"\n'
    )
    table = parse_flags(["b=m:h"], ["b.layers=/x, /y", "b.code_dir=/code"], [], config_file=config)
    a, b = table["a"], table["b"]
    assert (a.code_dir, a.layers, a.runtime_python, a.isolated) == (
        "/task", ("/l1", "/l2"), "/venv/bin/python", True
    )  # fmt: skip
    assert (b.code_dir, b.layers, b.runtime_python, b.isolated) == (
        "/code",
        ("/x", "/y"),
        "",
        False,
    )
    with pytest.raises(ConfigError):
        FunctionConfig(name="c", handler="m:h").set("layer", "/x")
