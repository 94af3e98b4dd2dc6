"""The lab's verification step: `courierflow up` runs RabbitMQ's management console on
127.0.0.1, prints its address and login, and the address answers."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from courierflow.local.processes import free_port, rabbitmq_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server not installed"),
]


def test_up_prints_a_rabbitmq_console_address_that_answers(tmp_path: Path) -> None:
    courierflow = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    assert courierflow
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COURIERFLOW_"))}
    # nothing answers here, so `up` starts its own node (with its console)
    env["COURIERFLOW_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    env["COURIERFLOW_HOME"] = str(tmp_path / "home")
    up = subprocess.run([courierflow, "up", "--fleet", "4"], env=env, capture_output=True,
                        text=True, timeout=180)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        found = re.search(r"RabbitMQ console\s*│?\s*(http://127\.0\.0\.1:\d+/)", up.stdout)
        assert found, up.stdout
        assert "user guest, password guest" in up.stdout
        request = urllib.request.Request(
            found.group(1) + "api/overview",
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            overview = json.load(response)
        assert overview["rabbitmq_version"]
        assert overview["listeners"], "the console's API answers for the node `up` started"
    finally:
        subprocess.run([courierflow, "down"], env=env, capture_output=True, timeout=120)
