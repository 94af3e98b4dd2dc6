"""Running a function as AWS runs it: its own interpreter, its code and its layers only.

The service copies the runtime (``runtime.py`` and the modules it imports, which
import nothing else but the standard library) into a private package under its state
folder, named so that no function's code or layer can clash with it, and starts the
function's zygote as ``RUNTIME_PYTHON -I -c BOOTSTRAP SOCKET CONFIG_JSON``. ``-I`` keeps
PYTHONPATH, the user's site-packages and the current folder off the path; the bootstrap
appends the private folder last (Lambda's /var/runtime) and runs the runtime, which puts
the function's code and layers first. Nothing of the service's venv, not even
courierflow, can be imported unless a layer ships it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from courierflow.errors import ConfigError

#: the private copy's package name: nothing a function ships is called that
RUNTIME_PACKAGE = "_courierflow_lambda_runtime"
#: the modules the runtime is made of (they import each other relatively, nothing else)
RUNTIME_MODULES = ("runtime.py", "logformat.py", "protocol.py", "preload.py")
#: the service's variables an isolated function also gets: where AWS is and who it is
PASSED_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "PATH",
        "LANG",
        "TZ",
    }
)
#: ... and every variable named like these (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_SQS, ...)
PASSED_PREFIXES = ("AWS_ENDPOINT_URL",)
#: seconds the interpreter may take to say which Python it is
PROBE_TIMEOUT_S = 30.0

_SOURCE_DIR = Path(__file__).parent


def install_runtime(root: Path) -> Path:
    """Copy the runtime into ``root/RUNTIME_PACKAGE`` and return ``root`` (the folder
    that goes on the isolated function's path, and its LAMBDA_RUNTIME_DIR).

    Each file is replaced atomically: a service starting beside a running one with the
    same state folder never leaves a half-written module."""
    package = root / RUNTIME_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    sources = {name: (_SOURCE_DIR / name).read_bytes() for name in RUNTIME_MODULES}
    sources["__init__.py"] = b'"""courierflow\'s Lambda runtime, a private copy."""\n'
    for name, data in sources.items():
        partial = package / f".{name}.{os.getpid()}"
        partial.write_bytes(data)
        os.replace(partial, package / name)
    return root


def launcher(python: str, runtime_root: Path) -> list[str]:
    """The argv that starts the runtime's zygote under ``python``, isolated (the socket
    and the configuration follow it)."""
    bootstrap = (
        f"import sys; sys.path.append({str(runtime_root)!r}); "
        f"from {RUNTIME_PACKAGE}.runtime import main; main()"
    )
    return [python, "-I", "-c", bootstrap]


def passed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the service's environment an isolated function sees."""
    return {
        name: value
        for name, value in environ.items()
        if name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES)
    }


def resolve_interpreter(python: str) -> str:
    """``python`` as an absolute path (a bare name is looked up on PATH).

    Symlinks are kept: a venv's ``bin/python`` links to its base interpreter, and only
    through the link does Python find the venv's site-packages.

    Raises:
        ConfigError: no such executable.
    """
    found = shutil.which(python) if os.sep not in python else python
    if not found or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise ConfigError(f"runtime_python {python!r} is not an executable interpreter")
    return str(Path(found).absolute())


def resolve_folders(name: str, code_dir: str, layers: tuple[str, ...]) -> tuple[str, list[str]]:
    """The code folder and layer folders of function ``name`` as absolute paths.

    Raises:
        ConfigError: one of them is not a folder (Lambda would refuse the deployment).
    """
    folders = [code_dir, *layers] if code_dir else list(layers)
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{name}: {folder!r} (code_dir or layer) is not a folder")
    absolute = [str(Path(folder).absolute()) for folder in folders]
    return (absolute[0], absolute[1:]) if code_dir else ("", absolute)


async def interpreter_version(python: str) -> str:
    """``MAJOR.MINOR`` of the interpreter, asked as isolated as it will run.

    Raises:
        ConfigError: it does not run, or does not answer within ``PROBE_TIMEOUT_S``.
    """
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    process = await asyncio.create_subprocess_exec(
        python,
        "-I",
        "-c",
        probe,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=passed_environment(os.environ),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), PROBE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ConfigError(
            f"runtime_python {python}: no answer in {PROBE_TIMEOUT_S:.0f} s"
        ) from None
    if process.returncode != 0:
        text = err.decode(errors="replace").strip()
        raise ConfigError(f"runtime_python {python} does not run: {text}")
    return out.decode().strip()
