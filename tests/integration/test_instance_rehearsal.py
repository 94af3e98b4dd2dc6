"""The EC2 instance, rehearsed: the template's user data, rendered as CloudFormation
renders it, runs as root into a scratch root folder; it downloads the real artifacts
(built by deploy's own code) from S3, pip-installs the real wheel without extras, and
then the manager runs with exactly its systemd unit's ExecStart, EnvironmentFile and
Environment. Nothing of the caller's environment reaches it but the endpoint variables
that point at the stand-ins (moto's server) and the instance role's credentials.

SQS transport (no broker to start): an order put on the queue must be invoked and
recorded as dispatched in the DynamoDB ledger. moto accepts the asynchronous Invoke
(202) without running the function; running the functions from their layer is the
local Lambda service's part. A second run with a rebuilt wheel of new code must
install the new code (a same-version wheel is otherwise kept by pip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from courierflow.aws import artifacts
from courierflow.aws.rehearsal.instance import shell_part, unit_environment
from courierflow.ledger.dynamodb import DynamoDBLedger
from courierflow.local.processes import stop_pid
from courierflow.orders import OrderState
from tests.integration.test_infra_template import load_template

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
UNIT = artifacts.BOOTSTRAP.parent / "courierflow-manager.service"
#: what the instance metadata service would hand the instance's processes
INSTANCE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def render_user_data(values: dict[str, str]) -> str:
    """The instance's shell script, as CloudFormation's Fn::Sub renders the template's
    user data (``${Name}`` replaced, ``${!Name}`` left as ``${Name}``), taken out of its
    MIME part as cloud-init would."""
    user_data = load_template()["Resources"]["BrokerInstance"]["Properties"]["UserData"]
    text, _variables = user_data["Fn::Base64"]["Fn::Sub"]

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        return "${" + name[1:] + "}" if name.startswith("!") else values[name]

    return shell_part(re.sub(r"\$\{([^}]+)\}", sub, text))


@pytest.fixture
def account(moto_server: str) -> Iterator[dict[str, Any]]:
    """The stand-in account's parts the instance uses: artifacts, ledger, queue."""
    clients = {name: boto3.client(name, endpoint_url=moto_server, region_name="us-east-1")
               for name in ("s3", "dynamodb", "sqs", "lambda", "iam")}  # fmt: skip
    suffix = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
    bucket, table = f"artifacts-{suffix}", f"ledger-{suffix}"
    clients["s3"].create_bucket(Bucket=bucket)
    clients["dynamodb"].create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )  # fmt: skip
    role = clients["iam"].create_role(RoleName=f"r-{suffix}", AssumeRolePolicyDocument="{}")
    clients["lambda"].create_function(
        FunctionName=f"lambda_delivery_{suffix}".replace("-", "_"), Runtime="python3.11",
        Role=role["Role"]["Arn"], Handler="index.h", Code={"ZipFile": _stub_zip()},
    )  # fmt: skip
    function = f"lambda_delivery_{suffix}".replace("-", "_")
    yield {"clients": clients, "bucket": bucket, "table": table, "suffix": suffix,
           "function": function, "url": moto_server}  # fmt: skip


def _stub_zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("index.py", "def h(event, context):\n    return event\n")
    return buffer.getvalue()


def _upload(account: dict[str, Any], files: list[Path]) -> str:
    prefix = f"courierflow/{artifacts.content_digest(files)}/"
    for path in files:
        account["clients"]["s3"].upload_file(str(path), account["bucket"], prefix + path.name)
    return prefix


def _endpoints(url: str) -> dict[str, str]:
    return {f"AWS_ENDPOINT_URL_{s}": url for s in ("S3", "SQS", "DYNAMODB", "LAMBDA", "SSM",
                                                    "CLOUDFORMATION")}  # fmt: skip


