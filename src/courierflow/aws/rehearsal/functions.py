"""The deployed stack's functions as the local Lambda service runs them: handler,
environment, timeout, memory, layers (downloaded from the stack's S3 locations), async
retries, on-failure destinations and SQS triggers, under an interpreter standing in for
the Lambda Python runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from courierflow.aws.rehearsal.account import STACK, RehearsalError

if TYPE_CHECKING:
    from courierflow.aws.rehearsal.session import Rehearsal

#: what the Lambda Python runtime ships besides the standard library
RUNTIME_PACKAGES = ("boto3",)


@dataclass
class StackView:
    """The deployed stack: its (transformed) resources, with the parameters it was
    deployed with filled in, and their physical ids."""

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
            "sqs_max_concurrency": int(props.get("ScalingConfig", {}).get("MaximumConcurrency", 0)),
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
