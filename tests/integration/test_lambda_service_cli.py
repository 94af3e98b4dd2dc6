"""The local Lambda service through its CLI contract (`courierflow lambda serve`, as the
stack starts it): readiness line, TOML config, environment, health, memory, idle
reaping, event age, SQS destinations on moto, and a clean shutdown with no orphans."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.config import Config

from courierflow.local.processes import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
HANDLERS = Path(__file__).parent / "lambda_handlers"
COURIERFLOW = Path(sys.executable).parent / "courierflow"
READY = "courierflow lambda service listening on http://127.0.0.1:"
NO_RETRIES = Config(retries={"total_max_attempts": 1}, read_timeout=30)


@dataclass
class Served:
    """A `courierflow lambda serve` process started by a test."""

    process: subprocess.Popen[str]
    url: str
    state_dir: Path
    ready_line: str

    def client(self) -> Any:
        return boto3.client(
            "lambda", endpoint_url=self.url, region_name="us-east-1", config=NO_RETRIES
        )

    def health(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
            doc: dict[str, Any] = json.load(answer)["functions"][name]
        return doc

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    """Start the installed console script and wait for its one readiness line."""
    port = free_port()
    argv = [
        str(COURIERFLOW), "lambda", "serve", "--port", str(port),
        "--state-dir", str(tmp / "state"), "--code-dir", str(HANDLERS), *args,
    ]  # fmt: skip
    errors = open(tmp / f"serve-{port}.err", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=env or dict(os.environ)
    )
    errors.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready (or the process ends)
    if READY not in line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"not ready: {line!r}; {(tmp / f'serve-{port}.err').read_text()}")
    return Served(proc, f"http://127.0.0.1:{port}", tmp / "state", line)


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict, Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kwargs)
    return response, json.loads(response["Payload"].read() or b"null")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("lambda-cli")
    config = tmp / "functions.toml"
    config.write_text(
        "[functions.envdump]\n"
        'handler = "samples.environment"\n'  # AWS's MODULE.FUNCTION spelling
        "timeout = 7\n"
        "memory = 512\n"
        'env = { STAGE = "test" }\n'
    )
    fns = {
        "leaky": "samples:leaky",
        "logging": "samples:logs_with_logging",
        "big": "samples:big_response",
        "exits_at_import": "exits_at_import:handler",
        "aged": "samples:fail",
        "idle": "samples:echo",
    }
    args = [a for name, h in fns.items() for a in ("--function", f"{name}={h}")]
    sets = [
        "leaky.memory=128", "leaky.timeout=60", "aged.retry_delays=1.5", "aged.max_event_age=1",
        f"aged.on_failure={tmp / 'aged.jsonl'}", "idle.idle_timeout=1",
        "envdump.env.EXTRA=from-set",
    ]  # fmt: skip
    env = {**os.environ, "COURIERFLOW_MARKER": "inherited", "AWS_ENDPOINT_URL_SQS": "http://x:1"}
    svc = serve(
        tmp, "--config", str(config), *args, *[a for s in sets for a in ("--set", s)], env=env
    )
    try:
        yield svc
    finally:
        svc.stop()


def test_readiness_line_names_the_url(served: Served) -> None:
    assert served.ready_line.strip() == f"courierflow lambda service listening on {served.url}"


def test_toml_config_env_and_lambda_variables_reach_the_handler(served: Served) -> None:
    env = invoke(served.client(), "envdump")[1]
    assert env["STAGE"] == "test" and env["EXTRA"] == "from-set"
    assert env["COURIERFLOW_MARKER"] == "inherited"  # the service's own environment
    assert env["AWS_ENDPOINT_URL_SQS"] == "http://x:1"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "envdump"
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/envdump"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"].split("/")[-1].startswith("[$LATEST]")
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3")
    assert env["LAMBDA_TASK_ROOT"] == str(HANDLERS)
    config = served.client().get_function(FunctionName="envdump")["Configuration"]
    assert (config["Timeout"], config["MemorySize"]) == (7, 512)
    assert config["Environment"]["Variables"] == {"STAGE": "test", "EXTRA": "from-set"}


def test_health_counts_invocations_and_errors(served: Served) -> None:
    before = served.health("envdump")
    invoke(served.client(), "envdump")
    after = served.health("envdump")
    assert after["invocations"] == before["invocations"] + 1
    assert after["errors"] == before["errors"]
    assert after["idle"] >= 1 and after["busy"] == 0 and after["event_queue"] == 0
    assert {"throttles", "async_accepted"} <= set(after)


def test_a_runaway_allocation_is_out_of_memory_and_the_environment_replaced(
    served: Served,
) -> None:
    client = served.client()
    response, body = invoke(client, "leaky")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.OutOfMemory"
    assert served.health("leaky")["total"] == 0  # the environment was not kept
    assert invoke(client, "envdump")[0]["StatusCode"] == 200


def test_logging_lines_land_in_the_invocations_log_with_the_request_id(served: Served) -> None:
    response = served.client().invoke(
        FunctionName="logging", Payload=b'{"order_id": "LG-1"}', LogType="Tail"
    )
    rid = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    tail = base64.b64decode(response["LogResult"]).decode()
    line = next(x for x in tail.splitlines() if "LG-1" in x)
    assert line.startswith("[INFO]\t") and f"\t{rid}\torder LG-1 accepted" in line


def test_a_response_over_6_mb_is_a_function_error(served: Served) -> None:
    response, body = invoke(served.client(), "big")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Function.ResponseSizeTooLarge"


def test_exit_while_importing_is_an_exit_error_not_a_hang(served: Served) -> None:
    started = time.monotonic()
    response, body = invoke(served.client(), "exits_at_import")
    assert time.monotonic() - started < 10
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in body["errorMessage"]


def test_an_event_too_old_to_retry_goes_to_the_destination_as_event_age_exceeded(
    served: Served,
) -> None:
    served.client().invoke(FunctionName="aged", InvocationType="Event", Payload=b'{"order_id": 1}')
    destination = served.state_dir.parent / "aged.jsonl"
    wait_until(destination.exists, 15, "no on-failure record")
    record = json.loads(destination.read_text().splitlines()[0])
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["requestPayload"] == {"order_id": 1}


def test_idle_environments_are_reaped(served: Served) -> None:
    pid = invoke(served.client(), "idle")[1]["pid"]
    assert psutil.pid_exists(pid)
    wait_until(lambda: served.health("idle")["total"] == 0, 10, "idle environment kept")
    wait_until(lambda: not psutil.pid_exists(pid), 5, "reaped environment still running")


def test_malformed_requests_get_aws_errors(served: Served) -> None:
    client = served.client()
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="envdump", Payload=b'"\xff\xfe"')
    request = urllib.request.Request(
        f"{served.url}/2015-03-31/functions/envdump/invocations",
        data=b"{}",
        headers={"X-Amz-Invocation-Type": "Sometimes"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert caught.value.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(f"{served.url}/2015-03-31/nothing-here", timeout=5)
    assert unknown.value.code == 404
    assert json.loads(unknown.value.read())["Type"] == "User"


@pytest.mark.timeout(90)
def test_on_failure_records_reach_an_sqs_queue_on_moto(tmp_path: Path, moto_server: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="lambda-failures")["QueueUrl"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    svc = serve(
        tmp_path, "--function", "fail=samples:fail", "--set", "fail.retry_delays=0.1,0.1",
        "--set", f"fail.on_failure={queue}", env=env,
    )  # fmt: skip
    try:
        svc.client().invoke(FunctionName="fail", InvocationType="Event", Payload=b'{"order_id": 7}')
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1).get("Messages", [])
        assert got, "no on-failure record in the queue"
        record = json.loads(got[0]["Body"])
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["requestContext"]["approximateInvokeCount"] == 3
        assert record["requestContext"]["functionArn"].endswith(":function:fail:$LATEST")
        assert record["responsePayload"]["errorType"] == "ValueError"
    finally:
        svc.stop()


def test_sigterm_stops_every_environment_and_zygote(tmp_path: Path) -> None:
    svc = serve(
        tmp_path, "--function", "sleepy=samples:sleepy", "--function", "echo=samples:echo",
        "--set", "sleepy.timeout=30",
    )  # fmt: skip
    try:
        client = svc.client()
        for _ in range(3):
            client.invoke(FunctionName="sleepy", InvocationType="Event", Payload=b'{"seconds": 20}')
        invoke(client, "echo")
        wait_until(lambda: svc.health("sleepy")["busy"] == 3, 15, "environments not started")
        tree = psutil.Process(svc.process.pid).children(recursive=True)
        assert len(tree) >= 6  # two zygotes, three sleeping and one idle environment
        svc.process.send_signal(signal.SIGTERM)
        assert svc.process.wait(10) == 0
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert alive == [], f"orphans left: {[p.pid for p in alive]}"
    finally:
        svc.stop()


def test_logs_follow_prints_new_invocations_as_they_happen(served: Served) -> None:
    follower = subprocess.Popen(
        [str(COURIERFLOW), "lambda", "logs", "idle", "--follow", "--state-dir",
         str(served.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        invoke(served.client(), "idle", {"marker": "followed"})
        assert follower.stdout is not None
        deadline = time.monotonic() + 10
        seen = ""
        while '"marker": "followed"' not in seen:
            assert time.monotonic() < deadline, f"not followed: {seen[-500:]!r}"
            seen += follower.stdout.readline()
        assert follower.poll() is None  # still following
    finally:
        follower.kill()
        follower.wait()
