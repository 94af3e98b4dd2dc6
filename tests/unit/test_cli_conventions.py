"""The CLI's conventions: one table of exit codes, every error class mapped to it, data on
stdout (one JSON document with --output json), messages on stderr, options that name
their environment variables, choices as enums, and the AWS region as boto3 resolves it."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from typer.testing import CliRunner, Result

from courierflow import cli, errors
from courierflow.aws.deploy import DeployError
from courierflow.exitcodes import ExitCode, exit_code_for, exit_code_for_run
from courierflow.ledger.base import open_ledger
from courierflow.local import stack
from courierflow.local.processes import free_port
from courierflow.report.summary import RunSummary

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def _fresh_boto3_session() -> Iterator[None]:
    """`--profile` replaces boto3's default session; no other test may inherit it."""
    yield
    boto3.DEFAULT_SESSION = None


def invoke(home: Path, *args: str, **env: str | None) -> Result:
    """`courierflow ARGS` in this process, with its own home and no stack or ledger."""
    isolated: dict[str, str | None] = {
        "COURIERFLOW_HOME": str(home),
        "COURIERFLOW_LEDGER_URL": None,
        "COURIERFLOW_QUEUE_URL": None,
        "COURIERFLOW_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "COLUMNS": "200",  # help and errors unwrapped, as rich reads the width
        **env,
    }
    return CliRunner().invoke(cli.app, list(args), env=isolated, terminal_width=200)


# --- the table ----------------------------------------------------------------------------


def readme_exit_codes() -> list[tuple[int, str, str]]:
    """(code, name, meaning) of each row of README's "Exit codes" table."""
    section = README.read_text().split("### Exit codes", 1)[1]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE)
    return [(int(code), name, meaning) for code, name, meaning in rows]


def test_the_readme_table_is_the_exit_code_enum_row_by_row() -> None:
    rows = readme_exit_codes()
    assert [(code, name) for code, name, _ in rows] == [(c.value, c.name) for c in ExitCode]
    for code, _, meaning in rows:
        assert meaning.strip(), f"exit code {code} has no meaning in the README"


#: every error class of courierflow.errors, and the exit code it must end a command with
EXPECTED_CODES = {
    errors.CourierflowError: ExitCode.FAILED,
    errors.ConfigError: ExitCode.USAGE,
    errors.UnreadableFileError: ExitCode.USAGE,
    errors.TransportError: ExitCode.UNREACHABLE,
    errors.ConnectionLost: ExitCode.UNREACHABLE,
    errors.AuthenticationError: ExitCode.UNREACHABLE,
    errors.PublishError: ExitCode.UNREACHABLE,
    errors.PublishIncomplete: ExitCode.FAILED,
    errors.LedgerError: ExitCode.UNREACHABLE,
    errors.InvokeError: ExitCode.UNREACHABLE,
    errors.InvokeThrottled: ExitCode.UNREACHABLE,
    errors.InvokeUnreachable: ExitCode.UNREACHABLE,
    errors.StackError: ExitCode.UNREACHABLE,
    errors.DeployError: ExitCode.FAILED,
}


def test_every_error_class_has_a_decided_exit_code() -> None:
    defined = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.CourierflowError)
    }
    assert defined == set(EXPECTED_CODES), "a new error class needs its row in EXPECTED_CODES"


@pytest.mark.parametrize("error", list(EXPECTED_CODES), ids=lambda e: e.__name__)
def test_each_error_class_maps_to_its_exit_code(error: type[errors.CourierflowError]) -> None:
    assert exit_code_for(error("boom")) is EXPECTED_CODES[error]


def test_an_aws_error_raised_from_a_connection_failure_means_unreachable() -> None:
    try:
        try:
            raise EndpointConnectionError(endpoint_url="https://sts.example")
        except EndpointConnectionError as exc:
            raise DeployError(f"get_caller_identity: {exc}") from None
    except DeployError as converted:
        assert exit_code_for(converted) is ExitCode.UNREACHABLE
    assert exit_code_for(DeployError("stack courierflow ended in ROLLBACK_COMPLETE")) is (
        ExitCode.FAILED
    )
    assert exit_code_for(KeyboardInterrupt()) is ExitCode.INTERRUPTED
    assert exit_code_for(RuntimeError("a bug")) is ExitCode.FAILED


