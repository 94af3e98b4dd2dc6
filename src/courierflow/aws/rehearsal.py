"""`courierflow rehearse`: everything `deploy` ships, run together on one machine.

The real artifacts are deployed with the real `courierflow deploy` to moto's server as a
stand-in account (the SAM transform run here, since moto has none), and then run as the
stack describes them:

- every function of the stack is served by the local Lambda service with the handler,
  environment, timeout, memory and layers the stack gave it, under an interpreter that
  has only boto3 (what the Lambda Python runtime ships), with nothing else on its path;
  async retries and on-failure destinations and event source mappings as the stack
  declares them;
- the upload bucket's notification is read from the deployed stack and wired to the
  function it names (through a queue on moto, which delivers S3 notifications to SQS);
- the instance's user data, read from the deployed instance, runs into a scratch root
  (real pip installs of the real wheel; with RabbitMQ, the bootstrap configures a private
  node the way it configures the instance's), and the manager runs with exactly its
  systemd unit's ExecStart, EnvironmentFile and Environment;
- then `courierflow submit FILE --aws` must deliver every order; a second deploy with a
  changed delivery handler must run the change.

What is added to the stack's own configuration is only what stands in for the network:
the endpoint variables pointing at the stand-ins, dummy credentials (given to functions in
their environment as Lambda gives them, and to the instance through a stand-in of the
instance metadata service as EC2 gives them), and the broker's address (the instance's
private IP is 127.0.0.1 and a free port here).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import email
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from courierflow.aws import deploy
from courierflow.aws.imds import MetadataService
from courierflow.errors import CourierflowError
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

#: the stand-in stack's name and region
STACK = "rehearsal"
REGION = "us-east-1"
#: the stand-in account's credentials (moto accepts any)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal"}
#: the SSM parameter standing in for Debian's public AMI parameter, and a moto AMI
AMI_PARAMETER = "/courierflow/rehearsal/debian-12-ami"
STAND_IN_AMI = "ami-12c6146b"
#: what the Lambda Python runtime ships besides the standard library
RUNTIME_PACKAGES = ("boto3",)
#: the marker the changed delivery handler logs, to show the second deploy running
CHANGE_MARKER = "courierflow-rehearsal-change"
#: orders of the file submitted after the redeploy (enough to see the change run)
SECOND_RUN_ORDERS = 10
#: seconds to wait for the orders of one upload
FOLLOW_TIMEOUT_S = 180


class RehearsalError(CourierflowError):
    """Raised when a step of the rehearsal fails; the message names the step."""


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
        return StackView(template["Resources"], physical)

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


@dataclass
class StackView:
    """The deployed stack: its (transformed) resources and their physical ids."""

    resources: dict[str, Any]
    physical: dict[str, str]

    def of_type(self, kind: str) -> dict[str, Any]:
        return {k: v for k, v in self.resources.items() if v["Type"] == kind and k in self.physical}

    def logical(self, node: Any) -> str:
        """The resource a Ref or GetAtt names."""
        if isinstance(node, dict):
            if "Ref" in node:
                return str(node["Ref"])
            if "Fn::GetAtt" in node:
                return str(node["Fn::GetAtt"][0])
        raise RehearsalError(f"cannot resolve {node!r} to a resource of the stack")


UNIT_FILE = deploy.BOOTSTRAP.parent / "courierflow-manager.service"


def shell_part(user_data: str) -> str:
    """The shell script of a user data document (MIME multipart, as cloud-init reads
    it), or the document itself when it is a plain script."""
    if not user_data.startswith("Content-Type:"):
        return user_data
    for part in email.message_from_string(user_data).walk():
        if part.get_content_type() == "text/x-shellscript":
            payload = part.get_payload()
            return str(payload)
    raise RehearsalError("the instance's user data has no shell script part")


def unit_environment(unit: Path, root: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and the environment systemd gives the unit's process: its
    EnvironmentFile and Environment lines and nothing else, paths under ``root``."""
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "EnvironmentFile":
            for entry in (root / value.lstrip("-/")).read_text().splitlines():
                if entry.strip() and not entry.startswith("#"):
                    name, _, val = entry.partition("=")
                    env[name] = val
        elif key == "Environment":
            name, _, val = value.partition("=")
            env[name] = str(root / val.lstrip("/")) if val.startswith("/") else val
        elif key == "ExecStart":
            program, *args = value.split()
            argv = [str(root / program.lstrip("/")), *args]
    return argv, env


