"""The local Lambda service as a real HTTP server in its own process, driven by boto3
and the AWS CLI exactly as they drive AWS Lambda."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pika
import psutil
import pytest
from botocore.config import Config

from courierflow.local.processes import ManagedProcess, free_port, spawn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
HANDLERS = Path(__file__).parent / "lambda_handlers"
NO_RETRIES = Config(retries={"total_max_attempts": 1}, read_timeout=30)


@dataclass
class Service:
    url: str
    state_dir: Path
    process: ManagedProcess

    def client(self) -> Any:
        return boto3.client(
            "lambda", endpoint_url=self.url, region_name="us-east-1", config=NO_RETRIES
        )

    def log(self, name: str) -> str:
        return (self.state_dir / "logs" / f"{name}.log").read_text()


def start_service(tmp: Path, *args: str, port: int = 0) -> Service:
    port = port or free_port()
    argv = [
        sys.executable, "-m", "courierflow.local.lambda_service", "serve",
        "--port", str(port), "--state-dir", str(tmp / "state"), "--code-dir", str(HANDLERS),
        *args,
    ]  # fmt: skip
    env = {**os.environ, "FLAKY_FILE": str(tmp / "flaky.txt")}
    proc = spawn("lambda", argv, tmp / "service.log", env, port=port)
    proc.wait_for_port(30)
    return Service(f"http://127.0.0.1:{port}", tmp / "state", proc)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("lambda")
    fns = {
        "echo": "samples:echo",
        "fail": "samples:fail",
        "sleepy": "samples:sleepy",
        "flaky": "samples:flaky",
        "exits": "samples:exits",
        "dies": "samples:dies",
        "chatty": "samples:chatty",
        "broken": "broken_import:handler",
        "missing": "samples:no_such_handler",
        "lambda_delivery": "samples:lab_delivery",
    }
    args = [a for name, h in fns.items() for a in ("--function", f"{name}={h}")]
    sets = [
        "echo.env.GREETING=hello", "echo.concurrency=4", "echo.memory=256",
        "fail.retry_delays=0.1,0.2", f"fail.on_failure={tmp / 'failures.jsonl'}",
        "flaky.retry_delays=0.1,0.1", f"flaky.on_failure={tmp / 'flaky-failures.jsonl'}",
        "sleepy.timeout=1", "sleepy.concurrency=2",
    ]  # fmt: skip
    svc = start_service(tmp, *args, *[a for s in sets for a in ("--set", s)])
    svc.state_dir.joinpath("tmp").mkdir(exist_ok=True)
    try:
        yield svc
    finally:
        svc.process.stop()


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict, Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kwargs)
    return response, json.loads(response["Payload"].read() or b"null")


def test_sync_invoke_returns_the_result_with_a_real_context(service: Service) -> None:
    response, body = invoke(service.client(), "echo", {"order_id": "A-1"})
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert body["event"] == {"order_id": "A-1"}
    assert body["function_name"] == "echo" and body["function_version"] == "$LATEST"
    assert body["arn"] == "arn:aws:lambda:us-east-1:123456789012:function:echo"
    assert body["memory"] == "256" and body["log_group"] == "/aws/lambda/echo"
    assert body["log_stream"] and len(body["request_id"]) == 36
    assert 0 < body["remaining_ms"] <= 3000
    assert body["env"] == {
        "AWS_LAMBDA_FUNCTION_NAME": "echo",
        "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "3",
        "GREETING": "hello",
    }


def test_environments_stay_warm_between_invocations(service: Service) -> None:
    client = service.client()
    first = invoke(client, "echo")[1]
    second = invoke(client, "echo")[1]
    assert second["pid"] == first["pid"]
    assert second["calls"] == first["calls"] + 1


def environment_pids(service: Service) -> set[int]:
    """The forked environments: the children of the functions' zygotes."""
    zygotes = psutil.Process(service.process.pid).children()
    return {env.pid for zygote in zygotes for env in zygote.children()}


