"""The whole system on one machine: `courierflow up` / `down`.

Real parts, each a child process on 127.0.0.1: RabbitMQ (one already answering at
COURIERFLOW_AMQP_URL, or a private node), moto's server for S3 and SQS, the local Lambda
service with both functions, the manager and the reconciler loop. The bucket notifies an
SQS queue, whose event source mapping invokes `lambda_order_publisher`, as on AWS.

The code under test reaches all of them only through boto3's standard endpoint variables
and the AMQP URL, which ``StackInfo.client_env()`` provides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pika
import pika.exceptions

from courierflow.config import DEFAULT_REGION, LOCAL_CREDENTIALS, Settings
from courierflow.errors import StackError
from courierflow.local.processes import (
    ManagedProcess,
    free_port,
    pid_alive,
    port_open,
    spawn,
    start_moto_server,
    start_rabbitmq,
    stop_pid,
)
from courierflow.local.stack_parts import DELIVERY as DELIVERY  # the names, for callers
from courierflow.local.stack_parts import PUBLISHER as PUBLISHER
from courierflow.local.stack_parts import (
    courierflow_argv,
    function_env,
    lambda_service_argv,
    reconciler_argv,
)

log = logging.getLogger(__name__)

#: RabbitMQ's default management console port (a broker of the machine's own)
MANAGEMENT_PORT = 15672
#: the upload bucket and the queue its notifications go to
BUCKET = "courierflow-orders"
UPLOAD_QUEUE = "courierflow-uploads"
#: the order queue when the transport is SQS
ORDERS_QUEUE = "courierflow-orders-queue"
#: where deliveries that failed after Lambda's retries are sent (on-failure destination)
FAILURE_QUEUE = "courierflow-delivery-failures"
#: the stack's description, under the state folder
STACK_FILE = "stack.json"


@dataclass
class StackOptions:
    """What `courierflow up` can be asked for."""

    #: concurrent delivery environments (the courier fleet; Lambda's reserved concurrency)
    fleet: int = 128
    #: delivery environments started with the stack (Lambda's provisioned concurrency;
    #: `--warm` provisions the whole fleet). Off by default, so that a small file does not
    #: cost a fleet of processes; a warm fleet saves the ramp-up (docs/performance.md)
    provisioned: int = 0
    #: multiplies the delivery delays (1.0 = the lab's 2-10 s)
    time_scale: float = 1.0
    delay_min: int = 2
    delay_max: int = 10
    fail_rate: float = 0.0
    #: fraction of orders the manager invokes twice (fault injection)
    duplicate_rate: float = 0.0
    #: Lambda's async retry delays, in seconds (AWS: about 1 and 2 minutes)
    retry_delays: str = "1,2"
    #: seconds between reconciler passes, and how old a stuck order must be
    reconcile_every_s: float = 5.0
    stuck_after_s: float = 60.0
    managers: int = 1
    keep_ledger: bool = False
    #: "rabbitmq" or "sqs" (moto's SQS locally)
    transport: str = "rabbitmq"
    #: "manager" (the EC2 consumer) or "serverless" (SQS invokes the delivery directly)
    mode: str = "manager"
    #: serve the live dashboard on this port (0: no dashboard; taken: another free port)
    dashboard_port: int = 0


@dataclass
class StackInfo:
    """A running stack, as written to ``stack.json``."""

    home: str
    amqp_url: str
    moto_url: str
    lambda_url: str
    bucket: str = BUCKET
    upload_queue_url: str = ""
    failure_queue_url: str = ""
    ledger_url: str = ""
    options: dict[str, object] = field(default_factory=dict)
    #: name -> pid of every process this stack started, in start order
    pids: dict[str, int] = field(default_factory=dict)
    #: name -> command line, for the processes `restart` can start again
    commands: dict[str, list[str]] = field(default_factory=dict)
    queue: str = "orders"
    #: where orders are queued: the AMQP URL, or the SQS queue URL
    queue_url: str = ""
    #: the live dashboard's address, when the stack serves one
    dashboard_url: str = ""
    #: RabbitMQ's management console (user guest, password guest, from this machine only)
    console_url: str = ""

    def client_env(self) -> dict[str, str]:
        """Environment that points boto3 and courierflow at this stack."""
        return {
            "AWS_ENDPOINT_URL_S3": self.moto_url,
            "AWS_ENDPOINT_URL_SQS": self.moto_url,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url,
            # Local servers get dummy credentials, never the user's real ones.
            "AWS_ACCESS_KEY_ID": LOCAL_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_REGION": DEFAULT_REGION,
            "COURIERFLOW_AMQP_URL": self.amqp_url,
            "COURIERFLOW_QUEUE_URL": self.queue_url or self.amqp_url,
            "COURIERFLOW_LEDGER_URL": self.ledger_url,
            "COURIERFLOW_HOME": self.home,
            "COURIERFLOW_QUEUE": self.queue,
        }

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this stack, as :meth:`client_env` points a child process."""
        return replace(
            base,
            amqp_url=self.amqp_url,
            queue_url=self.queue_url or self.amqp_url,
            queue=self.queue,
            ledger_url=self.ledger_url,
            home=Path(self.home),
            region=DEFAULT_REGION,
            local_aws_url=self.moto_url,
        )

    def alive(self) -> bool:
        return bool(self.pids) and all(pid_alive(pid) for pid in self.pids.values())


