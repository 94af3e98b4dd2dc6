"""The inside of an execution environment, and the zygote that forks them.

Run as ``python -m courierflow.local.lambda_service.runtime SOCKET CONFIG_JSON`` by the
service, once per function, or, for an isolated function, from a private copy under the
function's own interpreter (``isolated.py``): so this module and the two it imports use
the standard library only, and import each other relatively.

The zygote imports the handler module once (the cold start AWS calls "init"), freezes the
heap, and forks an environment each time it reads a line on stdin; forked environments
share the imported module's memory until they write to it, which is what lets hundreds of
them fit. Each environment connects to the service's socket, serves one invocation at a
time and keeps module state between them (warm). A module that opens network connections
while imported cannot be shared that way: the zygote then pre-imports only its libraries
and each environment imports the module.

Everything the handler writes to stdout/stderr (fd 1 and 2, so ``logging`` and C code
too) goes to a private temporary file, which is read back after each invocation; the
handler's output costs disk, not memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.util
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from .logformat import log_block
from .preload import import_path, open_sockets, preload_imports
from .protocol import encode, recv_frame

#: handler output kept per invocation for the log (the rest is cut, with a note)
MAX_LOG_BYTES = 256 * 1024
#: extra address space for data beyond the function's memory size before MemoryError
#: (headroom for the interpreter's own arenas; the REPORT check is the real limit)
MEMORY_SLACK_MB = 64
#: Linux prctl option: a signal sent to us when our parent dies
_PR_SET_PDEATHSIG = 1
#: the root logger's format inside Lambda's Python runtime
LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"

Handler = Callable[[Any, Any], Any]


class LambdaContext:
    """The context object Lambda passes to a Python handler."""

    def __init__(self, config: dict[str, Any], request_id: str, deadline: float, arn: str) -> None:
        self.aws_request_id = request_id
        self.function_name = config["name"]
        self.function_version = "$LATEST"
        self.invoked_function_arn = arn
        self.memory_limit_in_mb = str(config["memory"])
        self.log_group_name = f"/aws/lambda/{config['name']}"
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def error_document(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    """Lambda's error shape for an exception raised by a handler (our frame left out)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "requestId": "",
        "stackTrace": traceback.format_list(frames[1:] if len(frames) > 1 else frames),
    }


def load_handler(spec: str) -> tuple[Handler | None, dict[str, Any] | None]:
    """Import MODULE and find ATTRIBUTE; on failure return Lambda's init error instead."""
    module_name, _, attribute = spec.partition(":") if ":" in spec else spec.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:
        return None, {
            "errorMessage": f"Runtime exited with error: exit status {exc.code} "
            f"(while importing '{module_name}')",
            "errorType": "Runtime.ExitError",
            "requestId": "",
            "stackTrace": [],
        }
    except Exception as exc:
        return None, {
            "errorMessage": f"Unable to import module '{module_name}': {exc}",
            "errorType": "Runtime.ImportModuleError",
            "requestId": "",
            "stackTrace": traceback.format_list(traceback.extract_tb(exc.__traceback__)),
        }
    handler = getattr(module, attribute, None)
    if not callable(handler):
        return None, {
            "errorMessage": f"Handler '{attribute}' missing on module '{module_name}'",
            "errorType": "Runtime.HandlerNotFound",
            "requestId": "",
            "stackTrace": [],
        }
    return handler, None


class _Output:
    """fd 1 and 2 redirected to one in-memory file, read back per invocation.

    An anonymous memfd rather than ``tempfile``: that module (with shutil, bz2, lzma)
    would add about 0.9 MB to the resident size of every environment.
    """

    def __init__(self) -> None:
        self._fd = os.memfd_create("courierflow-output")
        os.dup2(self._fd, 1)
        os.dup2(self._fd, 2)

    def take(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        fd = self._fd
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, min(size, MAX_LOG_BYTES))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        text = data.decode("utf-8", "replace")
        if size > MAX_LOG_BYTES:
            text += f"\n[courierflow: {size - MAX_LOG_BYTES} more bytes of output not kept]\n"
        return text