def test_provisioned_environments_start_with_the_service_and_stay_warm(tmp_path: Path) -> None:
    svc = start_service(
        tmp_path,
        "--function", "echo=samples:echo",
        "--set", "echo.provisioned_concurrency=3", "--set", "echo.concurrency=4",
        "--set", "echo.idle_timeout=0.2",
    )  # fmt: skip
    try:
        provisioned = environment_pids(svc)
        assert len(provisioned) == 3, "provisioned environments are up before the port opens"
        assert invoke(svc.client(), "echo")[1]["pid"] in provisioned
        time.sleep(1.5)  # several idle timeouts: only environments beyond 3 would be reaped
        assert environment_pids(svc) == provisioned
    finally:
        svc.process.stop()


def test_function_names_may_be_arns_and_qualifier_latest(service: Service) -> None:
    client = service.client()
    arn = "arn:aws:lambda:us-east-1:123456789012:function:echo"
    assert invoke(client, arn)[0]["StatusCode"] == 200
    assert invoke(client, "echo", Qualifier="$LATEST")[0]["StatusCode"] == 200
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        invoke(client, "echo", Qualifier="7")


def test_handler_exception_is_an_unhandled_error_document(service: Service) -> None:
    response, body = invoke(service.client(), "fail", {"order_id": "X"}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "cannot deliver X"
    assert any("samples.py" in frame for frame in body["stackTrace"])
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "[ERROR] ValueError: cannot deliver X" in tail


def test_tail_returns_the_invocations_log_in_cloudwatch_shape(service: Service) -> None:
    response, body = invoke(service.client(), "echo", {"n": 1}, LogType="Tail")
    tail = base64.b64decode(response["LogResult"]).decode()
    rid = body["request_id"]
    assert tail.startswith(f"START RequestId: {rid} Version: $LATEST\n")
    assert 'echo {"n": 1}' in tail
    assert f"END RequestId: {rid}" in tail
    report = tail.strip().splitlines()[-1]
    assert report.startswith(f"REPORT RequestId: {rid}\tDuration: ")
    for part in ("Billed Duration: ", "Memory Size: 256 MB", "Max Memory Used: "):
        assert part in report


def test_a_handler_past_its_timeout_is_killed_and_replaced(service: Service) -> None:
    client = service.client()
    started = time.monotonic()
    response, body = invoke(client, "sleepy", {"seconds": 5})
    assert time.monotonic() - started < 3
    assert response["FunctionError"] == "Unhandled"
    assert "Task timed out after 1.00 seconds" in body["errorMessage"]
    assert invoke(client, "sleepy", {"seconds": 0.01})[1] == {"slept": 0.01}


def test_sync_invokes_beyond_concurrency_are_throttled(service: Service) -> None:
    client = service.client()

    def call(_: int) -> str:
        try:
            invoke(client, "sleepy", {"seconds": 0.8})
            return "ok"
        except client.exceptions.TooManyRequestsException:
            return "throttled"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(call, range(4)))
    assert outcomes.count("ok") == 2
    assert outcomes.count("throttled") == 2


def test_event_invokes_are_accepted_at_once_and_wait_for_an_environment(
    service: Service,
) -> None:
    client = service.client()
    before = service.log("sleepy").count("REPORT RequestId")
    started = time.monotonic()
    for _ in range(6):
        response = client.invoke(
            FunctionName="sleepy", InvocationType="Event", Payload=b'{"seconds": 0.3}'
        )
        assert response["StatusCode"] == 202
    assert time.monotonic() - started < 1.0
    assert client.invoke(FunctionName="sleepy", InvocationType="DryRun")["StatusCode"] == 204
    deadline = time.monotonic() + 20
    while service.log("sleepy").count("REPORT RequestId") < before + 6:
        assert time.monotonic() < deadline, "queued events were not all run"
        time.sleep(0.1)
    assert time.monotonic() - started >= 0.9  # 6 events x 0.3 s on 2 environments


