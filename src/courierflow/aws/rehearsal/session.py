"""One rehearsal's stand-ins and processes (moto as the account, the metadata service,
a broker standing in for the instance's, the local Lambda service, the manager), each
step as a method, all stopped by ``close``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from courierflow.aws.imds import MetadataService
from courierflow.aws.network import resolve
from courierflow.aws.rehearsal.account import (
    AMI_PARAMETER,
    CREDENTIALS,
    REGION,
    STACK,
    STAND_IN_AMI,
    RehearsalError,
)
from courierflow.aws.rehearsal.functions import StackView, function_config
from courierflow.aws.rehearsal.instance import UNIT_FILE, shell_part, unit_environment
from courierflow.local.processes import (
    RABBITMQ_SERVER,
    ManagedProcess,
    RabbitNode,
    free_port,
    rabbitmq_env,
    spawn,
    start_moto_server,
    start_rabbitmq,
    stop_pid,
)

#: seconds to wait for the orders of one upload
FOLLOW_TIMEOUT_S = 180


@dataclass
class RehearsalOptions:
    """What `courierflow rehearse` was asked for."""

    transport: str = "rabbitmq"
    mode: str = "manager"
    orders: Path = Path("examples/orders.csv")
    #: the state folder; the rehearsal works under HOME/rehearsal
    home: Path = Path(".courierflow")
    #: deploy a second time with a changed delivery handler and check it runs
    redeploy: bool = True
    #: the stack's DeliveryTimeScale: the lab's 2-10 s trips take a tenth of that here
    time_scale: float = 0.1


@dataclass
class Rehearsal:
    """The stand-ins and processes of one rehearsal, stopped by ``close``."""

    options: RehearsalOptions
    say: Callable[[str], None]
    work: Path = Path()
    moto_url: str = ""
    lambda_url: str = ""
    broker: RabbitNode | None = None
    imds: MetadataService | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    # --- environments ---------------------------------------------------------------------

    def aws_env(self) -> dict[str, str]:
        """What points a boto3 client in a child process at the stand-in account."""
        return {
            "AWS_ENDPOINT_URL": self.moto_url,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url or self.moto_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
        }

    def instance_env(self) -> dict[str, str]:
        """What the instance's processes get from EC2 besides their own environment: the
        stand-in endpoints and, through the metadata service, the role's credentials
        (no credentials or region in the environment)."""
        assert self.imds is not None
        endpoints = {k: v for k, v in self.aws_env().items() if k.startswith("AWS_ENDPOINT_URL")}
        return {**endpoints, "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.imds.url}

    def client(self, service: str) -> Any:
        make: Any = boto3.client
        return make(
            service,
            endpoint_url=self.moto_url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def _command_env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without its AWS settings, plus the stand-ins'."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COURIERFLOW_"))}
        return {**env, **self.aws_env(), **extra}

    def run(self, argv: list[str], what: str, cwd: Path | None = None, **extra: str) -> str:
        result = subprocess.run(
            argv,
            env=self._command_env(**extra),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            raise RehearsalError(
                f"{what} failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result.stdout

    # --- the steps ------------------------------------------------------------------------

    def start(self) -> None:
        self.work = self.options.home.absolute() / "rehearsal"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        moto = start_moto_server(self.work)
        self.processes["moto"] = moto
        self.moto_url = f"http://127.0.0.1:{moto.port}"
        self.lambda_url = f"http://127.0.0.1:{free_port()}"
        self.client("ssm").put_parameter(Name=AMI_PARAMETER, Value=STAND_IN_AMI, Type="String")
        self.imds = MetadataService(
            CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"], REGION
        ).start()
        self.say(f"stand-in account: moto at {self.moto_url}")

    def deploy(self, source: Path | None = None) -> None:
        """`courierflow deploy` as a user runs it, from ``source`` (a copy of the source
        tree) when given."""
        argv = [*_courierflow(), "deploy", "--transport", self.options.transport,
                "--mode", self.options.mode, "--stack-name", STACK, "--region", REGION,
                "--transform-locally", "--ami-parameter", AMI_PARAMETER,
                "--time-scale", f"{self.options.time_scale:g}"]  # fmt: skip
        extra = {"PYTHONPATH": str(source / "src")} if source else {}
        if source:
            argv = [sys.executable, "-m", "courierflow.cli", *argv[len(_courierflow()) :]]
        self.run(argv, "courierflow deploy", cwd=source, **extra)
        self.say(f"deployed stack {STACK} ({self.options.transport}, {self.options.mode})")

    def stack(self) -> StackView:
        cfn = self.client("cloudformation")
        body = cfn.get_template(StackName=STACK)["TemplateBody"]  # boto3 parses JSON
        template = json.loads(body) if isinstance(body, str) else dict(body)
        resources = cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
        physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
        (described,) = cfn.describe_stacks(StackName=STACK)["Stacks"]
        parameters = {
            p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])
        }
        # parameters and conditions resolved, as CloudFormation applied them (the SAM
        # transform resolves them only in what it generates, not in plain resources)
        return StackView(resolve(template, parameters), physical)

    def boot_instance(self, view: StackView) -> None:
        """Run the deployed instance's user data into the scratch root, then (re)start
        the manager from its unit."""
        if "BrokerInstance" not in view.physical:
            return
        instance = view.physical["BrokerInstance"]
        raw = self.client("ec2").describe_instance_attribute(
            InstanceId=instance, Attribute="userData"
        )["UserData"]["Value"]
        script = shell_part(base64.b64decode(raw).decode())
        root = self.work / "root"
        (root / "var" / "log").mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin",
            "LANG": "C.UTF-8",
            "COURIERFLOW_ROOT": str(root),
            **self.instance_env(),
        }
        if self.options.transport == "rabbitmq":
            env.update(self._broker_env())
        result = subprocess.run(["bash", "-c", script], env=env, capture_output=True,
                                text=True, timeout=900)  # fmt: skip
        (self.work / "user-data.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RehearsalError(
                f"the instance's user data failed (exit {result.returncode}); see "
                f"{self.work / 'user-data.log'}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        self.say("instance booted: user data ran, the wheel is installed")
        self._start_manager(root)

    def _broker_env(self) -> dict[str, str]:
        """A private RabbitMQ node standing in for the instance's; the bootstrap's own
        rabbitmqctl calls configure it (user, password, vhost, guest removed)."""
        if self.broker is None:
            data = self.work / "rabbitmq"
            data.mkdir(parents=True)
            console = free_port()
            (data / "rabbitmq.conf").write_text(
                "loopback_users.guest = true\nmanagement.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {console}\n"
            )
            (data / "enabled_plugins").write_text("[rabbitmq_management].\n")
            self.broker = start_rabbitmq(data)
            self._console_port = console
        node = self.broker
        env = rabbitmq_env(node.data_dir, node.broker.port, node.epmd.port)
        keep = {k: v for k, v in env.items() if k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": env.get("HOME", ""),
            "RABBITMQ_BIN": str(Path(RABBITMQ_SERVER).parent),
            "RABBITMQ_MANAGEMENT_PORT": str(self._console_port),
        }

    def broker_address(self) -> str:
        """The broker's address here, standing in for the instance's private IP."""
        return f"127.0.0.1:{self.broker.broker.port}" if self.broker else ""

    def _start_manager(self, root: Path) -> None:
        if "manager" in self.processes:
            self.processes.pop("manager").stop()
        argv, env = unit_environment(UNIT_FILE, root)
        Path(env["COURIERFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        env = {**env, **self.instance_env()}
        if self.broker:
            env["COURIERFLOW_AMQP_HOST"] = self.broker_address()
        self.processes["manager"] = spawn(
            "manager", argv, self.work / "logs" / "manager.log", env, cwd=env["COURIERFLOW_HOME"]
        )
        self.say("manager started with its unit's environment")

    def serve_functions(self, view: StackView, runtime_python: Path) -> None:
        """(Re)start the local Lambda service with every function of the stack."""
        if "lambda" in self.processes:
            self.processes.pop("lambda").stop()
        config = function_config(self, view, runtime_python)
        path = self.work / "functions.toml"
        path.write_text(config)
        port = int(self.lambda_url.rsplit(":", 1)[1])
        argv = [*_courierflow(), "lambda", "serve", "--port", str(port),
                "--state-dir", str(self.work / "lambda"), "--config", str(path)]  # fmt: skip
        env = {**self._command_env(), "AWS_ENDPOINT_URL_LAMBDA": self.lambda_url}
        proc = spawn("lambda", argv, self.work / "logs" / "lambda-service.log", env, port=port)
        self.processes["lambda"] = proc
        proc.wait_for_port(60)
        self.say(f"functions served from their layers at {self.lambda_url}")

    def submit(self, orders: Path, report: Path) -> dict[str, Any]:
        argv = [*_courierflow(), "submit", str(orders), "--aws", "--stack-name", STACK,
                "--region", REGION, "--report-json", str(report)]  # fmt: skip
        result = subprocess.run(argv, env=self._command_env(), capture_output=True, text=True,
                                timeout=FOLLOW_TIMEOUT_S + 120)  # fmt: skip
        sys.stderr.write(result.stderr[-4000:])
        if not report.exists():
            raise RehearsalError(f"courierflow submit wrote no summary:\n{result.stderr[-3000:]}")
        summary: dict[str, Any] = json.loads(report.read_text())
        summary["exit_code"] = result.returncode
        return summary

    def close(self) -> None:
        for name in ("manager", "lambda"):
            if name in self.processes:
                self.processes.pop(name).stop()
        if self.broker is not None:
            self.broker.stop()
        if self.imds is not None:
            self.imds.stop()
        for proc in self.processes.values():
            stop_pid(proc.pid)


def _courierflow() -> list[str]:
    exe = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "courierflow.cli"]