def _run_user_data(script: str, root: Path, url: str) -> str:
    aws_cli = Path(sys.executable).parent  # the aws CLI (apt's awscli on the instance)
    env = {"PATH": f"{aws_cli}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root / "root"),
           "LANG": "C.UTF-8", "COURIERFLOW_ROOT": str(root),
           **INSTANCE_CREDENTIALS, **_endpoints(url)}  # fmt: skip
    (root / "var" / "log").mkdir(parents=True, exist_ok=True)
    (root / "root").mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                            timeout=480)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_user_data_installs_the_wheel_and_the_manager_runs_from_its_unit(
    account: dict[str, Any], tmp_path: Path
) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    clients = account["clients"]
    queue_name = f"orders-{account['suffix']}"
    # the manager's transport declares the queue and its dead-letter queue itself, with
    # the attributes the template gives them; moto names it by account and name
    queue_url = f"{account['url']}/123456789012/{queue_name}"
    files = artifacts.manager_artifacts(tmp_path / "dist", lambda _line: None)
    values = {
        "AWS::Region": "us-east-1", "AWS::StackName": "rehearsal",
        "ArtifactBucket": account["bucket"], "ArtifactPrefix": _upload(account, files),
        "BrokerSecretParameter": "/courierflow/amqp-url", "Ledger": account["table"],
        "QueueLine": f"COURIERFLOW_QUEUE_URL={queue_url}", "BrokerFlag": "--skip-rabbitmq",
        "NatFlag": "",
    }  # fmt: skip
    script = render_user_data(values).replace(
        "COURIERFLOW_DELIVERY_FUNCTION=lambda_delivery",
        f"COURIERFLOW_DELIVERY_FUNCTION={account['function']}",
    )
    root = tmp_path / "root"
    out = _run_user_data(script, root, account["url"])
    assert "[bootstrap] done" in out

    env_file = root / "etc" / "courierflow" / "manager.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert "amqp" not in env_file.read_text().lower()  # SQS: no broker, no secret to read
    argv, env = unit_environment(UNIT, root)
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"  # botocore's region variable
    Path(env["COURIERFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    env = {**env, **INSTANCE_CREDENTIALS, **_endpoints(account["url"])}
    manager = subprocess.Popen(
        argv, env=env, cwd=env["COURIERFLOW_HOME"], start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        order = {"order_id": f"R-{account['suffix']}", "customer": "c", "quantity": 1}
        deadline = time.monotonic() + 30
        # the exact name: the dead-letter queue (NAME-dlq) is declared first
        while not any(
            url.rsplit("/", 1)[-1] == queue_name
            for url in clients["sqs"].list_queues().get("QueueUrls", [])
        ):
            assert time.monotonic() < deadline, "the manager did not declare its queue"
            assert manager.poll() is None, manager.communicate()[0][-3000:]
            time.sleep(0.2)
        sent_to = clients["sqs"].get_queue_url(QueueName=queue_name)["QueueUrl"]
        clients["sqs"].send_message(QueueUrl=sent_to, MessageBody=json.dumps(order))
        ledger = DynamoDBLedger(account["table"], client=clients["dynamodb"])
        deadline = time.monotonic() + 60
        states: dict[str, OrderState] = {}
        while time.monotonic() < deadline and OrderState.DISPATCHED not in states.values():
            states = {r.order_id: r.state for r in ledger.orders()}
            time.sleep(0.5)
            assert manager.poll() is None, manager.communicate()[0][-3000:]
        assert states == {order["order_id"]: OrderState.DISPATCHED}
    finally:
        stop_pid(manager.pid, grace=10)

    # new code, same version number: the second boot's bootstrap must install it
    marker = f"rehearsal-{account['suffix']}"
    changed = _rebuild_with_marker(tmp_path, marker)
    values["ArtifactPrefix"] = _upload(
        account, [changed, *[f for f in files if f.suffix != ".whl"]]
    )
    _run_user_data(render_user_data(values), root, account["url"])
    installed = subprocess.run(
        [str(root / "opt/courierflow/bin/python"), "-c",
         "import courierflow, pathlib; print(pathlib.Path(courierflow.__file__).read_text())"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert marker in installed


def _rebuild_with_marker(tmp_path: Path, marker: str) -> Path:
    """The wheel of a copy of the source whose package docstring names ``marker``."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".courierflow", "__pycache__", "*.egg-info", "build", "dist"))  # fmt: skip
    init = source / "src" / "courierflow" / "__init__.py"
    init.write_text(f"# {marker}\n" + init.read_text())
    out = tmp_path / "dist2"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(source)], check=True, timeout=300)  # fmt: skip
    (wheel,) = out.glob("courierflow-*.whl")
    return wheel
