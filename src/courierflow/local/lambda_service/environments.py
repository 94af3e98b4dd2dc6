"""Execution environments, service side: a pool per function, forked by its zygote.

Environments are made on demand up to the function's concurrency, reused warm, replaced
when they die or time out, and reaped when idle. A caller that finds the pool full
either gets nothing (a synchronous invoke: 429) or waits its turn (asynchronous events).

The zygote runs in the service's own interpreter and environment, or, for a function with
``runtime_python``, isolated under that interpreter (see ``isolated.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from courierflow.config import resolve_region
from courierflow.errors import ConfigError
from courierflow.local.lambda_service import isolated
from courierflow.local.lambda_service.config import FunctionConfig
from courierflow.local.lambda_service.protocol import Frame, encode, read_frame

log = logging.getLogger(__name__)

_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
#: seconds a new environment may take to fork and connect
SPAWN_TIMEOUT_S = 30.0
#: environments started at once: a burst scales out in parallel, but hundreds of forks
#: at once starve the rest of a small machine (measured in docs/performance.md)
PARALLEL_STARTS = 32
#: wait for the socket to drain only past this much unsent data (big payloads)
DRAIN_ABOVE_BYTES = 256 * 1024
#: asyncio.timeout (3.11+), or None
_timeout = getattr(asyncio, "timeout", None)
#: seconds between looks for idle environments to reap
REAP_EVERY_S = 5.0


class EnvironmentDied(Exception):
    """The environment's process ended while serving an invocation."""