def serve_invocations(
    sock_path: str,
    config: dict[str, Any],
    handler: Handler | None,
    init_error: dict[str, Any] | None,
    forked_at: float,
) -> None:
    """The environment's loop: one invocation at a time until the service hangs up.

    The environment appends each invocation's log block to the function's log itself
    (one O_APPEND write), so the log survives even if the service dies."""
    die_with_parent()
    limit_data_memory(int(config["memory"]))
    os.environ["AWS_LAMBDA_LOG_STREAM_NAME"] = (
        time.strftime("%Y/%m/%d") + f"/[$LATEST]{os.getpid():08x}{os.urandom(8).hex()}"
    )
    output = _Output()
    if handler is None:  # a new environment tries the import again, as Lambda does
        handler, init_error = load_handler(config["handler"])
    log_fd = os.open(config["log_file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    init_ms: float | None = (time.monotonic() - forked_at) * 1000
    sock.sendall(encode({"pid": os.getpid()}))
    while True:
        frame = recv_frame(sock)
        if frame is None:
            os._exit(0)
        request, payload = frame
        _RequestIdFilter.request_id = request["request_id"]
        reply, exit_code = invoke_once(config, handler, init_error, request, payload)
        text = output.take() + reply.pop("log_extra", "")
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if reply.pop("out_of_memory", False) or (
            exit_code is None and memory > int(config["memory"])
        ):
            reply.update(ok=False, body=json.dumps(_out_of_memory(request["request_id"])))
            exit_code = 137
        if handler is None:  # init failed: this environment is done, the next one retries
            exit_code = 1
        block = log_block(
            request["request_id"],
            text,
            reply.get("duration_ms", 0.0),
            int(config["memory"]),
            memory,
            init_ms,
        )
        init_ms = None
        os.write(log_fd, block.encode("utf-8", "replace"))
        reply["log"] = block if request.get("tail") else ""
        reply["exit"] = exit_code is not None
        body = reply.pop("body").encode()
        sock.sendall(encode(reply, body))
        if exit_code is not None:
            os._exit(exit_code)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies: no orphans, ever."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def limit_data_memory(memory_mb: int) -> None:
    """Cap this environment's private data so a runaway handler gets MemoryError
    (reported as Runtime.OutOfMemory) instead of eating the machine's RAM."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            data_kb = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        return
    limit = (data_kb * 1024) + (memory_mb + MEMORY_SLACK_MB) * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def lift_data_limit() -> None:
    """After a MemoryError: room again to write the report before the environment ends."""
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))


class _RequestIdFilter(logging.Filter):
    """Puts the current invocation's request id on every log record (Lambda's format)."""

    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def install_lambda_logging() -> None:
    """Give the root logger the handler Lambda's runtime installs before the import,
    so `logging.getLogger().info(...)` lines land in the invocation's log."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(LOG_FORMAT, "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    logging.getLogger().addHandler(handler)


def _out_of_memory(request_id: str) -> dict[str, Any]:
    return {
        "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: signal: killed",
        "errorType": "Runtime.OutOfMemory",
    }


def invoke_once(
    config: dict[str, Any],
    handler: Handler | None,
    init_error: dict[str, Any] | None,
    request: dict[str, Any],
    payload: bytes,
) -> tuple[dict[str, Any], int | None]:
    """Run the handler on ``payload`` (the event as JSON, which the service checked);
    returns the reply (``body``: the response as JSON text) and an exit code if the
    environment must end (the handler called sys.exit)."""
    request_id = request["request_id"]
    if handler is None:
        doc = dict(init_error or {}, requestId=request_id)
        return {"ok": False, "body": json.dumps(doc), "log_extra": _error_log(doc)}, None
    context = LambdaContext(config, request_id, request["deadline"], request["arn"])
    started = time.perf_counter()
    exit_code: int | None = None
    try:
        event = json.loads(payload.decode("utf-8")) if payload else {}
        result = handler(event, context)
        try:
            body, ok = json.dumps(result), True
        except (TypeError, ValueError) as exc:
            doc = error_document(exc, "Runtime.MarshalError")
            body, ok = json.dumps(dict(doc, requestId=request_id)), False
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        exit_code = code
        doc = {
            "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: "
            f"exit status {code}",
            "errorType": "Runtime.ExitError",
        }
        body, ok = json.dumps(doc), False
    except MemoryError:
        lift_data_limit()
        duration_ms = (time.perf_counter() - started) * 1000
        return {"ok": False, "body": "{}", "duration_ms": duration_ms, "out_of_memory": True}, 137
    except Exception as exc:
        doc = dict(error_document(exc), requestId=request_id)
        body, ok = json.dumps(doc), False
    duration_ms = (time.perf_counter() - started) * 1000
    reply: dict[str, Any] = {"ok": ok, "body": body, "duration_ms": duration_ms}
    if not ok:
        reply["log_extra"] = _error_log(json.loads(body))
    return reply, exit_code


def _error_log(doc: dict[str, Any]) -> str:
    trace = "".join(doc.get("stackTrace") or [])
    return f"[ERROR] {doc.get('errorType')}: {doc.get('errorMessage')}\n{trace}"


def reexec_importing_per_environment(sock_path: str, config: dict[str, Any]) -> None:
    """The handler module connected to something while imported (a module-level
    ``pika.BlockingConnection``, say). Forked environments would share that one socket,
    so start this zygote again in the mode where every environment imports the module
    itself and opens its own connections, as each Lambda environment does."""
    print(
        f"[courierflow] {config['handler']} opened network connections at import: each "
        "environment imports it on its own (its own connections, a slower cold start)",
        file=sys.stderr,
        flush=True,
    )
    config = dict(config, preload="imports")
    argv = config.get("launcher") or [sys.executable, "-m", __spec__.name if __spec__ else __name__]
    os.execv(argv[0], [*argv, sock_path, json.dumps(config)])


def main() -> None:
    """The zygote: import once, then fork an environment per line read on stdin."""
    sock_path, config = sys.argv[1], json.loads(sys.argv[2])
    die_with_parent()
    # environments keep the service's CPU priority: lowered, they would hold the
    # ledger's write lock while waiting for the CPU, and every other courier with them
    install_lambda_logging()
    sys.path[:0] = import_path(config)
    started = time.perf_counter()
    if config.get("preload") == "imports":
        # Each environment runs the module's own code after the fork (its init), as on
        # AWS; the zygote only holds the libraries it imports, so forking stays cheap.
        handler, init_error = None, None
        preload_imports(config["handler"])
    else:
        sockets_before = open_sockets()
        handler, init_error = load_handler(config["handler"])
        if open_sockets() - sockets_before:
            reexec_importing_per_environment(sock_path, config)
    init_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"zygote": os.getpid(), "init_ms": init_ms}), flush=True)
    gc.freeze()  # keep the imported heap shared: the collector won't touch it in children
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        forked_at = time.monotonic()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sys.stdin.close()
            try:
                serve_invocations(sock_path, config, handler, init_error, forked_at)
            finally:
                os._exit(1)
    # stdin closed: the service is gone; environments notice their socket closing.


if __name__ == "__main__":
    main()
