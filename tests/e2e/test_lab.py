"""`courierflow lab DIR`, run as a student runs it: their own three programs, written here
the way the AWS lab's students write them (plain pika and boto3, nothing of courierflow's),
unmodified, against the local stand-ins; mistakes are explained in plain words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from courierflow.local.processes import rabbitmq_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not rabbitmq_available(), reason="rabbitmq-server not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 20

PUBLISHER = """\
import csv
import json
import os

import boto3
import pika


def lambda_handler(event, context):
    bucket = event['Records'][0]['s3']['bucket']['name']
    key = event['Records'][0]['s3']['object']['key']
    s3 = boto3.client('s3')
    obj = s3.get_object(Bucket=bucket, Key=key)
    lines = obj['Body'].read().decode('utf-8').splitlines()
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host=os.environ.get('RABBITMQ_HOST', 'localhost'),
        port=int(os.environ.get('RABBITMQ_PORT', 5672)),
        credentials=pika.PlainCredentials('guest', 'guest')))
    channel = connection.channel()
    channel.queue_declare(queue='orders')
    for row in csv.DictReader(lines):
        channel.basic_publish(exchange='', routing_key='orders', body=json.dumps(row))
    connection.close()
    return {'statusCode': 200}
"""

DELIVERY = """\
import random
import time


def lambda_handler(event, context):
    time.sleep(random.uniform(0.3, 1.0))
    print('Delivered order', event.get('order_id'))
    return {'statusCode': 200, 'body': 'Delivered ' + str(event.get('order_id'))}
"""

MANAGER = """\
import os

import boto3
import pika

client = boto3.client('lambda', region_name='us-east-1')


def callback(ch, method, properties, body):
    client.invoke(FunctionName='lambda_delivery', InvocationType='Event', Payload=body)
    ch.basic_ack(delivery_tag=method.delivery_tag)


connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get('RABBITMQ_HOST', 'localhost'),
    port=int(os.environ.get('RABBITMQ_PORT', 5672))))
channel = connection.channel()
channel.queue_declare(queue='orders')
channel.basic_consume(queue='orders', on_message_callback=callback)
print('Waiting for orders')
channel.start_consuming()
"""

#: two planted mistakes: the ack comes before the invoke, and every fourth order goes to
#: a misspelt function (the error printed and the order dropped)
MANAGER_WITH_MISTAKES = """\
import json
import os

import boto3
import pika

client = boto3.client('lambda', region_name='us-east-1')
count = 0


def callback(ch, method, properties, body):
    global count
    count += 1
    ch.basic_ack(delivery_tag=method.delivery_tag)
    name = 'lambda_delivry' if count % 4 == 0 else 'lambda_delivery'
    try:
        client.invoke(FunctionName=name, InvocationType='Event', Payload=body)
    except Exception as e:
        print('Error invoking', name, e)


connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get('RABBITMQ_HOST', 'localhost'),
    port=int(os.environ.get('RABBITMQ_PORT', 5672))))
