"""Settings read from the environment, with every default in one place.

Handlers, the manager and the CLI build ``Settings.from_env()`` once at their edge and
pass what they need down. Service endpoints are not settings of ours: boto3 reads
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL_LAMBDA`` / ``AWS_ENDPOINT_URL_SQS`` itself,
which is how the same code talks to AWS or to the local stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from courierflow.errors import ConfigError

#: the broker a fresh RabbitMQ install answers on
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
#: the queue orders are published to
DEFAULT_QUEUE = "orders"
#: the function the manager invokes once per order
DEFAULT_DELIVERY_FUNCTION = "lambda_delivery"
#: the function an upload triggers (the lab's name for it)
DEFAULT_PUBLISHER_FUNCTION = "lambda_order_publisher"
#: the account id of the stand-ins (moto's default account; the local Lambda ARNs)
LOCAL_ACCOUNT_ID = "123456789012"
#: the lab's region
DEFAULT_REGION = "us-east-1"
#: the local state folder (ledger, logs, pids), relative to the working directory
DEFAULT_HOME = ".courierflow"
#: the ``service`` key of every log line and the metrics' dimension (Powertools' own
#: default is "service_undefined")
DEFAULT_SERVICE = "courierflow"
#: the log level when no variable names one
DEFAULT_LOG_LEVEL = "INFO"
#: what boto3 signs requests to the local stand-ins with, never the user's real credentials
LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
#: how long Lambda holds an accepted Event invoke (queued, running, retried) before it
#: hands it to the on-failure destination: AWS's default MaximumEventAgeInSeconds, and
#: what the local Lambda service applies. The reconciler does not call a dispatched
#: order stuck before this (COURIERFLOW_DISPATCHED_STUCK_AFTER_S, which the template sets
#: to the function's own event age).
DEFAULT_EVENT_AGE_S = 6 * 3600.0
#: the longest an SQS ReceiveMessage may wait for a message (WaitTimeSeconds takes 0-20:
#: API_ReceiveMessage in the SQS API reference); long polling as SQS recommends
SQS_MAX_WAIT_S = 20


def resolve_region(env: Mapping[str, str] | None = None) -> str:
    """The AWS region as the SDKs resolve it, with the lab's region only as the last default.

    ``AWS_REGION`` first (what Lambda sets and what the AWS SDKs document), then
    ``AWS_DEFAULT_REGION`` (what botocore reads), then the profile's ``region`` in the
    AWS config file, then ``us-east-1``. Every boto3 client courierflow builds gets this
    region explicitly: older botocore releases read only ``AWS_DEFAULT_REGION`` and the
    config file, and a client without a region raises ``NoRegionError`` on EC2.
    """
    env = os.environ if env is None else env
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        return region
    try:
        import botocore.session

        session = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
        configured = session.get_scoped_config().get("region")  # the profile's, in the file
    except Exception:  # a broken or missing config file is no reason to stop
        configured = None
    return str(configured) if configured else DEFAULT_REGION


_T = TypeVar("_T", int, float)


def _number(env: Mapping[str, str], name: str, default: _T, parse: Callable[[str], _T]) -> _T:
    """``env[name]`` read by ``parse`` (int or float), ``default`` when unset or empty.

    Raises:
        ConfigError: naming the variable, what it holds and what it accepts.
    """
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        what = "a whole number" if parse is int else "a number"
        example = f"an integer such as {default}" if parse is int else "a decimal such as 0.5"
        raise ConfigError(
            f"{name}={raw!r} is not {what}: it accepts {example} (unset, it is {default})"
        ) from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    """``env[name]`` as a number (see ``_number``)."""
    return _number(env, name, default, float)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    """``env[name]`` as a whole number (see ``_number``)."""
    return _number(env, name, default, int)


@dataclass(frozen=True)
class Settings:
    """Everything courierflow's own code reads from the environment."""

    #: where the broker is (``amqp://`` or ``amqps://``)
    amqp_url: str = DEFAULT_AMQP_URL
    #: where orders are queued: the AMQP URL for RabbitMQ (SQS URLs come with the SQS transport)
    queue_url: str = DEFAULT_AMQP_URL
    #: name of the order queue
    queue: str = DEFAULT_QUEUE
    #: ``sqlite:///path/to/ledger.db`` or ``dynamodb://TABLE``
    ledger_url: str = ""
    #: function invoked per order
    delivery_function: str = DEFAULT_DELIVERY_FUNCTION
    region: str = DEFAULT_REGION
    #: delivery delay range in seconds, as in the lab: random.randint(2, 10)
    delay_min: int = 2
    delay_max: int = 10
    #: multiplies every delay; 0.01 makes a 10 s trip take 0.1 s (tests, benchmarks)
    time_scale: float = 1.0
    #: fraction of deliveries that fail on purpose (fault injection)
    fail_rate: float = 0.0
    #: fraction of orders the manager hands to Lambda twice (fault injection: the
    #: duplicate events at-least-once delivery allows)
    duplicate_rate: float = 0.0
    #: local state folder
    home: Path = Path(DEFAULT_HOME)
    #: name of an SSM SecureString parameter holding the AMQP URL (on AWS)
    amqp_secret: str = ""
    #: the broker's host, replacing the one in the AMQP URL (on AWS the stored URL is the
    #: broker instance's own view, and the publisher is told the instance's address)
    amqp_host: str = ""
    #: the reconciler: a queued order (or one whose claim expired) is stuck after this long
    stuck_after_s: float = 300.0
    #: the reconciler: the delivery function's maximum event age; a dispatched order is
    #: not stuck before it (Lambda still holds its event, or hands it to the destination)
    dispatched_stuck_after_s: float = DEFAULT_EVENT_AGE_S
    #: the reconciler reads failed deliveries from this queue (Lambda's on-failure
    #: destination)
    failure_queue_url: str = ""
    #: seconds an SQS consumer's ReceiveMessage waits for messages (long polling, 0-20):
    #: a stopping manager first waits for its receives to return (see transports/sqs.py)
    sqs_wait_s: int = SQS_MAX_WAIT_S
    #: S3 and SQS of the local stack (moto's server), reached with LOCAL_CREDENTIALS; set
    #: by ``courierflow.local.stack.settings_for``, "" elsewhere (boto3 then finds the
    #: endpoints and credentials itself, ``AWS_ENDPOINT_URL_S3`` and the like included)
    local_aws_url: str = ""

    def aws_client(self, service: Literal["s3", "sqs"], **options: Any) -> Any:
        """A boto3 client for ``service`` in ``region``: the local stack's when
        ``local_aws_url`` is set, else wherever boto3 resolves it. ``options`` go to
        ``boto3.client`` (a botocore ``Config``, say)."""
        import boto3

        make: Any = boto3.client
        if self.local_aws_url:
            options = {"endpoint_url": self.local_aws_url, **LOCAL_CREDENTIALS, **options}
        return make(service, region_name=self.region, **options)

    def with_secrets(self) -> Settings:
        """Read the AMQP URL from SSM Parameter Store when ``amqp_secret`` names one, and
        point it at ``amqp_host`` when that is set.

        Called once at a cold start; credentials never sit in environment variables."""
        url = self.amqp_url
        if self.amqp_secret:
            import boto3

            ssm = boto3.client("ssm", region_name=self.region)
            found = ssm.get_parameter(Name=self.amqp_secret, WithDecryption=True)
            url = found["Parameter"]["Value"]
        if self.amqp_host:
            url = with_host(url, self.amqp_host)
        if url == self.amqp_url:
            return self
        queue_url = url if self.queue_url == self.amqp_url else self.queue_url
        return replace(self, amqp_url=url, queue_url=queue_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = Path(env.get("COURIERFLOW_HOME") or DEFAULT_HOME).absolute()
        amqp_url = env.get("COURIERFLOW_AMQP_URL") or DEFAULT_AMQP_URL
        return cls(
            amqp_url=amqp_url,
            queue_url=env.get("COURIERFLOW_QUEUE_URL") or amqp_url,
            queue=env.get("COURIERFLOW_QUEUE") or DEFAULT_QUEUE,
            ledger_url=env.get("COURIERFLOW_LEDGER_URL") or f"sqlite:///{home / 'ledger.db'}",
            delivery_function=env.get("COURIERFLOW_DELIVERY_FUNCTION") or DEFAULT_DELIVERY_FUNCTION,
            region=resolve_region(env),
            delay_min=_int(env, "COURIERFLOW_DELAY_MIN", 2),
            delay_max=_int(env, "COURIERFLOW_DELAY_MAX", 10),
            time_scale=_float(env, "COURIERFLOW_TIME_SCALE", 1.0),
            fail_rate=_float(env, "COURIERFLOW_FAIL_RATE", 0.0),
            duplicate_rate=_float(env, "COURIERFLOW_DUPLICATE_RATE", 0.0),
            home=home,
            amqp_secret=env.get("COURIERFLOW_AMQP_SECRET", ""),
            amqp_host=env.get("COURIERFLOW_AMQP_HOST", ""),
            stuck_after_s=_float(env, "COURIERFLOW_STUCK_AFTER_S", 300.0),
            dispatched_stuck_after_s=_float(
                env, "COURIERFLOW_DISPATCHED_STUCK_AFTER_S", DEFAULT_EVENT_AGE_S
            ),
            failure_queue_url=env.get("COURIERFLOW_FAILURE_QUEUE_URL", ""),
            sqs_wait_s=max(
                0, min(SQS_MAX_WAIT_S, _int(env, "COURIERFLOW_SQS_WAIT_S", SQS_MAX_WAIT_S))
            ),
        )


#: a physical line may be this many times max_field_bytes (at least MIN_LINE_CHARS)
#: before its row is rejected; it bounds what is held in memory for one line
LINE_LIMIT_FACTOR = 2
MIN_LINE_CHARS = 64 * 1024


@dataclass(frozen=True)
class ReaderLimits:
    """Safe defaults; each can be changed by an environment variable."""

    #: larger objects are refused before reading (COURIERFLOW_MAX_OBJECT_BYTES); the
    #: caller compares it with the object's ContentLength (see ``check_object_size``)
    max_object_bytes: int = 2 * 1024**3
    #: a longer field rejects its row (COURIERFLOW_MAX_FIELD_BYTES), counted in characters
    max_field_bytes: int = 1024**2
    #: rows beyond this are rejected, one reject each (COURIERFLOW_MAX_ROWS)
    max_rows: int = 5_000_000
    #: a wider header refuses the file (COURIERFLOW_MAX_COLUMNS)
    max_columns: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReaderLimits:
        """Limits from ``COURIERFLOW_MAX_*`` variables; unset or empty means the default.

        Raises:
            ConfigError: when a variable is set but is not a positive whole number.
        """
        env = os.environ if env is None else env
        names = {
            "max_object_bytes": "COURIERFLOW_MAX_OBJECT_BYTES",
            "max_field_bytes": "COURIERFLOW_MAX_FIELD_BYTES",
            "max_rows": "COURIERFLOW_MAX_ROWS",
            "max_columns": "COURIERFLOW_MAX_COLUMNS",
        }
        values: dict[str, int] = {}
        for field, var in names.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            value = _int(env, var, 0)
            if value < 1:
                raise ConfigError(f"{var}={text!r}: must be a positive whole number")
            values[field] = value
        return cls(**values)

    @property
    def line_chars(self) -> int:
        """Longest physical line read whole; a longer one rejects its row."""
        return max(LINE_LIMIT_FACTOR * self.max_field_bytes, MIN_LINE_CHARS)


def with_host(url: str, host: str) -> str:
    """``url`` with its host replaced, credentials, port and path kept; ``host`` may be
    ``HOST:PORT`` to replace the port too (a stand-in on another port)."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    port = hostport.rpartition(":")[2] if ":" in hostport else ""
    if ":" in host:
        host, port = host.rsplit(":", 1)
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class LogSettings:
    """How logs are written (``courierflow.logs.setup_logging``), under the variable
    names Powertools and Lambda document, so a function configured for either logs the
    same way. Lambda's own JSON log format (``AWS_LAMBDA_LOG_FORMAT=JSON``) needs
    nothing here: our lines are JSON objects already, which Lambda passes through."""

    #: POWERTOOLS_LOG_LEVEL, then AWS_LAMBDA_LOG_LEVEL (Lambda's advanced logging
    #: controls: TRACE, DEBUG, INFO, WARN, ERROR, FATAL), then COURIERFLOW_LOG_LEVEL
    level: str = DEFAULT_LOG_LEVEL
    #: POWERTOOLS_SERVICE_NAME: the ``service`` key of every line and metric
    service: str = DEFAULT_SERVICE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogSettings:
        env = os.environ if env is None else env
        level = (
            env.get("POWERTOOLS_LOG_LEVEL")
            or env.get("AWS_LAMBDA_LOG_LEVEL")
            or env.get("COURIERFLOW_LOG_LEVEL")
            or DEFAULT_LOG_LEVEL
        )
        return cls(
            level=level.strip().upper(),
            service=env.get("POWERTOOLS_SERVICE_NAME") or DEFAULT_SERVICE,
        )


def xray_trace_id(env: Mapping[str, str] | None = None) -> str:
    """The current invocation's X-Ray trace id ("1-5759e988-bd862e3fe1be46a994272793"):
    the ``Root=`` part of ``_X_AMZN_TRACE_ID``, which Lambda's runtime sets before each
    invocation, so read it per invocation; "" when unset."""
    raw = (os.environ if env is None else env).get("_X_AMZN_TRACE_ID", "")
    for part in raw.split(";"):
        if part.startswith("Root="):
            return part.removeprefix("Root=")
    return ""
