"""Start and stop the real local stand-ins (RabbitMQ, moto's server) as child processes.

Everything binds to 127.0.0.1 and runs in its own process group, so stopping by PID
takes its children along and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from courierflow.errors import StackError

log = logging.getLogger(__name__)

#: where Debian's rabbitmq-server package puts its start script
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: seconds a fresh RabbitMQ node may take to open its port (about 12 s on 2 cores)
RABBITMQ_START_TIMEOUT = 90.0
#: seconds a process gets between SIGTERM and SIGKILL
STOP_GRACE_S = 15.0


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the ephemeral range.

    A port from ``bind(0)`` is an ephemeral one: once released, any outgoing
    connection may take it as its local port, and a server restarted on it later
    (a broker restart in a fault test) then fails with "address in use". Ports
    below the ephemeral range are only ever handed out by explicit binds.
    """
    low, _ = ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low)) if low > 2048 else []
    for port in random.sample(candidates, min(64, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not port_open(port):
            return port
    with socket.socket() as sock:  # an odd kernel range: take what bind(0) gives
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_port(self, timeout: float) -> None:
        """Block until the port answers; raise StackError with the log's tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                code = self.popen.returncode
                raise StackError(f"{self.name} exited early ({code}).{self.tail()}")
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise StackError(
            f"{self.name} did not open port {self.port} in {timeout:.0f} s.{self.tail()}"
        )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\nlast lines of {self.log_path}:\n" + "\n".join(text)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> None:
        """Stop the process group: ``sig`` first, SIGKILL after ``grace`` seconds."""
        stop_pid(self.pid, sig, grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)


def stop_pid(pid: int, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> None:
    """Signal the process group led by ``pid`` and wait for the leader to go."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (reaping it when it is our own finished child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """True when ``pid`` has exited and only waits for its parent to reap it. A stack's
    processes outlive `up`, so their parent is the machine's init, which may reap late
    (this VM's, every ~2 s: each `down` waited that long per process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[:1] == [b"Z"]
    except OSError:
        return False


def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    port: int = 0,
    cwd: str | Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` in a new session with stdout and stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    log.info("started %s (pid %d)", name, popen.pid)
    return ManagedProcess(name=name, popen=popen, log_path=log_path, port=port)


def start_moto_server(state_dir: Path, port: int = 0) -> ManagedProcess:
    """moto's standalone server (S3, SQS, ...) on 127.0.0.1."""
    port = port or free_port()
    # moto's server with the gaps courierflow relies on bridged (courierflow.local.moto_gaps)
    argv = [sys.executable, "-m", "courierflow.local.moto_gaps", "-H", "127.0.0.1", "-p", str(port)]
    proc = spawn("moto", argv, state_dir / "logs" / "moto.log", port=port)
    proc.wait_for_port(30)
    return proc


def rabbitmq_available() -> bool:
    return Path(RABBITMQ_SERVER).exists() or shutil.which("rabbitmq-server") is not None


def rabbitmq_env(
    data_dir: Path, port: int, epmd_port: int, console_port: int = 0
) -> dict[str, str]:
    """Environment for a private RabbitMQ node: its own name, ports and folders; with
    ``console_port``, the management console on 127.0.0.1 at that port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    plugins = data_dir / "enabled_plugins"
    if not plugins.exists():
        plugins.write_text("[rabbitmq_management].\n" if console_port else "[].\n")
    conf = data_dir / "rabbitmq.conf"
    if not conf.exists():
        lines = ["loopback_users.guest = true"]
        if console_port:  # the lab's "check the RabbitMQ console" step, never off-machine
            lines += ["management.tcp.ip = 127.0.0.1", f"management.tcp.port = {console_port}"]
        conf.write_text("\n".join(lines) + "\n")
    env = dict(os.environ)
    env.update(
        HOME=str(data_dir),  # the Erlang cookie lives here
        RABBITMQ_NODENAME=f"courierflow{port}@localhost",
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(free_port()),  # inter-node port: nobody connects to it
        RABBITMQ_MNESIA_BASE=str(data_dir / "mnesia"),
        RABBITMQ_LOG_BASE=str(data_dir / "log"),
        RABBITMQ_PID_FILE=str(data_dir / "rabbitmq.pid"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
        RABBITMQ_CONFIG_FILE=str(data_dir / "rabbitmq"),
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        ERL_EPMD_ADDRESS="127.0.0.1",
        ERL_CRASH_DUMP=str(data_dir / "erl_crash.dump"),
        ERL_EPMD_PORT=str(epmd_port),
    )
    return env


@dataclass
class RabbitNode:
    """A private RabbitMQ node and the epmd it registers with, both ours to stop."""

    broker: ManagedProcess
    epmd: ManagedProcess
    data_dir: Path
    #: the management console's port on 127.0.0.1 (0: not enabled)
    console_port: int = 0

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}/" if self.console_port else ""

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.broker.port}/%2F"

    def stop(self) -> None:
        self.broker.stop()
        self.epmd.stop()

    def restart(self) -> None:
        """Stop the broker (not epmd) and start it again on the same port and data."""
        self.broker.stop()
        for attempt in range(3):  # each try picks a fresh inter-node port
            env = rabbitmq_env(self.data_dir, self.broker.port, self.epmd.port)
            self.broker = spawn(
                "rabbitmq", [RABBITMQ_SERVER], self.broker.log_path, env, port=self.broker.port
            )
            try:
                self.broker.wait_for_port(RABBITMQ_START_TIMEOUT)
                return
            except StackError:
                self.broker.stop()
                if attempt == 2:
                    raise
                log.warning("RabbitMQ did not come back; trying again%s", self.broker.tail(3))


def start_rabbitmq(data_dir: Path, port: int = 0, console: bool = False) -> RabbitNode:
    """Start a private RabbitMQ node from Debian's ``rabbitmq-server`` package (with its
    management console on a free 127.0.0.1 port when ``console``)."""
    if not rabbitmq_available():
        raise StackError(
            "rabbitmq-server is not installed: run `sudo apt-get install rabbitmq-server` "
            "(or `make install`), or point COURIERFLOW_AMQP_URL at a running broker"
        )
    port = port or free_port()
    epmd_port = free_port()
    console_port = free_port() if console else 0
    env = rabbitmq_env(data_dir, port, epmd_port, console_port)
    epmd = spawn(
        "epmd",
        ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
        data_dir / "log" / "epmd.log",
        env,
        port=epmd_port,
    )
    epmd.wait_for_port(10)
    broker = spawn("rabbitmq", [RABBITMQ_SERVER], data_dir / "log" / "server.log", env, port=port)
    node = RabbitNode(broker=broker, epmd=epmd, data_dir=data_dir, console_port=console_port)
    try:
        broker.wait_for_port(RABBITMQ_START_TIMEOUT)
    except StackError:
        node.stop()
        raise
    return node
