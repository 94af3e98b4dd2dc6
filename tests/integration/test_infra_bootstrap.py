"""The EC2 bootstrap, run for real against a private RabbitMQ node.

bootstrap.sh starts the node itself (``--no-systemd``: ``rabbitmq-server -detached``) with
its own name, port, data folder, config file and Erlang cookie, all under tmp_path, so the
machine's own broker (if any) is never touched. The courierflow venv part is skipped
(``--skip-install``): test_instance_rehearsal.py runs it for real, from the template's
user data, with the real wheel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from courierflow.aws import artifacts
from courierflow.local.processes import (
    RABBITMQ_SERVER,
    ManagedProcess,
    free_port,
    port_open,
    spawn,
    stop_pid,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(RABBITMQ_SERVER).exists(), reason="rabbitmq-server not installed"),
]
ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = artifacts.BOOTSTRAP
UNIT = artifacts.BOOTSTRAP.parent / "courierflow-manager.service"
RABBITMQ_BIN = Path(RABBITMQ_SERVER).parent


class PrivateNode:
    """The environment of one private node and the epmd it registers with."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.management_port = free_port()
        self.name = f"cfboot{self.port}@localhost"
        self.epmd_port = free_port()
        self.pid_file = base / "rabbitmq.pid"
        self.config = base / "etc" / "rabbitmq"
        plugins = base / "enabled_plugins"
        base.mkdir(parents=True, exist_ok=True)
        plugins.write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie lives here
            "RABBITMQ_BIN": str(RABBITMQ_BIN),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MANAGEMENT_PORT": str(self.management_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONFIG_FILE": str(self.config),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "STARTUP_TIMEOUT_S": "60",
        }

    def url(self, user: str, password: str, vhost: str = "courierflow") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    def stop(self) -> None:
        """Stop the node by name, then make sure its PID is gone."""
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, "stop", str(self.pid_file)],
            env=self.env, capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if self.pid_file.exists():
            pid = int(self.pid_file.read_text().strip() or 0)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[PrivateNode]:
    private = PrivateNode(tmp_path / "node")
    epmd: ManagedProcess = spawn(
        "epmd",
        ["epmd", "-port", str(private.epmd_port), "-address", "127.0.0.1"],
        tmp_path / "node" / "log" / "epmd.log",
        private.env,
        port=private.epmd_port,
    )
    try:
        epmd.wait_for_port(10)
        yield private
    finally:
        private.stop()
        stop_pid(epmd.pid, grace=5)


def run_bootstrap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(BOOTSTRAP), *args], env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.timeout(150)
def test_bootstrap_starts_rabbitmq_with_generated_credentials_and_no_guest(
    node: PrivateNode,
) -> None:
    # a leading "-", as deploy's secrets.token_urlsafe once gave 1 time in 64: rabbitmqctl
    # took it for options and the instance's boot failed
    password = f"-gen-{os.getpid()}-{node.port}"
    url = node.url("courierflow", password)
    env = {**node.env, "AMQP_URL": url}

    first = run_bootstrap(env, "--no-systemd", "--skip-install")
    assert "guest removed" in first.stdout
    pika.BlockingConnection(pika.URLParameters(url)).close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(node.url("guest", "guest", "%2F")))
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(pika.URLParameters(node.url("courierflow", "wrong")))

    conf = Path(f"{node.config}.conf").read_text()
    assert "management.tcp.ip = 127.0.0.1" in conf
    assert port_open(node.management_port, "127.0.0.1")

    # idempotent: a second run leaves the node, user and configuration as they were
    second = run_bootstrap(env, "--no-systemd", "--skip-install")
    assert "configuration changed" not in second.stdout
    assert Path(f"{node.config}.conf").read_text() == conf
    assert conf.count("management.tcp.ip") == 1
    pika.BlockingConnection(pika.URLParameters(url)).close()


def test_bootstrap_refuses_a_url_without_credentials(tmp_path: Path) -> None:
    env = {**os.environ, "AMQP_URL": "amqp://broker:5672/courierflow",
           "RABBITMQ_BIN": str(tmp_path), "RABBITMQ_CONFIG_FILE": str(tmp_path / "r")}  # fmt: skip
    result = subprocess.run(
        ["bash", str(BOOTSTRAP), "--no-systemd", "--skip-install"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "user:password" in result.stderr


def test_bootstrap_rejects_unknown_arguments() -> None:
    result = subprocess.run(
        ["bash", str(BOOTSTRAP), "--frobnicate"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown argument --frobnicate" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.timeout(60)
def test_manager_unit_file_verifies(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=50
    )
    # the unit's own lines must be clean; a missing /opt/courierflow binary is expected here
    problems = [
        line for line in result.stderr.splitlines()
        if UNIT.name in line and "Command /opt/courierflow/bin/courierflow" not in line
        and "is not executable" not in line
    ]  # fmt: skip
    assert not problems, result.stderr