def summary(delivered: int = 3, failed: int = 0, lost: int = 0, refused: str = "") -> RunSummary:
    published = 0 if refused else delivered + failed + lost
    return RunSummary(
        file="s3://bucket/orders.csv", rows=published, rejected=0, published=published,
        skipped=0, delivered=delivered, failed=failed, lost=lost, duplicates=0,
        makespan_s=1.0, peak_concurrency=1, throughput_per_s=1.0, refused=refused,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("run", "code"),
    [
        (summary(), ExitCode.OK),
        (summary(delivered=2, failed=1), ExitCode.NOT_DELIVERED),
        (summary(delivered=2, lost=1), ExitCode.NOT_DELIVERED),
        (summary(delivered=0, refused="not a CSV file"), ExitCode.USAGE),
    ],
    ids=["all-delivered", "failed", "lost", "refused"],
)
def test_a_finished_run_exits_by_what_happened_to_its_orders(
    run: RunSummary, code: ExitCode
) -> None:
    assert exit_code_for_run(run) is code


def test_an_unexpected_error_exits_failed_not_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "app", crash)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == ExitCode.FAILED
    assert "RuntimeError" in capsys.readouterr().err


# --- each code, provoked through the CLI ---------------------------------------------------


def test_version_exits_zero(home: Path) -> None:
    result = invoke(home, "--version")
    assert result.exit_code == ExitCode.OK
    assert result.stdout.startswith("courierflow ")


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_missing_file_is_a_usage_error(home: Path, tmp_path: Path, command: str) -> None:
    result = invoke(home, command, str(tmp_path / "missing.csv"))
    assert result.exit_code == ExitCode.USAGE
    assert "does not exist" in result.stderr
    assert result.stdout == ""


