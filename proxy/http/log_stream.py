"""The access log's stream handler: a write that fails (a full disk behind a redirected
stderr, a closed pipe) is counted and reported, never raised into the request path.

On the hot path (``write_line``) lines are batched: the first line of a batch schedules one
write for ``FLUSH_S`` later on the running loop, so a busy server makes one ``write()`` per
batch instead of one per request (stderr is line-buffered: every line was a system call).
A line reaches the stream at most ``FLUSH_S`` after its request ended, or at once when the
batch holds ``BATCH_LINES``; ``flush()`` (and so ``logging.shutdown`` at exit) writes what
is pending, and so does every reader of the handler's health (``stats``, ``/readyz``,
``/metrics``): what they report is the result of writing every line logged so far. A
SIGKILL loses at most the last ``FLUSH_S`` of lines."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

ACCESS_LOGGER = "model_router.access"
FLUSH_S = 0.05
BATCH_LINES = 256
INFO = logging.INFO
PLAIN = "%(message)s"  # the format serve installs: a record comes out as its message
NOT_PLAIN = object()  # plain_formatter while the formatter is not the bare-message one


class CountingStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` whose failed writes become counters instead of tracebacks (the
    traceback would go to the same failing stream)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self.written = 0
        self.errors = 0
        self.error: str | None = None  # the last failure, until a write succeeds again
        self.failing_since: float | None = None  # monotonic
        self._pending: list[str] = []  # lines of the batch not yet written
        self._timer: asyncio.TimerHandle | None = None
        self.plain_formatter: object = NOT_PLAIN

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Also notes whether ``fmt`` prints a record as its bare message: the access log's
        fast path compares ``formatter is plain_formatter`` per request (6 bytecodes, not
        the 13 of a type and format test). A formatter assigned without this method fails
        the comparison and takes the ordinary path: the same line, only not batched."""
        super().setFormatter(fmt)
        plain = type(fmt) is logging.Formatter and fmt._fmt == PLAIN
        self.plain_formatter = fmt if plain else NOT_PLAIN

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            self.settle()  # lines logged before this record come out before it
        before = self.errors
        super().emit(record)  # calls handleError on failure
        if self.errors == before:
            self.written += 1
            self.error = self.failing_since = None

    def write_line(self, line: str) -> None:
        """What ``handle`` does for a record whose formatted text is ``line``, without
        building the record (the access log's hot path, when the record would come out as
        the bare line), batched: written within ``FLUSH_S`` (at once when no event loop runs
        in this thread), or at once when the batch holds ``BATCH_LINES``."""
        pending = self._pending
        pending.append(line)
        if len(pending) >= BATCH_LINES:
            self.settle()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.settle()
                return
            self._timer = loop.call_later(FLUSH_S, self.settle)

    def flush(self) -> None:
        self.settle()
        super().flush()

    def settle(self) -> None:
        """Write the pending batch in one call and flush the stream; a failure is counted
        (per line), never raised. Nothing pending: nothing is touched."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        before = self.errors
        self.acquire()
        try:
            terminator = self.terminator
            self.stream.write(terminator.join(lines) + terminator)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(None)
        finally:
            self.release()
        if self.errors == before:
            self.written += len(lines)
            self.error = self.failing_since = None
        else:  # every line of the batch is lost, and counted as such
            self.errors = before + len(lines)

    def handleError(self, record: logging.LogRecord | None) -> None:
        exc = sys.exc_info()[1]
        self.errors += 1
        self.error = f"{type(exc).__name__}: {exc}" if exc is not None else "write failed"
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def stats(self) -> dict[str, Any]:
        self.settle()  # the health of every line logged so far
        failing = self.failing_since
        return {
            "ok": self.error is None,
            "error": self.error,
            "failing_for_s": None if failing is None else round(time.monotonic() - failing, 1),
            "written_lines": self.written,
            "write_errors": self.errors,
        }


def access_handler() -> CountingStreamHandler | None:
    """The handler ``model-router serve`` installed on the access log (None in tests that
    build the app in-process without it)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        if isinstance(handler, CountingStreamHandler):
            return handler
    return None


class AfterBatch(logging.StreamHandler[TextIO]):
    """The handler of every other log record on the access log's stream (``serve`` puts both
    on stderr): it writes the access log's pending batch first, so a warning never comes out
    ahead of the access line of a request that ended before it."""

    def __init__(self, stream: TextIO, batch: CountingStreamHandler) -> None:
        super().__init__(stream)
        self._batch = batch

    def emit(self, record: logging.LogRecord) -> None:
        self._batch.settle()
        super().emit(record)
