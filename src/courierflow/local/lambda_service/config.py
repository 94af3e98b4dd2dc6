"""Function configuration: from `--function`/`--set` flags or a TOML file.

Flags: ``--function NAME=MODULE:HANDLER`` and ``--set NAME.KEY=VALUE`` where KEY is one of
``timeout``, ``memory``, ``concurrency``, ``retry_delays`` (comma-separated seconds),
``max_retries``, ``max_event_age``, ``on_failure`` (SQS queue URL or a file path),
``idle_timeout``, ``provisioned_concurrency``, ``sqs_batch_size``, ``sqs_batching_window``,
``sqs_max_concurrency``, ``report_batch_item_failures``, ``code_dir``, ``layers``
(comma-separated folders), ``runtime_python`` or ``env.VAR``. The TOML file has one
table per function: ``[functions.NAME]`` with ``handler = "MODULE:HANDLER"`` and the same
keys (``env`` a table, ``layers`` a list of strings).

A function can be run as AWS runs it: ``code_dir`` is its own code (Lambda's /var/task),
``layers`` the folders of its unpacked layer zips (each one's ``python`` and
``python/lib/pythonX.Y/site-packages`` go on the import path, in the order given, after
the code), and ``runtime_python`` an interpreter standing in for Lambda's Python runtime
(a venv with only boto3, say). With ``runtime_python`` set the function runs isolated:
under that interpreter with ``-I``, nothing on its path but its code, its layers and the
interpreter's own packages, and only Lambda's environment variables (plus the AWS
endpoint and credential ones) set. Without it, ``code_dir`` and ``layers`` go in front of
the service's ``--code-dir`` folders and the function runs in the service's own venv.

The account's limits, shared by every function, are off by default: an ``[account]``
table with ``concurrency``, ``async_invoke_rate`` and ``async_invoke_burst``, or the flags
``--account-concurrency``, ``--async-invoke-rate`` and ``--async-invoke-burst`` (and their
environment variables), which win over the file.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from courierflow.config import DEFAULT_EVENT_AGE_S, DEFAULT_REGION, LOCAL_ACCOUNT_ID
from courierflow.errors import ConfigError

#: account and region the local ARNs are made of
ACCOUNT_ID = LOCAL_ACCOUNT_ID
REGION = DEFAULT_REGION


@dataclass
class FunctionConfig:
    """One function, as `GetFunction` reports it and the service runs it."""

    name: str
    handler: str  # MODULE:ATTRIBUTE (AWS writes MODULE.ATTRIBUTE; both are accepted)
    timeout: float = 3.0
    memory: int = 128
    #: environments at most (reserved concurrency)
    concurrency: int = 100
    #: Lambda's default async policy: two retries, about one and two minutes apart
    retry_delays: tuple[float, ...] = (60.0, 120.0)
    max_retries: int = 2
    #: seconds an Event invoke is held before the on-failure destination (the
    #: reconciler waits as long: one constant for both)
    max_event_age: float = DEFAULT_EVENT_AGE_S
    on_failure: str = ""
    #: seconds an idle environment is kept warm
    idle_timeout: float = 300.0
    #: environments started with the service and kept warm whatever the idle time
    #: (Lambda's provisioned concurrency; at most ``concurrency``)
    provisioned_concurrency: int = 0
    sqs_queue_url: str = ""
    sqs_batch_size: int = 10
    sqs_batching_window: float = 0.0
    #: batches the SQS event source runs at once at most (the mapping's
    #: ScalingConfig.MaximumConcurrency); 0: as many as the function's concurrency
    sqs_max_concurrency: int = 0
    report_batch_item_failures: bool = True
    #: the function's own code folder (Lambda's /var/task, LAMBDA_TASK_ROOT); "" for none
    code_dir: str = ""
    #: folders of unpacked layers (each a layer zip's root), searched after the code
    layers: tuple[str, ...] = ()
    #: an interpreter standing in for Lambda's Python runtime; set, the function runs
    #: isolated from the service's venv ("" keeps it in the service's venv)
    runtime_python: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def isolated(self) -> bool:
        """Whether the function runs under its own interpreter, away from the service's venv."""
        return bool(self.runtime_python)

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.name}"

    @property
    def module_and_attribute(self) -> tuple[str, str]:
        text = self.handler
        module, sep, attribute = text.partition(":") if ":" in text else text.rpartition(".")
        if not module or not attribute or not sep:
            raise ConfigError(f"handler {text!r} of {self.name} is not MODULE:FUNCTION")
        return module, attribute

    def set(self, key: str, value: Any) -> None:
        """Apply one ``--set`` (or TOML) setting, converting its type."""
        if key.startswith("env."):
            self.env[key[4:]] = str(value)
            return
        if key == "env" and isinstance(value, dict):
            self.env.update({str(k): str(v) for k, v in value.items()})
            return
        kinds = {f.name: f.type for f in fields(self)}
        if key not in kinds or key in ("name", "env"):
            raise ConfigError(f"unknown setting {key!r} for {self.name}")
        kind = kinds[key]
        try:
            if key == "retry_delays":
                parts = value if isinstance(value, list) else str(value).split(",")
                setattr(self, key, tuple(float(p) for p in parts if str(p).strip()))
            elif key == "layers":
                parts = value if isinstance(value, list) else str(value).split(",")
                setattr(self, key, tuple(str(p).strip() for p in parts if str(p).strip()))
            elif kind == "bool":
                setattr(self, key, str(value).lower() in ("1", "true", "yes", "on"))
            elif kind == "int":
                setattr(self, key, int(value))
            elif kind == "float":
                setattr(self, key, float(value))
            else:
                setattr(self, key, str(value))
        except ValueError:
            raise ConfigError(f"{self.name}.{key}: {value!r} is not a valid {kind}") from None


