"""Defect 3 of issue 12: on EC2 only AWS_REGION was set, which botocore does not read for
a client's region, so the ledger and the SQS transport raised NoRegionError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from courierflow.config import resolve_region

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

BUILD_CLIENTS = """
from courierflow.config import Settings
from courierflow.ledger.base import open_ledger
from courierflow.transports.base import open_transport
settings = Settings.from_env()
ledger = open_ledger("dynamodb://ledger")  # as any caller may, without a region
transport = open_transport("sqs://orders", "orders")
print(ledger.client.meta.region_name, transport._client.meta.region_name)
"""


def test_clients_get_the_region_from_aws_region_alone(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", BUILD_CLIENTS], env=env, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["eu-west-1", "eu-west-1"]


def test_region_order_is_aws_region_then_default_region_then_profile_then_us_east_1(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config"
    config.write_text("[profile lab]\nregion = us-west-2\n")
    assert resolve_region({"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}) == "a"
    assert resolve_region({"AWS_DEFAULT_REGION": "b"}) == "b"
    import os

    saved = os.environ.get("AWS_CONFIG_FILE")
    os.environ["AWS_CONFIG_FILE"] = str(config)
    try:
        assert resolve_region({"AWS_PROFILE": "lab"}) == "us-west-2"
        assert resolve_region({"AWS_PROFILE": "other"}) == "us-east-1"
    finally:
        if saved is None:
            del os.environ["AWS_CONFIG_FILE"]
        else:
            os.environ["AWS_CONFIG_FILE"] = saved