channel = connection.channel()
channel.queue_declare(queue='orders')
channel.basic_consume(queue='orders', on_message_callback=callback)
channel.start_consuming()
"""

#: a manager that never acknowledges, and a delivery that raises for one order
MANAGER_WITHOUT_ACK = MANAGER.replace(
    "    ch.basic_ack(delivery_tag=method.delivery_tag)\n", "    print('dispatched')\n"
)
DELIVERY_RAISING = DELIVERY.replace(
    "    time.sleep(",
    "    if event.get('order_id') == 'ORD-0003':\n"
    "        raise ValueError('address not found')\n    time.sleep(",
)


def _trio(folder: Path, manager: str = MANAGER, delivery: str = DELIVERY) -> Path:
    folder.mkdir(parents=True)
    (folder / "lambda_order_publisher.py").write_text(PUBLISHER)
    (folder / "lambda_delivery.py").write_text(delivery)
    (folder / "manager.py").write_text(manager)
    return folder


def _orders(path: Path, count: int = ORDERS) -> Path:
    lines = ["order_id,customer,address,items,quantity,priority,notes"]
    lines += [f'ORD-{n:04d},Customer {n},"{n} Main Street, Dublin",lamp,1,standard,' for n in
              range(1, count + 1)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _lab(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    courierflow = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    assert courierflow, "the courierflow command is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COURIERFLOW_"))}
    env["COURIERFLOW_HOME"] = str(tmp_path / "home")
    report = tmp_path / "out.json"
    result = subprocess.run(
        [courierflow, "lab", *args, "--report-json", str(report), "--stall-timeout", "15"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert not _processes_under(tmp_path), "the lab left processes running"
    return result, (json.loads(report.read_text()) if report.exists() else {})


def _processes_under(tmp_path: Path) -> list[str]:
    """Processes whose command line or working folder is under ``tmp_path``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(tmp_path) in cmdline or cwd.startswith(str(tmp_path)):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_a_students_trio_delivers_every_order_in_parallel(tmp_path: Path) -> None:
    code = _trio(tmp_path / "lab")
    result, summary = _lab(tmp_path, str(code), "--upload", str(_orders(tmp_path / "o.csv")))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert (summary["rows"], summary["published"], summary["delivered"]) == (ORDERS,) * 3
    assert (summary["failed"], summary["lost"]) == (0, 0)
    assert summary["peak_concurrency"] > 1
    assert summary["makespan_s"] > 0
    assert summary["lab"]["findings"] == []
    assert Path(summary["lab"]["report_html"]).read_text().count("<svg") >= 1
    # the keys `courierflow run --report-json` writes
    for key in ("file", "rows", "published", "delivered", "failed", "lost", "makespan_s",
                "peak_concurrency", "throughput_per_s", "failures"):  # fmt: skip
        assert key in summary
    assert f"delivered {ORDERS}/{ORDERS}" in result.stderr
    # the student's code was not touched
    assert (code / "manager.py").read_text() == MANAGER


def test_ack_before_invoke_and_a_misspelt_function_are_explained(tmp_path: Path) -> None:
    code = _trio(tmp_path / "lab", MANAGER_WITH_MISTAKES)
    result, summary = _lab(tmp_path, str(code), "--upload", str(_orders(tmp_path / "o.csv")))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    lost = ORDERS // 4
    assert summary["delivered"] == ORDERS - lost, output[-5000:]
    mistakes = {f["mistake"]: f["text"] for f in summary["lab"]["findings"]}
    wrong_name = mistakes["wrong_function_name"]
    assert "'lambda_delivry', which does not exist" in wrong_name
    assert "'lambda_delivery'" in wrong_name and "'lambda_order_publisher'" in wrong_name
    assert f"acknowledged {ORDERS} message(s)" in mistakes["acked_without_invoke"]
    assert f"only {ORDERS - lost} invoke(s)" in mistakes["acked_without_invoke"]
    assert "Call basic_ack only after invoke" in " ".join(output.split())
    assert "lambda_delivry" in result.stderr


def test_a_manager_that_never_acks_and_a_delivery_that_raises_are_explained(
    tmp_path: Path,
) -> None:
    code = _trio(tmp_path / "lab", MANAGER_WITHOUT_ACK, DELIVERY_RAISING)
    assert MANAGER_WITHOUT_ACK != MANAGER and DELIVERY_RAISING != DELIVERY
    result, summary = _lab(tmp_path, str(code), "--upload", str(_orders(tmp_path / "o.csv")))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert (summary["delivered"], summary["failed"], summary["lost"]) == (ORDERS - 1, 1, 0)
    assert "ValueError: address not found" in summary["failures"][0][1]
    mistakes = {f["mistake"]: f["text"] for f in summary["lab"]["findings"]}
    assert (
        f"{ORDERS} message(s) were received by the manager and never acknowledged"
        in (mistakes["never_acked"])
    )
    assert "ValueError: address not found" in mistakes["handler_raised"]
    assert "'lambda_delivery' failed 3 time(s)" in mistakes["handler_raised"]
    assert "acked_without_invoke" not in mistakes


def test_init_writes_a_starter_trio_that_runs(tmp_path: Path) -> None:
    code = tmp_path / "mylab"
    courierflow = shutil.which("courierflow", path=str(Path(sys.executable).parent))
    assert courierflow
    init = subprocess.run([courierflow, "lab", "--init", str(code)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert sorted(p.name for p in code.iterdir()) == [
        "lambda_delivery.py",
        "lambda_order_publisher.py",
        "manager.py",
    ]
    again = subprocess.run([courierflow, "lab", "--init", str(code)], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert again.returncode == 2, "an existing trio is never overwritten"
    result, summary = _lab(tmp_path, str(code), "--upload", str(_orders(tmp_path / "o.csv")))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert summary["delivered"] == ORDERS
    assert summary["peak_concurrency"] > 1