@dataclass(frozen=True)
class AccountLimits:
    """The account-level quotas of the service (each 0: off, as by default)."""

    #: executions at once across every function (AWS Academy's Learner Lab: 10)
    concurrency: int = 0
    #: asynchronous Invoke requests accepted per second; past it, 429
    async_invoke_rate: float = 0.0
    #: requests accepted at once before the rate applies (0: one second's worth)
    async_invoke_burst: int = 0

    @property
    def burst(self) -> int:
        """The token bucket's size: the burst, or one second's worth of the rate."""
        return self.async_invoke_burst or max(1, math.ceil(self.async_invoke_rate))


def account_limits(
    config_file: Path | None,
    concurrency: int | None = None,
    async_invoke_rate: float | None = None,
    async_invoke_burst: int | None = None,
) -> AccountLimits:
    """The account's limits: the TOML file's ``[account]`` table, then the flags given."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(tomllib.loads(config_file.read_text()).get("account") or {})
    flags = {
        "concurrency": concurrency,
        "async_invoke_rate": async_invoke_rate,
        "async_invoke_burst": async_invoke_burst,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    unknown = set(values) - set(flags)
    if unknown:
        raise ConfigError(f"unknown [account] setting(s): {', '.join(sorted(unknown))}")
    try:
        limits = AccountLimits(
            concurrency=int(values.get("concurrency", 0)),
            async_invoke_rate=float(values.get("async_invoke_rate", 0.0)),
            async_invoke_burst=int(values.get("async_invoke_burst", 0)),
        )
    except (TypeError, ValueError):
        raise ConfigError(f"account limits must be numbers (got {values})") from None
    if min(limits.concurrency, limits.async_invoke_rate, limits.async_invoke_burst) < 0:
        raise ConfigError(f"account limits cannot be negative (got {values})")
    return limits


def parse_flags(
    functions: list[str], sets: list[str], event_sources: list[str], config_file: Path | None
) -> dict[str, FunctionConfig]:
    """Build the function table from the CLI flags (applied over the TOML file, if any)."""
    table: dict[str, FunctionConfig] = {}
    if config_file is not None:
        doc = tomllib.loads(config_file.read_text())
        for name, spec in (doc.get("functions") or {}).items():
            fn = FunctionConfig(name=name, handler=str(spec.get("handler", "")))
            for key, value in spec.items():
                if key != "handler":
                    fn.set(key, value)
            table[name] = fn
    for item in functions:
        name, sep, handler = item.partition("=")
        if not sep or not name or not handler:
            raise ConfigError(f"--function {item!r}: use NAME=MODULE:HANDLER")
        table[name] = FunctionConfig(name=name, handler=handler)
    for item in sets:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: use NAME.KEY=VALUE")
        if name not in table:
            raise ConfigError(f"--set {item!r}: no function {name!r} (add it with --function)")
        table[name].set(key, value)
    for item in event_sources:
        name, sep, url = item.partition("=")
        if not sep or name not in table:
            raise ConfigError(f"--event-source-sqs {item!r}: use NAME=QUEUE_URL for a known NAME")
        table[name].sqs_queue_url = url
    for fn in table.values():
        fn.module_and_attribute  # noqa: B018 - validates the handler spec early
    return table
