"""What the zygote imports before it forks: the function's code and layers on the path,
the libraries the handler module imports (shared by every forked environment), and a
look at the sockets the import opened (a module that connects while imported needs an
import per environment)."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import os
import sys
from typing import Any


def open_sockets() -> set[str]:
    """The sockets this process holds (``socket:[INODE]`` links in /proc/self/fd)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:"):
                    found.add(target)
    return found


def preload_imports(spec: str) -> None:
    """Import the modules the handler module imports at its top level, without running
    the module itself, so environments forked afterwards share them."""
    module_name = spec.partition(":")[0] if ":" in spec else spec.rpartition(".")[0]
    try:
        found = importlib.util.find_spec(module_name)
        source = found.loader.get_source(module_name) if found and found.loader else None  # type: ignore[attr-defined]
        tree = ast.parse(source or "")
    except Exception:  # the environments will report the import error properly
        return
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            with contextlib.suppress(Exception):
                importlib.import_module(name)


def import_path(config: dict[str, Any]) -> list[str]:
    """The folders the function's code is imported from, searched in this order:
    its code (Lambda's /var/task), each layer's site-packages and ``python`` folders
    (Lambda's /opt/python/lib/pythonX.Y/site-packages and /opt/python), in the order the
    layers are given, then the service's ``--code-dir`` folders."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    paths = [config["code_dir"]] if config.get("code_dir") else []
    for layer in config.get("layers") or []:
        python = os.path.join(layer, "python")
        paths += [os.path.join(python, "lib", version, "site-packages"), python]
    return paths + list(config.get("code_dirs") or [])