def test_failed_events_are_retried_then_sent_to_the_on_failure_destination(
    service: Service,
) -> None:
    client = service.client()
    client.invoke(FunctionName="fail", InvocationType="Event", Payload=b'{"order_id": "Z-9"}')
    destination = service.state_dir.parent / "failures.jsonl"
    deadline = time.monotonic() + 20
    while not destination.exists() or "Z-9" not in destination.read_text():
        assert time.monotonic() < deadline, "no on-failure record"
        time.sleep(0.1)
    record = json.loads(destination.read_text().strip().splitlines()[-1])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"] == {"order_id": "Z-9"}
    assert record["responsePayload"]["errorMessage"] == "cannot deliver Z-9"
    assert service.log("fail").count("cannot deliver Z-9") >= 3


def test_an_event_that_succeeds_on_retry_reaches_no_destination(service: Service) -> None:
    response = service.client().invoke(FunctionName="flaky", InvocationType="Event", Payload=b"{}")
    rid = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    flaky = service.state_dir.parent / "flaky.txt"
    deadline = time.monotonic() + 20
    while not flaky.exists() or flaky.read_text().count(rid) < 3:
        assert time.monotonic() < deadline, "the event was not retried twice"
        time.sleep(0.1)
    time.sleep(0.3)
    assert not (service.state_dir.parent / "flaky-failures.jsonl").exists()
    assert flaky.read_text().count(rid) == 3  # same request id on every attempt, as on AWS


@pytest.mark.parametrize(
    ("name", "error_type", "message"),
    [
        ("exits", "Runtime.ExitError", "exit status 4"),
        ("dies", "Runtime.ExitError", "Runtime exited without providing a reason"),
        ("broken", "Runtime.ImportModuleError", "configuration missing at import"),
        ("missing", "Runtime.HandlerNotFound", "no_such_handler"),
    ],
)
def test_crashes_and_import_errors_are_lambda_errors_and_the_service_goes_on(
    service: Service, name: str, error_type: str, message: str
) -> None:
    client = service.client()
    response, body = invoke(client, name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == error_type
    assert message in body["errorMessage"]
    assert invoke(client, "echo")[0]["StatusCode"] == 200


def test_megabytes_of_output_do_not_break_the_invocation(service: Service) -> None:
    response, body = invoke(service.client(), "chatty", LogType="Tail")
    assert body == "done"
    assert len(base64.b64decode(response["LogResult"])) <= 4096
    assert "more bytes of output not kept" in service.log("chatty")


def test_request_errors_raise_the_matching_boto3_exceptions(service: Service) -> None:
    client = service.client()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="nope", Payload=b"{}")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="echo", Payload=b"{not json")
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName="echo", Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"')
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(
            FunctionName="echo", InvocationType="Event", Payload=b'"' + b"x" * 1024 * 1024 + b'"'
        )


def test_a_plain_lab_handler_runs_unmodified(service: Service) -> None:
    response, body = invoke(service.client(), "lambda_delivery", {"order_id": "ORD-1"})
    assert "FunctionError" not in response
    assert body["order_id"] == "ORD-1" and 2 <= body["delay"] <= 10
    assert f"Order ORD-1 delivered in {body['delay']} seconds" in service.log("lambda_delivery")


def test_a_module_level_pika_connection_is_opened_by_each_environment(
    tmp_path: Path, amqp_url: str
) -> None:
    """Lab code opens its BlockingConnection at import. Forked from one import, every
    environment would write to one shared socket; each must get its own, as on AWS."""
    queue = f"pika-at-import-{os.getpid()}"
    env_sets = [f"pika.env.AMQP_URL={amqp_url}", f"pika.env.QUEUE={queue}"]
    svc = start_service(
        tmp_path,
        "--function", "pika=pika_at_import:lambda_handler",
        *[a for s in [*env_sets, "pika.concurrency=3"] for a in ("--set", s)],
    )  # fmt: skip
    try:
        client = svc.client()
        with ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda n: invoke(client, "pika", {"order_id": f"P-{n}"}), range(6))
            )
    finally:
        svc.process.stop()
    assert all("FunctionError" not in response for response, _ in answers), answers
    ports = [tuple(body["broker_ports"]) for _, body in answers]
    assert all(len(p) == 1 for p in ports), ports  # one connection per environment
    assert len(set(ports)) >= 2, ports  # concurrent environments, separate connections
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        got: list[str] = []
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            _, _, body = channel.basic_get(queue, auto_ack=True)
            if body is None:
                time.sleep(0.05)
            else:
                got.append(json.loads(body)["order_id"])
        channel.queue_delete(queue)
    finally:
        connection.close()
    assert sorted(got) == [f"P-{n}" for n in range(6)]
    runtime_log = (tmp_path / "state" / "logs" / "pika.runtime.log").read_text()
    assert "opened network connections at import" in runtime_log


