"""The instance as EC2 would run it: the shell part of its user data, and the process
systemd would start from the manager's unit."""

from __future__ import annotations

import email
from pathlib import Path

from courierflow.aws import artifacts
from courierflow.aws.rehearsal.account import RehearsalError

UNIT_FILE = artifacts.BOOTSTRAP.parent / "courierflow-manager.service"


def shell_part(user_data: str) -> str:
    """The shell script of a user data document (MIME multipart, as cloud-init reads
    it), or the document itself when it is a plain script."""
    if not user_data.startswith("Content-Type:"):
        return user_data
    for part in email.message_from_string(user_data).walk():
        if part.get_content_type() == "text/x-shellscript":
            payload = part.get_payload()
            return str(payload)
    raise RehearsalError("the instance's user data has no shell script part")


def unit_environment(unit: Path, root: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart and the environment systemd gives the unit's process: its
    EnvironmentFile and Environment lines and nothing else, paths under ``root``."""
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "EnvironmentFile":
            for entry in (root / value.lstrip("-/")).read_text().splitlines():
                if entry.strip() and not entry.startswith("#"):
                    name, _, val = entry.partition("=")
                    env[name] = val
        elif key == "Environment":
            name, _, val = value.partition("=")
            env[name] = str(root / val.lstrip("/")) if val.startswith("/") else val
        elif key == "ExecStart":
            program, *args = value.split()
            argv = [str(root / program.lstrip("/")), *args]
    return argv, env