def function_config(rehearsal: Rehearsal, view: StackView, runtime_python: Path) -> str:
    """The local Lambda service's TOML for every function of the stack."""
    awslambda = rehearsal.client("lambda")
    sqs = rehearsal.client("sqs")
    layers = _unpack_layers(rehearsal, view)
    invoke_configs = {
        view.logical(c["Properties"]["FunctionName"]): c["Properties"]
        for c in view.of_type("AWS::Lambda::EventInvokeConfig").values()
    }
    instance_ip = _instance_ip(rehearsal, view)
    lines: list[str] = []
    for logical, resource in view.of_type("AWS::Lambda::Function").items():
        name = view.physical[logical]
        conf = awslambda.get_function_configuration(FunctionName=name)
        code_dir = rehearsal.work / "code" / name
        code_dir.mkdir(parents=True, exist_ok=True)
        inline = resource["Properties"].get("Code", {}).get("ZipFile", "")
        (code_dir / "index.py").write_text(str(inline) + "\n")
        env = dict(conf.get("Environment", {}).get("Variables", {}))
        if instance_ip and env.get("COURIERFLOW_AMQP_HOST") == instance_ip:
            env["COURIERFLOW_AMQP_HOST"] = rehearsal.broker_address()
        settings: dict[str, Any] = {
            "handler": conf["Handler"],
            "timeout": conf.get("Timeout", 3),
            "memory": conf.get("MemorySize", 128),
            "code_dir": str(code_dir),
            "layers": [str(layers[layer["Arn"]]) for layer in conf.get("Layers", [])],
            "runtime_python": str(runtime_python),
        }
        invoke = invoke_configs.get(logical, {})
        if "MaximumRetryAttempts" in invoke:
            settings["max_retries"] = int(invoke["MaximumRetryAttempts"])
        if "MaximumEventAgeInSeconds" in invoke:
            settings["max_event_age"] = float(invoke["MaximumEventAgeInSeconds"])
        destination = invoke.get("DestinationConfig", {}).get("OnFailure", {})
        if destination:
            settings["on_failure"] = _queue_url(sqs, view, destination["Destination"])
        source = _event_source(rehearsal, view, logical)
        if source:
            settings.update(source)
        lines.append(f'[functions."{name}"]')
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        lines.append(f'[functions."{name}".env]')
        lines += [f"{json.dumps(key)} = {json.dumps(value)}" for key, value in env.items()]
        lines.append("")
    return "\n".join(lines)


def _instance_ip(rehearsal: Rehearsal, view: StackView) -> str:
    instance = view.physical.get("BrokerInstance")
    if not instance:
        return ""
    found = rehearsal.client("ec2").describe_instances(InstanceIds=[instance])
    return str(found["Reservations"][0]["Instances"][0].get("PrivateIpAddress", ""))


def _queue_url(sqs: Any, view: StackView, node: Any) -> str:
    """The URL of the stack's queue a GetAtt ...Arn (or Ref) names."""
    physical = view.physical[view.logical(node)]
    if physical.startswith("http"):
        return physical
    return str(sqs.get_queue_url(QueueName=physical.rsplit(":", 1)[-1])["QueueUrl"])


