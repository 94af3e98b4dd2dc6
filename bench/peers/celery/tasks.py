"""The same delivery workload as a Celery task on the same RabbitMQ (acks late, so a
worker crash does not lose a task, as safe as courierflow's ack-after-handoff)."""

from __future__ import annotations

import os
import random
import time

from celery import Celery

app = Celery("courierflow_bench", broker=os.environ.get("COURIERFLOW_AMQP_URL", "amqp://"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("CELERY_BENCH_QUEUE", "celery-bench"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
DONE_FILE = os.environ.get("CELERY_BENCH_DONE", "/tmp/celery-bench-done.txt")


@app.task(name="deliver")
def deliver(order_id: str) -> dict[str, object]:
    started = time.time()
    delay = random.randint(2, 10)
    time.sleep(delay * float(os.environ.get("COURIERFLOW_TIME_SCALE", "1")))
    with open(DONE_FILE, "a") as out:
        out.write(f"{order_id},{started},{time.time()},{delay}\n")
    return {"order_id": order_id, "delay": delay}