def test_choices_are_enums_and_a_bad_one_is_a_usage_error(home: Path, tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\nA-1\n")
    result = invoke(home, "run", str(orders), "--transport", "kafka")
    assert result.exit_code == ExitCode.USAGE
    assert "'kafka' is not one of 'rabbitmq', 'sqs'" in " ".join(result.stderr.split())
    result = invoke(home, "status", "--output", "yaml")
    assert result.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("command", [["up"], ["run", "ORDERS"], ["deploy"], ["rehearse"]])
def test_serverless_without_sqs_is_refused_before_anything_starts(
    home: Path, tmp_path: Path, command: list[str]
) -> None:
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\nA-1\n")
    argv = [str(orders) if arg == "ORDERS" else arg for arg in command]
    extra = ["--orders", str(orders)] if command == ["rehearse"] else []
    result = invoke(home, *argv, *extra, "--mode", "serverless")
    assert result.exit_code == ExitCode.USAGE
    assert "needs --transport sqs" in " ".join(result.stderr.split())
    assert not home.exists(), "something was started"


def test_status_without_a_stack_or_ledger_says_so_on_stderr_and_exits_unreachable(
    home: Path,
) -> None:
    for output in ("table", "json"):
        result = invoke(home, "status", "--output", output)
        assert result.exit_code == ExitCode.UNREACHABLE
        assert result.stdout == ""
        said = " ".join(result.stderr.split())
        assert f"no local stack is running from {home}" in said
        assert "courierflow up" in said
    assert not (home / "ledger.db").exists(), "status created a ledger"


def test_watch_with_json_is_a_usage_error(home: Path) -> None:
    result = invoke(home, "status", "--watch", "--output", "json")
    assert result.exit_code == ExitCode.USAGE
    assert "--watch" in result.stderr


def test_status_reads_the_last_runs_ledger_as_one_json_document(home: Path) -> None:
    ledger = open_ledger(f"sqlite:///{home / 'ledger.db'}")
    ledger.add_queued(["A-1", "A-2", "A-3"], "s3://bucket/orders.csv", time.time())
    ledger.mark_failed("A-2", "injected failure (after 3 attempts)", time.time())
    ledger.close()

    result = invoke(home, "status", "--output", "json")
    assert result.exit_code == ExitCode.OK, result.stderr
    document = json.loads(result.stdout)
    assert document["counts"]["queued"] == 2 and document["counts"]["failed"] == 1
    assert document["failures"] == [
        {"order_id": "A-2", "reason": "injected failure (after 3 attempts)"}
    ]

    table = invoke(home, "status")
    assert table.exit_code == ExitCode.OK
    assert "orders by state" in table.stdout and "failed A-2" in table.stdout
    assert table.stderr == ""


def test_a_bad_environment_variable_is_named_with_what_it_accepts(
    home: Path, tmp_path: Path
) -> None:
    result = invoke(home, "status", COURIERFLOW_TIME_SCALE="fast")
    assert result.exit_code == ExitCode.USAGE
    said = " ".join(result.stderr.split())
    assert "COURIERFLOW_TIME_SCALE='fast' is not a number" in said
    assert "accepts a decimal" in said

    orders = tmp_path / "orders.csv"
    orders.write_text("order_id\nA-1\n")
    result = invoke(home, "run", str(orders), COURIERFLOW_FAIL_RATE="2")
    assert result.exit_code == ExitCode.USAGE
    said = " ".join(result.stderr.split())
    assert "(env var: 'COURIERFLOW_FAIL_RATE')" in said and "less than or equal to 1" in said


def test_help_names_the_environment_variables_and_the_choices(home: Path) -> None:
    run_help = invoke(home, "run", "--help").stdout
    for variable in (
        "COURIERFLOW_TIME_SCALE",
        "COURIERFLOW_FAIL_RATE",
        "COURIERFLOW_DUPLICATE_RATE",
    ):
        assert variable in run_help
    assert "rabbitmq|sqs" in run_help and "manager|serverless" in run_help
    assert "table|json" in run_help
    deploy_help = invoke(home, "deploy", "--help").stdout
    assert "nat-instance|endpoints" in deploy_help
    for command in (["deploy"], ["destroy"], ["aws", "check"], ["aws", "smoke"], ["submit"]):
        text = invoke(home, *command, "--help").stdout
        assert "AWS_REGION, AWS_DEFAULT_REGION" in text, command
        assert "AWS_PROFILE" in text, command


# --- the AWS commands: region and profile as boto3 resolves them --------------------------


def test_aws_check_json_is_one_document_in_the_region_from_the_environment(home: Path) -> None:
    with mock_aws():
        result = invoke(home, "aws", "check", "--output", "json", AWS_REGION="eu-west-1")
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert report["region"] == "eu-west-1"
    assert report["account"] and "roles" in report


def test_aws_check_takes_the_profiles_region_when_no_region_is_set(
    home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text(  # an explicit profile takes its credentials from the profile
        "[profile lab]\nregion = us-west-2\naws_access_key_id = testing\n"
        "aws_secret_access_key = testing\n"
    )
    env: dict[str, str | None] = {
        "AWS_CONFIG_FILE": str(config),
        "AWS_REGION": None,
        "AWS_DEFAULT_REGION": None,
    }
    with mock_aws():
        result = invoke(home, "aws", "check", "--profile", "lab", "--output", "json", **env)
        assert result.exit_code == ExitCode.OK, result.output
        assert json.loads(result.stdout)["region"] == "us-west-2"
        assert boto3.DEFAULT_SESSION is not None
        assert boto3.DEFAULT_SESSION.profile_name == "lab"
        fallback = invoke(home, "aws", "check", "--output", "json", **env)
        assert json.loads(fallback.stdout)["region"] == "us-east-1"


def test_an_unknown_profile_is_a_usage_error(home: Path, tmp_path: Path) -> None:
    result = invoke(
        home, "aws", "check", "--profile", "nope", AWS_CONFIG_FILE=str(tmp_path / "none")
    )
    assert result.exit_code == ExitCode.USAGE
    assert "nope" in result.stderr and "AWS_PROFILE" in result.stderr


def test_an_aws_endpoint_that_does_not_answer_exits_unreachable(home: Path) -> None:
    result = invoke(
        home,
        "aws",
        "check",
        "--output",
        "json",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        AWS_MAX_ATTEMPTS="1",
    )
    assert result.exit_code == ExitCode.UNREACHABLE
    assert result.stdout == ""
    assert "Could not connect to the endpoint URL" in result.stderr


def test_an_interrupted_command_exits_130(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(_home: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stack, "load", interrupted)
    assert invoke(home, "status").exit_code == ExitCode.INTERRUPTED
