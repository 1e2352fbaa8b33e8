"""The access log's stream handler: a write that fails (a full disk behind a redirected
stderr, a closed pipe) is counted and reported, never raised into the request path."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

ACCESS_LOGGER = "model_router.access"


class CountingStreamHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` whose failed writes become counters instead of tracebacks (the
    traceback would go to the same failing stream)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream or sys.stderr)
        self.written = 0
        self.errors = 0
        self.error: str | None = None  # the last failure, until a write succeeds again
        self.failing_since: float | None = None  # monotonic

    def emit(self, record: logging.LogRecord) -> None:
        before = self.errors
        super().emit(record)  # calls handleError on failure
        if self.errors == before:
            self.written += 1
            self.error = self.failing_since = None

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        self.errors += 1
        self.error = f"{type(exc).__name__}: {exc}" if exc is not None else "write failed"
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def stats(self) -> dict[str, Any]:
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
