"""The usage log: one SQLite row per request, written in batches off the event loop.

Requests append rows to a bounded in-memory queue; one writer task hands each batch to a
single dedicated thread. Rows hold who/what/how-long/how-much, never prompts or answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from proxy.config import UsageSettings
from proxy.serve.record import COLUMNS, FIELDS

log = logging.getLogger("model_router.usage")

DB_NAME = "model-router.db"
# A failing disk is reported at most this often; the counters carry the rest.
WARN_INTERVAL_S = 60.0
# Another process (``model-router report``) may briefly hold the write lock.
BUSY_TIMEOUT_MS = 2_000


def _schema() -> str:
    last = len(FIELDS) - 1
    columns = "\n".join(
        f"    {f.name} {f.sql}{',' if i < last else ''}" + (f"  -- {f.doc}" if f.doc else "")
        for i, f in enumerate(FIELDS)
    )
    return (
        f"CREATE TABLE IF NOT EXISTS usage (\n    id INTEGER PRIMARY KEY,\n{columns}\n);\n"
        "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);\n"
    )


SCHEMA = _schema()
# Columns added after the first release of the table; an older database gains them.
LATER = (
    *("arm", "escalated_from", "complexity", "estimated"),
    *("hedged", "hedge_cost", "hedge_tokens"),
)
LATER_COLUMNS = {f.name: f.sql for f in FIELDS if f.name in LATER}
INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

Row = tuple[Any, ...]
SQLITE_MAGIC = b"SQLite format 3\x00"


def db_path(settings: UsageSettings, environ: Mapping[str, str]) -> str:
    """The configured path; else ``$STATE_DIRECTORY`` (systemd's StateDirectory=); else ./."""
    if settings.path:
        return settings.path
    # systemd passes one directory per StateDirectory= entry, colon-separated.
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return str(Path(state_dir) / DB_NAME) if state_dir else f"./{DB_NAME}"


def connect(path: str) -> sqlite3.Connection:
    """A writer connection in WAL mode with the schema in place."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts; a power cut may lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
        for column, kind in LATER_COLUMNS.items():
            if column not in have:
                conn.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}")
    except BaseException:
        conn.close()
        raise
    return conn


def is_corrupt(exc: sqlite3.Error) -> bool:
    """True when SQLite says the file is not a database it can use ("file is not a
    database", "database disk image is malformed"), as opposed to a busy, locked or full one."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")


def quarantine(path: str, now: float) -> str:
    """Move a corrupt database (and its -wal/-shm) aside under a timestamped name; returns
    the new name. The data stays on disk for an operator to inspect or salvage."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path + suffix, target + suffix)
    return target


def insert(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    conn.execute("BEGIN")
    try:
        conn.executemany(INSERT, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def spend_since(conn: sqlite3.Connection, since: float) -> tuple[float, dict[str, float]]:
    """Total cost since ``since`` (unix time), and per key id."""
    (total,) = conn.execute("SELECT COALESCE(SUM(cost), 0) FROM usage WHERE ts >= ?", (since,))
    by_key = conn.execute(
        "SELECT key_id, SUM(cost) FROM usage WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id",
        (since,),
    )
    return float(total[0]), {str(k): float(v) for k, v in by_key}


class UsageLog:
    """Bounded queue + batching writer. ``append`` is the only call on the request path."""

    def __init__(
        self,
        path: str,
        settings: UsageSettings,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.settings = settings
        self._monotonic = monotonic
        self._clock = clock
        self._rows: list[Row] = []
        self._inflight = 0  # rows handed to the writer thread, not yet committed
        self._wake = asyncio.Event()
        self._stopping = False
        self._limit = settings.queue_max  # 0 once closed: every row appended is dropped
        self._flush_rows = settings.flush_rows
        self._task: asyncio.Task[None] | None = None
        # One thread owns the connection: sqlite3 objects stay on the thread that made them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-log")
        self._conn: sqlite3.Connection | None = None
        self._conn_file: tuple[int, int] | None = None  # (st_dev, st_ino) when opened
        self._last_warning: float | None = None
        self._unreported = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self.write_errors = 0
        # The last failure, until a write succeeds again: what /readyz and status report.
        self.error: str | None = None
        self.failing_since: float | None = None  # monotonic
        self.quarantined: list[str] = []  # corrupt files moved aside, oldest first

    async def start(self, since: float) -> tuple[float, dict[str, float]]:
        """Open the database and start the writer; returns the spend logged since ``since``
        (unix time), or zero, with a warning, when the database cannot be read."""
        spend: tuple[float, dict[str, float]] = (0.0, {})
        try:
            spend = await self._in_thread(self._open_and_read, since)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc, 0)
        self._task = asyncio.create_task(self._run(), name="usage-log-writer")
        return spend

    def append(self, row: Row) -> None:
        # The settings read once, closing folded into the limit: once per request, ~10
        # bytecodes fewer (``benchmarks.opcodes``).
        rows = self._rows
        if len(rows) >= self._limit:  # full, or closed
            self.dropped_rows += 1
            return
        rows.append(row)
        if len(rows) >= self._flush_rows:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Rows not yet committed, including the batch being written."""
        return len(self._rows) + self._inflight

    async def flush(self) -> None:
        """Write what is queued now; on failure the rows stay queued (as far as they fit)."""
        if not self._rows:
            return
        batch, self._rows = self._rows, []
        self._inflight = len(batch)
        try:
            await self._in_thread(self._write, batch)
        except (sqlite3.Error, OSError) as exc:
            self._inflight = 0
            keep = self.settings.queue_max - len(self._rows)
            requeue = batch[: max(keep, 0)]
            lost = len(batch) - len(requeue)
            self._rows = requeue + self._rows
            self.dropped_rows += lost
            self._failed(exc, lost)
        else:
            self._inflight = 0
            self.written_rows += len(batch)
            if self.error is not None:
                log.warning(
                    "usage log %s: writing again after %.0f s of errors (%d rows dropped so far)",
                    self.path,
                    self._monotonic() - (self.failing_since or self._monotonic()),
                    self.dropped_rows,
                )
                self.error = self.failing_since = None

    async def close(self) -> None:
        """Flush everything and stop; rows appended afterwards are dropped and counted."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._limit = 0  # closed
        if self._rows:
            self.dropped_rows += len(self._rows)
            log.error("usage log %s: stopped with %d rows unwritten", self.path, len(self._rows))
            self._rows = []
        await self._in_thread(self._close_conn)
        self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        failing = self.failing_since
        return {
            "path": self.path,
            "ok": self.error is None,
            "error": self.error,
            "failing_for_s": None if failing is None else round(self._monotonic() - failing, 1),
            "written_rows": self.written_rows,
            "queued_rows": self.queued,
            "queue_max": self.settings.queue_max,
            "dropped_rows": self.dropped_rows,
            "write_errors": self.write_errors,
            "quarantined": list(self.quarantined),
        }

    async def _run(self) -> None:
        interval = self.settings.flush_ms / 1000.0
        while not self._stopping:
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_and_read(self, since: float) -> tuple[float, dict[str, float]]:
        try:
            return spend_since(self._connection(), since)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            self._set_aside(exc)
            return spend_since(self._connection(), since)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._file_id() != self._conn_file:
            # The file was deleted or replaced under the open connection, whose writes would
            # go to the old inode that nobody will read: open what is at the path now.
            log.warning("usage log %s: the file was replaced or removed; reopening", self.path)
            self._close_conn()
        if self._conn is None:
            if (problem := self._bad_header()) is not None:
                # Checked before SQLite sees it: a stale -wal left beside a replaced file
                # would make SQLite read the old pages over the garbage and carry on.
                self._set_aside(problem)
            try:
                self._conn = connect(self.path)
            except sqlite3.DatabaseError as exc:
                if not is_corrupt(exc):
                    raise
                self._set_aside(exc)
                self._conn = connect(self.path)
            self._conn_file = self._file_id()
        return self._conn

    def _bad_header(self) -> str | None:
        """Why the file at the path is not an SQLite database, or None (fine, or absent)."""
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return None
        if head and head != SQLITE_MAGIC:
            return "the file is not an SQLite database (its header is wrong)"
        return None

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _set_aside(self, exc: sqlite3.Error | str) -> None:
        """Refusing to start (or to log) over a damaged file helps nobody: keep it for
        inspection under a timestamped name and begin a new one."""
        self._close_conn()
        moved = quarantine(self.path, self._clock())
        self.quarantined.append(moved)
        log.error(
            "usage log %s: %s; moved the file aside to %s and started a new database "
            "(today's spend so far restarts from what the new file holds)",
            self.path,
            exc,
            moved,
        )

    def _write(self, rows: list[Row]) -> None:
        try:
            insert(self._connection(), rows)
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):  # replaced or damaged under us: the batch goes to a new file
                self._set_aside(exc)
                insert(self._connection(), rows)
                return
            # A broken connection (disk gone, file replaced) is reopened on the next batch.
            self._close_conn()
            raise
        except sqlite3.Error:
            self._close_conn()
            raise

    def _close_conn(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _failed(self, exc: BaseException, lost: int) -> None:
        self.write_errors += 1
        self._unreported += lost
        now = self._monotonic()
        self.error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is None:
            self.failing_since = now
        if self._last_warning is not None and now - self._last_warning < WARN_INTERVAL_S:
            return
        self._last_warning = now
        # sqlite3 and OS errors name the file and the failure, never row contents.
        log.warning(
            "usage log %s: %s; serving continues (%d rows dropped since the last warning, "
            "%d queued, %d write errors so far)",
            self.path,
            f"{type(exc).__name__}: {exc}",
            self._unreported,
            len(self._rows),
            self.write_errors,
        )
        self._unreported = 0
