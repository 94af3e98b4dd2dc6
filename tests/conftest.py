"""Shared fixtures: the real parts every integration, e2e and fault test talks to.

A private RabbitMQ node and moto's standalone server are started once per session on
free 127.0.0.1 ports and stopped by PID at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from courierflow.local.processes import (
    ManagedProcess,
    RabbitNode,
    start_moto_server,
    start_rabbitmq,
)

# No test may ever reach real AWS: fake credentials, fixed region.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private RabbitMQ node (Debian's rabbitmq-server) for the whole session."""
    node = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def amqp_url(rabbitmq: RabbitNode) -> str:
    return rabbitmq.amqp_url


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server (S3, SQS, DynamoDB) as a subprocess; yields its URL."""
    proc: ManagedProcess = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield f"http://127.0.0.1:{proc.port}"
    finally:
        proc.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh local state folder (COURIERFLOW_HOME) for one test."""
    home = tmp_path / "courierflow"
    home.mkdir()
    return home


#: a test's kind is the folder it lives in; `make check` runs `-m unit`
KINDS = {"unit", "integration", "e2e", "faults"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its folder's kind, so `-m unit` finds all the unit tests."""
    for item in items:
        kind = item.path.parent.name
        if kind in KINDS:
            item.add_marker(kind)
