"""The SQLite ledger's tables, the triggers that keep its running figures, and the
upgrade of a ledger file written by an older release.

The figures (orders per source, state and whether their delivery started; each source's
first queue time and last finish time; orders finished per state and second) live in
small tables that triggers on ``orders`` update in the transaction of each change, so
no writer can forget them and a reader never passes over the orders. The triggers copy
states from the rows they fire on: no state name is written here.
"""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    queued_at REAL, dispatched_at REAL, started_at REAL, finished_at REAL,
    request_id TEXT NOT NULL DEFAULT '',
    delay_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    claim_expires_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_source ON orders(source);
CREATE INDEX IF NOT EXISTS orders_state ON orders(state, updated_at);
CREATE TABLE IF NOT EXISTS files (
    bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL,
    state TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0, published INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    started_at REAL, finished_at REAL,
    attempt TEXT NOT NULL DEFAULT '', lease_until REAL, checkpoint_at REAL,
    PRIMARY KEY (bucket, key, etag)
);
"""

#: a row's times folded into its source's earliest queue and latest finish
_SOURCE_TIMES = """
    INSERT INTO order_sources VALUES (NEW.source, NEW.queued_at, NEW.finished_at)
        ON CONFLICT DO UPDATE SET
        first_queued_at = min(coalesce(first_queued_at, excluded.first_queued_at),
                              coalesce(excluded.first_queued_at, first_queued_at)),
        last_finished_at = max(coalesce(last_finished_at, excluded.last_finished_at),
                               coalesce(excluded.last_finished_at, last_finished_at));
"""

#: the running figures and the triggers that keep them (created with a backfill, once)
FIGURES = """
CREATE TABLE order_counts (
    source TEXT NOT NULL, state TEXT NOT NULL, started INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (source, state, started)
) WITHOUT ROWID;
CREATE TABLE order_sources (
    source TEXT PRIMARY KEY, first_queued_at REAL, last_finished_at REAL
) WITHOUT ROWID;
CREATE TABLE finished_per_second (
    state TEXT NOT NULL, second INTEGER NOT NULL, source TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (state, second, source)
) WITHOUT ROWID;

CREATE TRIGGER orders_counted_in AFTER INSERT ON orders BEGIN
    INSERT INTO order_counts VALUES (NEW.source, NEW.state, NEW.started_at IS NOT NULL, 1)
        ON CONFLICT DO UPDATE SET n = n + 1;
{source_times}    INSERT INTO finished_per_second
        SELECT NEW.state, CAST(NEW.finished_at AS INTEGER), NEW.source, 1
        WHERE NEW.finished_at IS NOT NULL
        ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER orders_counted_moved AFTER UPDATE OF state, source, started_at ON orders
WHEN OLD.state IS NOT NEW.state OR OLD.source IS NOT NEW.source
    OR (OLD.started_at IS NULL) IS NOT (NEW.started_at IS NULL)
BEGIN
    INSERT INTO order_counts VALUES (OLD.source, OLD.state, OLD.started_at IS NOT NULL, -1),
        (NEW.source, NEW.state, NEW.started_at IS NOT NULL, 1)
        ON CONFLICT DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER orders_counted_out AFTER DELETE ON orders BEGIN
    UPDATE order_counts SET n = n - 1 WHERE source = OLD.source AND state = OLD.state
        AND started = (OLD.started_at IS NOT NULL);
END;

CREATE TRIGGER orders_times AFTER UPDATE OF source, queued_at, finished_at ON orders
WHEN OLD.source IS NOT NEW.source OR OLD.queued_at IS NOT NEW.queued_at
    OR OLD.finished_at IS NOT NEW.finished_at
BEGIN
{source_times}END;

CREATE TRIGGER orders_finished AFTER UPDATE OF finished_at ON orders
WHEN NEW.finished_at IS NOT NULL AND NEW.finished_at IS NOT OLD.finished_at
BEGIN
    INSERT INTO finished_per_second
        SELECT NEW.state, CAST(NEW.finished_at AS INTEGER), NEW.source, 1 WHERE 1
        ON CONFLICT DO UPDATE SET n = n + 1;
END;
""".replace("{source_times}", _SOURCE_TIMES.strip("\n") + "\n")

#: the figures of the orders already in a ledger file that predates them
_BACKFILL = """
INSERT INTO order_counts
    SELECT source, state, started_at IS NOT NULL, COUNT(*) FROM orders GROUP BY 1, 2, 3;
INSERT INTO order_sources
    SELECT source, MIN(queued_at), MAX(finished_at) FROM orders GROUP BY source;
INSERT INTO finished_per_second
    SELECT state, CAST(finished_at AS INTEGER), source, COUNT(*) FROM orders
    WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3;
"""

#: columns added to ``files`` after its first release: added to older ledger files on open
_ADDED_FILE_COLUMNS = {
    "attempt": "TEXT NOT NULL DEFAULT ''",
    "lease_until": "REAL",
    "checkpoint_at": "REAL",
}


def create(conn: sqlite3.Connection) -> None:
    """Bring a ledger file (new, or written by an older release) up to the current
    tables. Safe to run from many processes at once."""
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    if not _has_figures(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _has_figures(conn):  # another process may have made them meanwhile
                for statement in _statements(FIGURES + _BACKFILL):
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _has_figures(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'orders_finished'"
    ).fetchone()
    return found is not None


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (trigger bodies kept whole), in order."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a ledger file written by an older release up to the current ``files``."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    for name, declaration in _ADDED_FILE_COLUMNS.items():
        if name in present:
            continue
        try:
            conn.execute(f"ALTER TABLE files ADD COLUMN {name} {declaration}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it first
                raise