class Environment:
    """One forked process serving one invocation at a time."""

    def __init__(self, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.pid = pid
        self.reader = reader
        self.writer = writer
        self.created = time.monotonic()
        self.last_used = self.created
        self.invocations = 0

    async def invoke(self, request: dict[str, Any], payload: bytes, timeout: float) -> Frame:
        """Send one invocation (``payload`` as it came) and wait for its reply and the
        handler's response.

        Raises:
            asyncio.TimeoutError: past ``timeout``; the caller must kill the environment.
            EnvironmentDied: the process ended (exit, signal, crash).
        """
        self.invocations += 1
        try:
            self.writer.write(encode(request, payload))
            if self.writer.transport.get_write_buffer_size() > DRAIN_ABOVE_BYTES:
                await self.writer.drain()
            if _timeout is None:  # Python 3.10
                return await asyncio.wait_for(read_frame(self.reader), timeout)
            async with _timeout(timeout):  # cheaper than wait_for: no extra task
                return await read_frame(self.reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EnvironmentDied(str(exc)) from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.writer.close()


class EnvironmentPool:
    """The environments of one function and the zygote that forks them."""

    def __init__(
        self,
        config: FunctionConfig,
        socket_dir: Path,
        log_dir: Path,
        code_dirs: list[str],
        runtime_root: Path | None = None,
    ) -> None:
        """``code_dirs``: the service's ``--code-dir`` folders (not used by an isolated
        function); ``runtime_root``: the private copy of the runtime, needed by one."""
        self.config = config
        self.socket_path = str(socket_dir / f"{config.name}.sock")
        self.log_path = log_dir / f"{config.name}.runtime.log"
        #: the function's CloudWatch-shaped log, appended to by the environments
        self.function_log = log_dir / f"{config.name}.log"
        self.code_dirs = [] if config.isolated else code_dirs
        self.runtime_root = runtime_root
        self.code_dir, self.layers = isolated.resolve_folders(
            config.name, config.code_dir, config.layers
        )
        #: the argv that starts the zygote (the socket and configuration follow it)
        self.launcher = [sys.executable, "-m", "courierflow.local.lambda_service.runtime"]
        self.python_version = _PYTHON
        self.idle: deque[Environment] = deque()
        self.busy: set[Environment] = set()
        self.total = 0  # busy + idle + being spawned
        self._spawning: deque[asyncio.Future[Environment]] = deque()
        self._waiters: deque[asyncio.Future[Environment | None]] = deque()
        self._zygote: asyncio.subprocess.Process | None = None
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._starts = asyncio.Semaphore(PARALLEL_STARTS)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self.config.isolated:
            await self._prepare_isolated()
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.socket_path)
        await self._start_zygote()
        await self._provision()
        self._reaper = asyncio.create_task(self._reap_idle())

    async def _provision(self) -> None:
        """Start the provisioned environments (in parallel, ``PARALLEL_STARTS`` at a time)
        and leave them idle; a failure is logged and leaves the function on demand."""
        wanted = min(self.config.provisioned_concurrency, self.config.concurrency)
        slots = [self.reserve() for _ in range(wanted)]
        started = await asyncio.gather(
            *(self.start_reserved() for _ in range(sum(slots))), return_exceptions=True
        )
        for env in started:
            if isinstance(env, Environment):
                self.release(env, healthy=True)
        failed = [e for e in started if not isinstance(e, Environment)]
        if failed:
            log.warning(
                "%d of %d provisioned environments of %s did not start: %s",
                len(failed),
                wanted,
                self.config.name,
                failed[0],
            )

    async def _prepare_isolated(self) -> None:
        """Check the function's interpreter and start it as its zygote from now on.

        Raises:
            ConfigError: no private runtime copy was given, or the interpreter does not run.
        """
        if self.runtime_root is None:
            raise ConfigError(f"{self.config.name}: runtime_python needs the runtime's copy")
        python = isolated.resolve_interpreter(self.config.runtime_python)
        self.python_version = await isolated.interpreter_version(python)
        self.launcher = isolated.launcher(python, self.runtime_root)

    async def _start_zygote(self) -> None:
        spec = {
            **asdict(self.config),
            "code_dir": self.code_dir,
            "layers": self.layers,
            "code_dirs": self.code_dirs,
            "log_file": str(self.function_log),
            "launcher": self.launcher,
        }
        if self.config.isolated:  # only what Lambda sets, plus where AWS is
            env = {**isolated.passed_environment(os.environ), **self.lambda_environment()}
        else:
            env = {**os.environ, **self.lambda_environment()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._zygote = await asyncio.create_subprocess_exec(
                *self.launcher,
                self.socket_path,
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=out,
                env=env,
                cwd=(self.code_dir or None) if self.config.isolated else None,
            )

    def lambda_environment(self) -> dict[str, str]:
        """The variables Lambda sets, then the function's own."""
        c = self.config
        base = {
            "AWS_LAMBDA_FUNCTION_NAME": c.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(c.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(c.timeout)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{c.name}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{self.python_version}",
            "AWS_REGION": _region(),
            "AWS_DEFAULT_REGION": _region(),
            "LAMBDA_TASK_ROOT": self.code_dir or (self.code_dirs or [os.getcwd()])[0],
            "LAMBDA_RUNTIME_DIR": str(self.runtime_root) if c.isolated else sys.prefix,
            "_HANDLER": c.handler,
            "TZ": ":UTC",
        }
        return {**base, **c.env}

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for waiting in self._spawning:
            waiting.cancel()
        for env in [*self.idle, *self.busy]:
            env.kill()
        self.idle.clear()
        self.busy.clear()
        if self._zygote and self._zygote.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._zygote.kill()
            await self._zygote.wait()
        if self._server:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    # --- getting and giving back environments ------------------------------------------

    async def acquire(self, wait: bool) -> Environment | None:
        """An environment for one invocation, or None when full and ``wait`` is False."""
        while True:
            env = self.take_idle()
            if env is not None:
                return env
            if self.reserve():
                return await self.start_reserved()
            if not wait:
                return None
            waiter: asyncio.Future[Environment | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            handed = await waiter
            if handed is not None:
                self.busy.add(handed)
                return handed

    def take_idle(self) -> Environment | None:
        """The warmest idle environment, now busy; None when none is idle."""
        if not self.idle:
            return None
        env = self.idle.pop()  # most recently used: warmest
        self.busy.add(env)
        return env

    def reserve(self) -> bool:
        """Take a slot for a new environment, if the function's concurrency allows one.

        A reserved slot must be followed by ``start_reserved``, which fills or frees it.
        """
        if self.total >= self.config.concurrency:
            return False
        self.total += 1
        return True

    async def start_reserved(self) -> Environment:
        """Start the environment of a reserved slot; the slot is freed if it cannot start.

        Several may be under way at once: the zygote forks them one after another and
        each connects on its own, so a burst of work scales out in parallel.
        """
        try:
            async with self._starts:
                env = await self._spawn()
        except BaseException:
            self.total -= 1
            self._wake_one(None)
            raise
        self.busy.add(env)
        return env

    def release(self, env: Environment, healthy: bool) -> None:
        """Give an environment back; an unhealthy one is killed and its slot freed."""
        self.busy.discard(env)
        if not healthy:
            env.kill()
            self.total -= 1
            self._wake_one(None)
            return
        env.last_used = time.monotonic()
        if not self._wake_one(env):
            self.idle.append(env)

    def _wake_one(self, env: Environment | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(env)
                return True
        return False

    async def _spawn(self) -> Environment:
        """Ask the zygote for a new environment and wait for it to connect.

        Raises:
            EnvironmentDied: the zygote ended (the module exits while imported) or the
                environment did not connect within ``SPAWN_TIMEOUT_S``.
        """
        if self._zygote is None or self._zygote.returncode is not None:
            if self._zygote is not None:
                log.warning("zygote of %s is gone; starting it again", self.config.name)
            await self._start_zygote()
        zygote = self._zygote
        assert zygote is not None and zygote.stdin is not None
        future: asyncio.Future[Environment] = asyncio.get_running_loop().create_future()
        self._spawning.append(future)
        connected = False
        try:
            zygote.stdin.write(b"fork\n")
            await zygote.stdin.drain()
            ended: asyncio.Future[Any] = asyncio.ensure_future(zygote.wait())
            try:
                waiting: set[asyncio.Future[Any]] = {future, ended}
                await asyncio.wait(
                    waiting, timeout=SPAWN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                ended.cancel()
            connected = future.done() and not future.cancelled()
        except (ConnectionError, RuntimeError) as exc:  # stdin pipe of a dead zygote
            log.warning("could not reach the zygote of %s: %s", self.config.name, exc)
        if connected:
            return future.result()
        with contextlib.suppress(ValueError):
            self._spawning.remove(future)
        future.cancel()
        code = zygote.returncode
        reason = (
            f"exit status {code} while importing the handler module"
            if code is not None
            else f"no environment within {SPAWN_TIMEOUT_S:.0f} s"
        )
        raise EnvironmentDied(reason)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello, _ = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()  # an environment that died before saying hello
            return
        env = Environment(int(hello["pid"]), reader, writer)
        while self._spawning:
            future = self._spawning.popleft()
            if not future.done():
                future.set_result(env)
                return
        env.kill()  # nobody is waiting for it any more

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(REAP_EVERY_S, max(0.1, self.config.idle_timeout / 2)))
            limit = time.monotonic() - self.config.idle_timeout
            for env in [e for e in self.idle if e.last_used < limit]:
                if self.total <= self.config.provisioned_concurrency:
                    break  # provisioned environments stay warm
                self.idle.remove(env)
                env.kill()
                self.total -= 1

    def stats(self) -> dict[str, int]:
        return {"busy": len(self.busy), "idle": len(self.idle), "total": self.total}


@functools.cache
def _region() -> str:
    """The service's region (as the SDKs resolve it), which its functions run in."""
    return resolve_region()