def test_get_and_list_functions(service: Service) -> None:
    client = service.client()
    config = client.get_function(FunctionName="echo")["Configuration"]
    assert config["Handler"] == "samples:echo" and config["MemorySize"] == 256
    names = {f["FunctionName"] for f in client.list_functions()["Functions"]}
    assert {"echo", "lambda_delivery", "sleepy"} <= names


def _aws(service: Service, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The AWS CLI from the venv (v1 from PyPI: --payload is raw JSON text there)."""
    aws = Path(sys.executable).parent / "aws"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return subprocess.run(
        [str(aws), "--endpoint-url", service.url, "lambda", *args],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip


def test_the_aws_cli_invokes_and_lists(service: Service, tmp_path: Path) -> None:
    payload = '{"order_id": "CLI-1"}'
    sync = _aws(
        service, tmp_path, "invoke", "--function-name", "lambda_delivery",
        "--payload", payload, "out.json",
    )  # fmt: skip
    assert sync.returncode == 0, sync.stderr
    assert json.loads(sync.stdout)["StatusCode"] == 200
    assert json.loads((tmp_path / "out.json").read_text())["order_id"] == "CLI-1"
    event = _aws(
        service, tmp_path, "invoke", "--function-name", "lambda_delivery",
        "--invocation-type", "Event", "--payload", payload, "event.json",
    )  # fmt: skip
    assert event.returncode == 0, event.stderr
    assert json.loads(event.stdout)["StatusCode"] == 202
    listed = _aws(service, tmp_path, "list-functions")
    assert listed.returncode == 0, listed.stderr
    assert "lambda_delivery" in {f["FunctionName"] for f in json.loads(listed.stdout)["Functions"]}


def test_courierflow_lambda_logs_prints_the_functions_log(service: Service) -> None:
    invoke(service.client(), "echo", {"marker": "logs-test"})
    result = subprocess.run(
        [sys.executable, "-m", "courierflow.cli", "lambda", "logs", "echo",
         "--state-dir", str(service.state_dir)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"marker": "logs-test"' in result.stdout
    assert "REPORT RequestId:" in result.stdout


def start_polling_service(tmp: Path, moto_server: str, *args: str) -> Service:
    """The service, its SQS event sources polling moto's server (the endpoint variable
    set for it alone)."""
    env_backup = os.environ.get("AWS_ENDPOINT_URL_SQS")
    os.environ["AWS_ENDPOINT_URL_SQS"] = moto_server
    try:
        return start_service(tmp, *args)
    finally:
        if env_backup is None:
            del os.environ["AWS_ENDPOINT_URL_SQS"]
        else:
            os.environ["AWS_ENDPOINT_URL_SQS"] = env_backup


@pytest.mark.timeout(90)
def test_sqs_event_source_mapping_deletes_successes_and_keeps_reported_failures(
    tmp_path: Path, moto_server: str
) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.create_queue(QueueName="esm-test", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": i, "bad": i == 3}))
    svc = start_polling_service(
        tmp_path, moto_server, "--function", "batch=samples:sqs_batch",
        "--event-source-sqs", f"batch={url}", "--set", "batch.sqs_batch_size=10",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        while svc.log("batch").count("'bad': True") < 2:  # the failure came back once more
            assert time.monotonic() < deadline, "the reported failure was not redelivered"
            time.sleep(0.2)
        log = svc.log("batch")
        for i in (0, 1, 2, 4):
            assert log.count(f"'n': {i}, 'bad': False") == 1, f"message {i} not deleted once"
    finally:
        svc.process.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cap", [2, 0])
def test_sqs_event_source_runs_at_most_its_maximum_concurrency(
    tmp_path: Path, moto_server: str, cap: int
) -> None:
    """ScalingConfig.MaximumConcurrency: with it, never more batches at once than it
    says; without it, as many as the function's concurrency (8 here)."""
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"esm-cap-{cap}")["QueueUrl"]
    for i in range(12):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": i}))
    overlap = tmp_path / "overlap.txt"
    limit = ["--set", f"capped.sqs_max_concurrency={cap}"] if cap else []
    svc = start_polling_service(
        tmp_path, moto_server, "--function", "capped=samples:sqs_overlap",
        "--event-source-sqs", f"capped={url}", "--set", "capped.sqs_batch_size=1",
        "--set", "capped.concurrency=8", "--set", f"capped.env.OVERLAP_FILE={overlap}",
        *limit,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not overlap.exists() or overlap.read_text().count("end") < 12:
            assert time.monotonic() < deadline, "the 12 messages were not all handled"
            time.sleep(0.2)
    finally:
        svc.process.stop()
    events = sorted(
        (float(at), 1 if kind == "start" else -1)
        for kind, at in (line.split() for line in overlap.read_text().splitlines())
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak <= 2 if cap else peak > 2


def test_the_managers_invoker_is_accepted_and_converts_errors(tmp_path: Path) -> None:
    """EventInvoker (the manager's lean Invoke client) against the real service: 202 with
    a request id, many calls at once on few connections; an unknown function and an
    unreachable service as InvokeError; and keep-alive connections the service dropped
    are replaced without an error."""
    import asyncio

    from courierflow.errors import InvokeError
    from courierflow.manager.event_invoker import EventInvoker

    svc = start_service(tmp_path, "--function", "echo=samples:echo")
    invoker = EventInvoker(svc.client(), max_connections=8)

    async def burst(n: int) -> list[str]:
        calls = [invoker.invoke_event("echo", b'{"order_id": "I-%d"}' % i) for i in range(n)]
        return await asyncio.gather(*calls)

    async def scenario() -> None:
        ids = await burst(50)
        assert len(set(ids)) == 50 and all(len(i) == 36 for i in ids)
        assert 1 <= len(invoker._idle) <= 8
        with pytest.raises(InvokeError, match="ResourceNotFoundException"):
            await invoker.invoke_event("no_such_function", b"{}")
        port = int(svc.url.rsplit(":", 1)[1])
        await asyncio.to_thread(svc.process.stop)
        with pytest.raises(InvokeError, match="cannot reach Lambda"):
            await burst(3)
        again = await asyncio.to_thread(
            start_service, tmp_path / "again", "--function", "echo=samples:echo", port=port
        )
        try:
            assert len(await burst(10)) == 10
        finally:
            await asyncio.to_thread(again.process.stop)
            await invoker.close()

    try:
        asyncio.run(scenario())
    finally:
        svc.process.stop()


def test_the_managers_invoker_goes_through_boto3_when_a_proxy_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTP(S)_PROXY set for the endpoint, calls go through boto3, which speaks to
    proxies: here a proxy that is down, so the call fails as unreachable; NO_PROXY for
    the service's host sends it straight to the service again."""
    import asyncio

    from courierflow.errors import InvokeError
    from courierflow.manager.event_invoker import EventInvoker

    svc = start_service(tmp_path, "--function", "echo=samples:echo")
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        proxied = EventInvoker(svc.client())
        with pytest.raises(InvokeError, match="cannot reach Lambda"):
            asyncio.run(proxied.invoke_event("echo", b"{}"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = EventInvoker(svc.client())
        assert len(asyncio.run(direct.invoke_event("echo", b'{"order_id": "P-1"}'))) == 36
    finally:
        svc.process.stop()