def _event_source(rehearsal: Rehearsal, view: StackView, function: str) -> dict[str, Any]:
    """The function's SQS trigger: an event source mapping of the stack, or the upload
    bucket's notification (moto sends S3 notifications to SQS only, so a queue carries
    it; the publisher takes S3 events wrapped in SQS records)."""
    sqs = rehearsal.client("sqs")
    for mapping in view.resources.values():
        props = mapping.get("Properties", {})
        if mapping["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        if view.logical(props["FunctionName"]) != function:
            continue
        if view.logical(props["EventSourceArn"]) not in view.physical:
            continue
        return {
            "sqs_queue_url": _queue_url(sqs, view, props["EventSourceArn"]),
            "sqs_batch_size": int(props.get("BatchSize", 10)),
            "report_batch_item_failures": "ReportBatchItemFailures"
            in props.get("FunctionResponseTypes", []),
        }
    for logical, bucket in view.of_type("AWS::S3::Bucket").items():
        notification = bucket["Properties"].get("NotificationConfiguration", {})
        for target in notification.get("LambdaConfigurations", []):
            if view.logical(target["Function"]) != function:
                continue
            relay = sqs.create_queue(
                QueueName=f"{STACK}-notifications-{function}",
                Attributes={"VisibilityTimeout": "900"},
            )["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=relay, AttributeNames=["QueueArn"])
            entry = {"QueueArn": arn["Attributes"]["QueueArn"], "Events": [target["Event"]]}
            rules = target.get("Filter", {}).get("S3Key", {}).get("Rules")
            if rules:  # CloudFormation's S3Key.Rules are the API's Key.FilterRules
                entry["Filter"] = {"Key": {"FilterRules": rules}}
            rehearsal.client("s3").put_bucket_notification_configuration(
                Bucket=view.physical[logical],
                NotificationConfiguration={"QueueConfigurations": [entry]},
            )
            return {"sqs_queue_url": relay, "sqs_batch_size": 1}
    return {}


def _unpack_layers(rehearsal: Rehearsal, view: StackView) -> dict[str, Path]:
    """Each layer version of the stack, downloaded from its S3 location and unpacked;
    by ARN."""
    s3 = rehearsal.client("s3")
    found: dict[str, Path] = {}
    for logical, layer in view.of_type("AWS::Lambda::LayerVersion").items():
        content = layer["Properties"]["Content"]
        target = rehearsal.work / "layers" / logical
        zipped = target.with_suffix(".zip")
        target.mkdir(parents=True, exist_ok=True)
        s3.download_file(content["S3Bucket"], content["S3Key"], str(zipped))
        with zipfile.ZipFile(zipped) as archive:
            archive.extractall(target)
        found[view.physical[logical]] = target
    return found


def runtime_interpreter(cache: Path, say: Callable[[str], None]) -> Path:
    """A venv standing in for the Lambda Python runtime: the standard library and boto3."""
    python = cache / "bin" / "python"
    if not (cache / ".ready").exists():
        say("building the runtime stand-in (a venv with boto3 only) ...")
        shutil.rmtree(cache, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(cache)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *RUNTIME_PACKAGES],
                       check=True, timeout=600)  # fmt: skip
        (cache / ".ready").touch()
    return python


def changed_source(work: Path) -> Path:
    """A copy of the source tree whose delivery handler logs CHANGE_MARKER."""
    root = deploy.ROOT
    copy = work / "changed-source"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).exists():
            shutil.copy2(root / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(root / "src", copy / "src", ignore=ignore)
    delivery = copy / "src" / "courierflow" / "functions" / "delivery.py"
    delivery.write_text(
        delivery.read_text()
        + "\n\n_first_handler = lambda_handler\n\n\n"
        + "def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:\n"
        + f'    log.info("{CHANGE_MARKER}")\n'
        + "    return _first_handler(event, context)\n"
    )
    return copy


def renamed_orders(orders: Path, out: Path, limit: int = SECOND_RUN_ORDERS) -> Path:
    """The first ``limit`` rows with new order ids (and so a new object): the same file
    again would be recognised as already processed and publish nothing."""
    with orders.open(newline="", encoding="utf-8-sig") as src:
        rows = list(csv.reader(src))
    column = [name.strip().lower().replace(" ", "_") for name in rows[0]].index("order_id")
    with out.open("w", newline="", encoding="utf-8") as dst:
        writer = csv.writer(dst)
        writer.writerow(rows[0])
        for row in rows[1 : limit + 1]:
            if row:
                row[column] = f"{row[column]}-after-change"
            writer.writerow(row)
    return out


def change_seen(work: Path) -> bool:
    """Whether a delivery environment logged the changed handler's marker."""
    for path in (work / "lambda").rglob("*"):
        if path.is_file() and CHANGE_MARKER in path.read_text(errors="replace"):
            return True
    return False


def _courierflow() -> list[str]:
    exe = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "courierflow.cli"]


@contextlib.contextmanager
def rehearsal(options: RehearsalOptions, say: Callable[[str], None]) -> Iterator[Rehearsal]:
    """A started rehearsal, stopped (every process by PID) on the way out."""
    run = Rehearsal(options, say)
    try:
        run.start()
        yield run
    finally:
        run.close()


def rehearse(options: RehearsalOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Deploy to the stand-in account, boot, serve, submit; then again with a changed
    handler. Returns the first submit's summary with ``rehearsal`` details added.

    Raises:
        RehearsalError: a step failed; the message names it and where its log is.
    """
    if options.mode == "serverless" and options.transport != "sqs":
        raise RehearsalError("--mode serverless needs --transport sqs")
    runtime = runtime_interpreter(options.home.absolute() / "rehearsal-runtime", say)
    with rehearsal(options, say) as run:
        started = time.monotonic()
        run.deploy()
        view = run.stack()
        run.boot_instance(view)
        run.serve_functions(view, runtime)
        summary = run.submit(options.orders, run.work / "summary.json")
        details: dict[str, Any] = {
            "transport": options.transport,
            "mode": options.mode,
            "first_run_s": round(time.monotonic() - started, 1),
            # the instance's processes asked the metadata service for the role's keys
            "instance_credentials_from_imds": bool(run.imds and run.imds.requests),
        }
        if options.redeploy:
            say("deploying again with a changed delivery handler ...")
            run.deploy(changed_source(run.work))
            view = run.stack()
            run.boot_instance(view)  # the user data changed: the instance restarts
            run.serve_functions(view, runtime)
            second = renamed_orders(options.orders, run.work / "orders-after-change.csv")
            again = run.submit(second, run.work / "summary-2.json")
            details["second_delivered"] = again.get("delivered", 0)
            details["second_exit_code"] = again["exit_code"]
            details["change_running"] = change_seen(run.work)
        summary["rehearsal"] = details
        return summary


def succeeded(summary: dict[str, Any]) -> bool:
    """Every order delivered, in each run, and the changed handler seen running."""
    details = summary.get("rehearsal", {})
    ok = summary.get("exit_code") == 0 and summary.get("lost", 1) == 0
    if "change_running" in details:
        ok = ok and details["change_running"] and details["second_exit_code"] == 0
    return bool(ok)
