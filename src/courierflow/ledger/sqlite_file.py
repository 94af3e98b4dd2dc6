"""The SQLite ledger's file: connections per process and thread, and the writers' queue.

WAL mode lets readers run beside the one writer. Connections are opened lazily per
process and thread, because Lambda environments are forked from a parent that may have
imported (but must not share) the ledger.

Writers queue for the file in the kernel (``flock`` on ``LEDGER-writer.lock``) before
they ask SQLite for its write lock. SQLite never blocks on its own locks: a writer that
finds the file busy sleeps and tries again, so hundreds of delivery processes claiming
at once poll the file while the one that holds the lock waits for the CPU to finish.
In the kernel's queue a waiter sleeps until the lock is handed on: 256 processes making
10 claims each finished in 0.45 s instead of 0.83 s (2 cores).
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from courierflow.errors import LedgerError
from courierflow.ledger import sqlite_schema

T = TypeVar("T")

#: how long a writer waits for the lock before giving up (many deliveries write at once)
BUSY_TIMEOUT_MS = 60_000
#: pause between tries for the write lock, growing from the first to the last value
BUSY_RETRY_S = (0.0002, 0.004)
#: rows a streamed query hands over at a time (see SQLiteFile._stream)
PAGE_ROWS = 1_000


def _why(exc: sqlite3.Error) -> str:
    """SQLite's message and its extended result code (SQLITE_IOERR_SHMMAP, not only
    "disk I/O error"), which says which system call failed."""
    name = getattr(exc, "sqlite_errorname", "")
    return f"{exc} ({name})" if name else str(exc)


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _when_free(action: Callable[[], T]) -> T:
    """Run ``action``, trying again after short random pauses while another process holds
    the lock it needs (a write holds it for well under a millisecond)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = BUSY_RETRY_S[0]
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, BUSY_RETRY_S[1])


class SQLiteFile:
    """A SQLite file (created with its folder on first use), opened per process and thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        # Threads of one process take turns here rather than in SQLite's busy handler,
        # which sleeps 1, 2, 5 ... 100 ms between tries: a queue of writers in one
        # process would otherwise spend its time asleep while the file is free.
        self._write_lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._queue_fd: int | None = None  # this process's handle on the writers' queue

    # --- plumbing ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                sqlite_schema.create(conn)
                # We wait for the write lock ourselves (see _begin); SQLite's own busy
                # handler sleeps 1, 2, 5 ... 100 ms between tries, so a writer among
                # hundreds of delivery processes could sleep long after the lock is free.
                conn.execute("PRAGMA busy_timeout = 0")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open ledger {self.path}: {_why(exc)}") from None
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        if self._lock_pid != os.getpid():  # forked: the parent's locks are not ours
            self._write_lock, self._lock_pid = threading.Lock(), os.getpid()
            if self._queue_fd is not None:  # a shared open file would not exclude the parent
                os.close(self._queue_fd)
                self._queue_fd = None
        with self._write_lock, self._writers_queue():
            try:
                # free unless a writer outside the queue (the sqlite3 shell) holds it
                _when_free(lambda: conn.execute("BEGIN IMMEDIATE"))
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f"ledger {self.path}: {_why(exc)}") from None
                raise

    @contextmanager
    def _writers_queue(self) -> Iterator[None]:
        """Wait in the kernel for this process's turn to write (see the module's doc)."""
        if self._queue_fd is None:
            lock_path = self.path.with_name(self.path.name + "-writer.lock")
            self._queue_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def _read(
        self, sql: str, params: Sequence[object] | dict[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        conn = self._conn()
        try:  # WAL readers are rarely ever busy, but they can be
            return _when_free(lambda: conn.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {_why(exc)}") from None

    def _stream(
        self, sql: str, params: Sequence[object] | dict[str, object] = (), page: int = PAGE_ROWS
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of a query, ``page`` at a time, from one cursor: a pass over a million
        rows holds one page (a sort in the query spills to SQLite's temporary files).
        The cursor reads one snapshot of the file, like any single statement; writers go
        on meanwhile (WAL)."""
        conn = self._conn()
        try:
            cursor = _when_free(lambda: conn.execute(sql, params))
            try:
                while rows := cursor.fetchmany(page):
                    yield rows
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {_why(exc)}") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()
        if self._queue_fd is not None and self._lock_pid == os.getpid():
            os.close(self._queue_fd)
            self._queue_fd = None
