"""The stand-ins a lab's code runs against, and the student's manager, as child processes.

RabbitMQ is a private node (with its management console) that takes ``guest``/``guest``
from loopback as a stock install does and declares no queue: the student's code does.
It listens on 5672 when that port is free, so code that connects to ``localhost``
unchanged works. moto's server holds the upload bucket, whose notifications go to an SQS
queue that the relay (``relay.py``) turns into the publisher's S3 events. The local
Lambda service serves the student's two functions from their folder. Every process is
started in its own process group and stopped by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from courierflow.config import DEFAULT_DELIVERY_FUNCTION, DEFAULT_PUBLISHER_FUNCTION, DEFAULT_REGION
from courierflow.errors import ConfigError
from courierflow.local.processes import (
    ManagedProcess,
    RabbitNode,
    free_port,
    port_open,
    spawn,
    start_moto_server,
    start_rabbitmq,
)

#: the port a stock RabbitMQ listens on, which lab code assumes
AMQP_PORT = 5672
#: the upload bucket and the queue its notifications go to
BUCKET = "lab-orders"
NOTIFICATION_QUEUE = "lab-orders-uploaded"
#: the lab's region and the stand-ins' dummy credentials
REGION = DEFAULT_REGION
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: the broker's login, as a stock install has it
BROKER_USER = "guest"
BROKER_PASSWORD = "guest"
#: the functions' timeouts (seconds) and the delivery's concurrency, as in the lab
PUBLISHER_TIMEOUT_S = 30
DELIVERY_TIMEOUT_S = 15
DELIVERY_CONCURRENCY = 100
#: async retries: Lambda's two, but seconds apart rather than one and two minutes
MAX_RETRIES = 2
RETRY_DELAYS_S = (1.0, 2.0)
#: seconds the management API refreshes its queue figures (RabbitMQ's default: 5)
STATS_INTERVAL_MS = 500


@dataclass
class LabOptions:
    """What `courierflow lab` was asked for."""

    directory: Path
    work: Path
    publisher: str = DEFAULT_PUBLISHER_FUNCTION
    delivery: str = DEFAULT_DELIVERY_FUNCTION
    manager: str = "manager.py"


@dataclass
class Lab:
    """The running stand-ins and processes of one lab, stopped by ``close``."""

    options: LabOptions
    say: Callable[[str], None]
    moto_url: str = ""
    lambda_url: str = ""
    amqp_port: int = 0
    broker: RabbitNode | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    # --- where things are -------------------------------------------------------------

    @property
    def console_url(self) -> str:
        return self.broker.console_url if self.broker else ""

    @property
    def lambda_state(self) -> Path:
        return self.options.work / "lambda"

    def function_log(self, name: str) -> Path:
        return self.lambda_state / "logs" / f"{name}.log"

    @property
    def manager_log(self) -> Path:
        return self.options.work / "logs" / "manager.log"

    def code_env(self) -> dict[str, str]:
        """What the student's code gets (manager and functions): the stand-ins'
        endpoints, dummy credentials, the region and the broker under common names."""
        amqp = f"amqp://{BROKER_USER}:{BROKER_PASSWORD}@127.0.0.1:{self.amqp_port}/%2F"
        return {
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ENDPOINT_URL_S3": self.moto_url,
            "AWS_ENDPOINT_URL_SQS": self.moto_url,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
            "RABBITMQ_HOST": "127.0.0.1",
            "RABBITMQ_PORT": str(self.amqp_port),
            "RABBITMQ_USER": BROKER_USER,
            "RABBITMQ_PASSWORD": BROKER_PASSWORD,
            "AMQP_URL": amqp,
            "PYTHONUNBUFFERED": "1",  # the manager's prints reach its log as they happen
        }

    def _child_env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without its AWS and courierflow settings, plus the
        student code's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COURIERFLOW_"))}
        return {**env, **self.code_env(), **extra}

    def client(self, service: str) -> Any:
        make: Any = boto3.client
        url = self.lambda_url if service == "lambda" else self.moto_url
        return make(
            service,
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    # --- starting -----------------------------------------------------------------------

    def start(self) -> None:
        """Start everything: the broker (in a thread, it is the slowest), moto with the
        bucket and its notification queue, the functions, the relay, then the manager."""
        check_directory(self.options)
        work = self.options.work
        shutil.rmtree(work, ignore_errors=True)
        (work / "logs").mkdir(parents=True)
        self.amqp_port = AMQP_PORT if not port_open(AMQP_PORT) else free_port()
        if self.amqp_port != AMQP_PORT:
            self.say(
                f"port {AMQP_PORT} is taken: RabbitMQ listens on {self.amqp_port} "
                "(read RABBITMQ_PORT or AMQP_URL in your code)"
            )
        failure: list[BaseException] = []
        broker = threading.Thread(target=self._start_broker, args=(failure,), daemon=True)
        broker.start()
        moto = start_moto_server(work)
        self.processes["moto"] = moto
        self.moto_url = f"http://127.0.0.1:{moto.port}"
        self.lambda_url = f"http://127.0.0.1:{free_port()}"
        queue_url = self._make_bucket()
        layer = self._install_requirements()
        self._serve_functions(layer)
        self._start_relay(queue_url)
        broker.join()
        if failure:
            raise failure[0]
        assert self.broker is not None
        self.say(
            f"RabbitMQ on 127.0.0.1:{self.amqp_port} (user {BROKER_USER}, password "
            f"{BROKER_PASSWORD}), console {self.console_url}"
        )
        self._start_manager(layer)

    def _start_broker(self, failure: list[BaseException]) -> None:
        try:
            data = self.options.work / "rabbitmq"
            data.mkdir(parents=True)
            console = free_port()
            # a stock install's login rule, the console on loopback, fresher queue figures
            (data / "rabbitmq.conf").write_text(
                "loopback_users.guest = true\n"
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {console}\n"
                f"collect_statistics_interval = {STATS_INTERVAL_MS}\n"
            )
            (data / "enabled_plugins").write_text("[rabbitmq_management].\n")
            self.broker = start_rabbitmq(data, port=self.amqp_port)
            self.broker.console_port = console
        except BaseException as exc:  # handed to the main thread, raised there
            failure.append(exc)

    def _make_bucket(self) -> str:
        """The upload bucket, notifying an SQS queue of every object created."""
        s3, sqs = self.client("s3"), self.client("sqs")
        s3.create_bucket(Bucket=BUCKET)
        queue_url = str(sqs.create_queue(QueueName=NOTIFICATION_QUEUE)["QueueUrl"])
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        s3.put_bucket_notification_configuration(
            Bucket=BUCKET,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": arn["Attributes"]["QueueArn"],
                        "Events": ["s3:ObjectCreated:*"],
                    }
                ]
            },
        )
        self.say(f"S3 (moto) at {self.moto_url}, bucket {BUCKET}")
        return queue_url

    def _install_requirements(self) -> Path | None:
        """The folder's requirements.txt installed into a layer (``python/`` inside it),
        reused while the file is unchanged; None without the file."""
        requirements = self.options.directory / "requirements.txt"
        if not requirements.exists():
            return None
        digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
        layer = self.options.work.parent / "lab-layers" / digest
        if not (layer / ".ready").exists():
            self.say(f"installing {requirements} into a layer ...")
            shutil.rmtree(layer, ignore_errors=True)
            result = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--target",
                 str(layer / "python"), "-r", str(requirements)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if result.returncode != 0:
                raise ConfigError(f"pip could not install {requirements}:\n{result.stderr[-2000:]}")
            (layer / ".ready").touch()
        return layer

    def function_config(self, layer: Path | None) -> str:
        """The local Lambda service's TOML for the student's two functions."""
        options = self.options
        functions: dict[str, dict[str, Any]] = {
            options.publisher: {"timeout": PUBLISHER_TIMEOUT_S, "concurrency": 10},
            options.delivery: {"timeout": DELIVERY_TIMEOUT_S, "concurrency": DELIVERY_CONCURRENCY},
        }
        lines: list[str] = []
        for name, limits in functions.items():
            settings = {
                "handler": f"{name}.lambda_handler",
                **limits,
                "code_dir": str(options.directory),
                "layers": [str(layer)] if layer else [],
                "max_retries": MAX_RETRIES,
                "retry_delays": list(RETRY_DELAYS_S),
            }
            lines.append(f"[functions.{json.dumps(name)}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
            lines.append("")
        return "\n".join(lines)

    def _serve_functions(self, layer: Path | None) -> None:
        config = self.options.work / "functions.toml"
        config.write_text(self.function_config(layer))
        port = int(self.lambda_url.rsplit(":", 1)[1])
        argv = [*courierflow_command(), "lambda", "serve", "--port", str(port),
                "--state-dir", str(self.lambda_state), "--config", str(config)]  # fmt: skip
        proc = spawn("lambda", argv, self.options.work / "logs" / "lambda-service.log",
                     self._child_env(), port=port, cwd=self.options.directory)  # fmt: skip
        self.processes["lambda"] = proc
        proc.wait_for_port(60)
        self.say(
            f"Lambda API at {self.lambda_url}: {self.options.publisher}, {self.options.delivery}"
        )

    def _start_relay(self, queue_url: str) -> None:
        argv = [sys.executable, "-m", "courierflow.local.lab.relay",
                "--queue-url", queue_url, "--function", self.options.publisher]  # fmt: skip
        self.processes["relay"] = spawn(
            "relay", argv, self.options.work / "logs" / "relay.log", self._child_env()
        )

    def _start_manager(self, layer: Path | None) -> None:
        extra = {"PYTHONPATH": str(layer / "python")} if layer else {}
        argv = [sys.executable, "-u", self.options.manager]
        self.processes["manager"] = spawn(
            "manager", argv, self.manager_log, self._child_env(**extra), cwd=self.options.directory
        )
        self.say(f"manager: python {self.options.manager} (output in {self.manager_log})")

    # --- using and stopping -------------------------------------------------------------

    def upload(self, file: Path) -> str:
        """Put ``file`` into the bucket, as the lab's upload does; returns its key."""
        self.client("s3").upload_file(str(file), BUCKET, file.name)
        return file.name

    def pids(self) -> dict[str, int]:
        found = {name: proc.pid for name, proc in self.processes.items()}
        if self.broker is not None:
            found.update(rabbitmq=self.broker.broker.pid, epmd=self.broker.epmd.pid)
        return found

    def close(self) -> None:
        """Stop every process by its PID: the code first, then the stand-ins."""
        for name in ("manager", "relay", "lambda", "moto"):
            if name in self.processes:
                self.processes.pop(name).stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


def check_directory(options: LabOptions) -> None:
    """The folder holds the three programs; otherwise a usage error naming what is missing."""
    if not options.directory.is_dir():
        raise ConfigError(f"{options.directory} is not a folder (try `courierflow lab --init DIR`)")
    wanted = [f"{options.publisher}.py", f"{options.delivery}.py", options.manager]
    missing = [name for name in wanted if not (options.directory / name).is_file()]
    if missing:
        raise ConfigError(
            f"{options.directory} has no {', '.join(missing)} "
            "(`courierflow lab --init DIR` writes a starter trio)"
        )


def courierflow_command() -> list[str]:
    exe = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "courierflow.cli"]