def load(home: Path) -> StackInfo | None:
    """The stack described under ``home``, if its file exists."""
    try:
        return StackInfo(**json.loads((home / STACK_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise StackError(
            f"{home / STACK_FILE} is damaged ({exc}); run `courierflow down`"
        ) from None


def running(home: Path) -> StackInfo:
    """The stack running from ``home``.

    Raises:
        StackError: none is (never started, stopped, or one of its processes died).
    """
    info = load(home)
    if info is None or not info.alive():
        raise StackError(f"no local stack is running from {home}: start one with `courierflow up`")
    return info


def settings_for(home: Path, base: Settings | None = None) -> Settings:
    """The settings that point courierflow at the stack described under ``home`` (its
    queue, ledger, region, and moto's S3 and SQS), over ``base`` (default: the
    environment's); ``base`` itself when no stack is described there."""
    base = base or Settings.from_env()
    info = load(home)
    return base if info is None else info.settings(base)


def readable_ledger_url(settings: Settings) -> str:
    """The ledger a reader such as `courierflow status` opens: the stack's described
    under ``settings.home``, else ``settings.ledger_url``.

    Raises:
        StackError: no stack and no ledger file where the settings point (a fresh home).
    """
    info = load(settings.home)
    if info is not None:
        return info.ledger_url
    path = settings.ledger_url.removeprefix("sqlite:///")
    if path != settings.ledger_url and not Path(path).exists():
        raise StackError(
            f"no local stack is running from {settings.home} and no ledger is there yet: "
            "start one with `courierflow up` (or run a file with `courierflow run FILE`), "
            "or point COURIERFLOW_LEDGER_URL at a ledger"
        )
    return settings.ledger_url


def broker_answers(url: str) -> bool:
    """True when a broker accepts a connection at ``url`` (pika's own error logs muted)."""
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 2
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError:
        return False
    return True


def up(settings: Settings, options: StackOptions | None = None) -> StackInfo:
    """Start every part; on any failure stop what was started and raise StackError."""
    options = options or StackOptions()
    home = settings.home
    existing = load(home)
    if existing is not None and existing.alive():
        raise StackError(f"a stack is already running from {home}; `courierflow down` first")
    if existing is not None:
        down(home)
    home.mkdir(parents=True, exist_ok=True)
    ledger_path = home / "ledger.db"
    if not options.keep_ledger:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
    started: list[tuple[str, int]] = []
    try:
        info = _start(settings, options, home, ledger_path, started)
    except BaseException:
        for _name, pid in reversed(started):
            stop_pid(pid)
        raise
    (home / STACK_FILE).write_text(json.dumps(asdict(info), indent=2))
    if options.dashboard_port:
        _start_dashboard(info, options.dashboard_port)
    return info


def _start_dashboard(info: StackInfo, port: int) -> None:
    """Serve the dashboard for this stack (it reads stack.json for its probes); a
    dashboard that cannot start is reported, never a reason to stop the stack."""
    port = port if not port_open(port) else free_port()
    info.commands["dashboard"] = [*courierflow_argv(), "dashboard", "--port", str(port)]
    proc = _spawn_part(info, "dashboard", port)
    try:
        proc.wait_for_port(30)
    except StackError as exc:
        stop_pid(proc.pid)
        del info.commands["dashboard"]
        log.warning("the dashboard did not start: %s", exc)
        return
    info.pids["dashboard"] = proc.pid
    info.dashboard_url = f"http://127.0.0.1:{port}/"
    (Path(info.home) / STACK_FILE).write_text(json.dumps(asdict(info), indent=2))


def _start(
    settings: Settings,
    options: StackOptions,
    home: Path,
    ledger_path: Path,
    started: list[tuple[str, int]],
) -> StackInfo:
    if options.mode == "serverless" and options.transport != "sqs":
        raise StackError("--mode serverless needs --transport sqs (SQS invokes the function)")
    if options.transport not in ("rabbitmq", "sqs"):
        raise StackError(f"unknown transport {options.transport!r}: use rabbitmq or sqs")
    console_url = ""
    if options.transport == "sqs":
        amqp_url = ""  # no broker to run
    elif broker_answers(settings.amqp_url):
        amqp_url = settings.amqp_url
        log.info("using the RabbitMQ answering at %s", settings.amqp_url.split("@")[-1])
        if port_open(MANAGEMENT_PORT):  # its console, if its management plugin is on
            console_url = f"http://127.0.0.1:{MANAGEMENT_PORT}/"
    else:
        node = start_rabbitmq(home / "rabbitmq", console=True)
        started += [("epmd", node.epmd.pid), ("rabbitmq", node.broker.pid)]
        amqp_url = node.amqp_url
        console_url = node.console_url
    moto = start_moto_server(home)
    started.append(("moto", moto.pid))
    moto_url = f"http://127.0.0.1:{moto.port}"
    upload_q, failure_q = _create_aws_resources(moto_url)
    queue_url = ""
    if options.transport == "sqs":
        from courierflow.transports.sqs import SQSTransport

        queue_url, _ = SQSTransport(
            f"sqs://{ORDERS_QUEUE}", client=local_client("sqs", moto_url)
        ).ensure_queues()
    info = StackInfo(
        home=str(home),
        amqp_url=amqp_url,
        moto_url=moto_url,
        lambda_url="",
        upload_queue_url=upload_q,
        failure_queue_url=failure_q,
        ledger_url=f"sqlite:///{ledger_path}",
        options=asdict(options),
        queue=settings.queue,
        queue_url=queue_url,
        console_url=console_url,
    )
    lambda_port = free_port()
    info.lambda_url = f"http://127.0.0.1:{lambda_port}"
    info.commands["lambda"] = lambda_service_argv(
        home, lambda_port, options, upload_q, failure_q, queue_url
    )
    managers = options.managers if options.mode == "manager" else 0
    for i in range(managers):
        info.commands[f"manager-{i}"] = [*courierflow_argv(), "manager"]
    info.commands["reconciler"] = reconciler_argv(options, failure_q)
    for name in info.commands:
        proc = _spawn_part(info, name)
        started.append((name, proc.pid))
        if name == "lambda":
            proc.wait_for_port(60)
    info.pids = dict(started)
    return info


def _spawn_part(info: StackInfo, name: str, port: int = 0) -> ManagedProcess:
    """Start one of the stack's own processes (lambda, manager-N, reconciler, dashboard)."""
    options = StackOptions(**info.options)  # type: ignore[arg-type]
    env = {**os.environ, **info.client_env(), **function_env(options)}
    if name == "lambda":
        port = int(info.lambda_url.rsplit(":", 1)[-1])
    log_name = "lambda-service" if name == "lambda" else name
    return spawn(name, info.commands[name], Path(info.home) / "logs" / f"{log_name}.log", env, port)


def restart(home: Path, name: str) -> int:
    """Start a stopped or killed part of the running stack again; returns its new pid."""
    info = load(home)
    if info is None or name not in info.commands:
        raise StackError(f"no part {name!r} in the stack at {home}")
    if pid_alive(info.pids.get(name, 0)):
        stop_pid(info.pids[name])
    proc = _spawn_part(info, name)
    if name == "lambda":
        proc.wait_for_port(60)
    info.pids[name] = proc.pid
    (home / STACK_FILE).write_text(json.dumps(asdict(info), indent=2))
    return proc.pid


def local_client(service: Literal["s3", "sqs"], endpoint: str) -> Any:
    """A boto3 client for one of the local stand-ins (see ``Settings.aws_client``)."""
    return Settings(local_aws_url=endpoint).aws_client(service)


def _create_aws_resources(moto_url: str) -> tuple[str, str]:
    """The bucket, its notification to the upload queue, and the failure queue."""
    s3 = local_client("s3", moto_url)
    sqs = local_client("sqs", moto_url)
    s3.create_bucket(Bucket=BUCKET)
    upload_q = sqs.create_queue(QueueName=UPLOAD_QUEUE, Attributes={"VisibilityTimeout": "900"})[
        "QueueUrl"
    ]
    failure_q = sqs.create_queue(QueueName=FAILURE_QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=upload_q, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    return upload_q, failure_q


def down(home: Path) -> list[str]:
    """Stop what `up` started (by PID, newest first) and nothing else."""
    info = load(home)
    if info is None:
        return []
    stopped = []
    for name, pid in reversed(list(info.pids.items())):
        if pid_alive(pid):
            stop_pid(pid)
            stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        (home / STACK_FILE).unlink()
    return stopped
