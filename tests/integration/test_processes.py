"""Process control of the local stack against real processes: a stopped part counts as
gone as soon as it has exited, not only once its parent has reaped it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from courierflow.local.processes import pid_alive, stop_pid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

#: a parent that starts a child in a session of its own, prints the child's pid, and then
#: never reaps it: the child stays a zombie after it exits, as a stack's processes do
#: until the machine's init reaps them (`up` has exited by then)
_PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_stopped_process_is_gone_once_it_exits_even_before_it_is_reaped() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert pid_alive(pid)
        started = time.monotonic()
        stop_pid(pid, grace=10)
        assert time.monotonic() - started < 2.0
        assert not pid_alive(pid)
        with open(f"/proc/{pid}/stat", "rb") as stat:  # not reaped: its parent never waits
            assert stat.read().rpartition(b")")[2].split()[0] == b"Z"
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
