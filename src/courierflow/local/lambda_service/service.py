"""Run the local Lambda service: functions, their pools, pollers and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from courierflow.local.lambda_service.api import SYNC_PAYLOAD_LIMIT, LambdaApi, aws_errors
from courierflow.local.lambda_service.config import AccountLimits, FunctionConfig
from courierflow.local.lambda_service.environments import EnvironmentPool
from courierflow.local.lambda_service.event_source import SqsPoller
from courierflow.local.lambda_service.invocations import Function
from courierflow.local.lambda_service.isolated import install_runtime
from courierflow.local.lambda_service.limits import AccountConcurrency, TokenBucket

log = logging.getLogger(__name__)

#: collector thresholds while serving: fewer, cheaper young-generation passes
GC_THRESHOLDS = (20_000, 20, 100)


async def serve(
    functions: dict[str, FunctionConfig],
    host: str,
    port: int,
    state_dir: Path,
    code_dirs: list[str],
    latency_ms: float = 0.0,
    account: AccountLimits | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop every environment and zygote.

    ``account``: the account-level limits every function shares (none by default)."""
    account = account or AccountLimits()
    executions = AccountConcurrency(account.concurrency)
    async_rate = (
        TokenBucket(account.async_invoke_rate, account.burst) if account.async_invoke_rate else None
    )
    if account.concurrency or account.async_invoke_rate:
        log.info(
            "account limits: %s executions at once, %s Event invokes/s (burst %d)",
            account.concurrency or "unlimited",
            account.async_invoke_rate or "unlimited",
            account.burst,
        )
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    socket_dir = Path(tempfile.mkdtemp(prefix="cf-lambda-"))  # short path: AF_UNIX limit
    # Pollers and destinations block in boto3 calls on executor threads: room for all.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=128, thread_name_prefix="lambda-io")
    )
    running: dict[str, Function] = {}
    pollers: list[asyncio.Task[None]] = []
    runner: web.AppRunner | None = None
    try:
        # Isolated functions run a private copy of the runtime, kept with the state.
        any_isolated = any(config.isolated for config in functions.values())
        runtime_root = install_runtime(state_dir / "runtime") if any_isolated else None
        for name, config in functions.items():
            pool = EnvironmentPool(config, socket_dir, log_dir, code_dirs, runtime_root)
            running[name] = Function(config, pool, log_dir, executions)
            await running[name].start()
        for fn in running.values():
            if fn.config.sqs_queue_url:
                poller = SqsPoller(fn, fn.config.sqs_queue_url)
                pollers.append(asyncio.create_task(poller.run()))
        app = web.Application(
            client_max_size=SYNC_PAYLOAD_LIMIT + 1024 * 1024, middlewares=[aws_errors]
        )
        app.add_routes(LambdaApi(running, latency_ms / 1000, executions, async_rate).routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        # Everything made so far (boto3, aiohttp, the tables) lives as long as the
        # service: keep it out of the collector's way, so a full collection is a short
        # pause, not tens of milliseconds on the Event accept path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        print(f"courierflow lambda service listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for task in pollers:
            task.cancel()
        if runner is not None:
            await runner.cleanup()
        for fn in running.values():
            with contextlib.suppress(Exception):
                await fn.close()
        # the environments' sockets are still in it: rmdir alone left one folder a run
        shutil.rmtree(socket_dir, ignore_errors=True)
