"""The access log: one JSON line per request from the request record's logged fields, never
prompts, completions or keys. It goes through the ``model_router.access`` logger (so
embedding apps and tests see ordinary log records) without its slow parts: no caller
lookup per line, and ``serve`` writes the lines in batches, one write per loop turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TextIO

import orjson

from proxy.serve.record import RequestRecord, logged

ACCESS_LOGGER = "model_router.access"
access_log = logging.getLogger(ACCESS_LOGGER)
# Lines held before a write even within one loop turn (a burst of answers).
MAX_BATCH = 256


def access_log_sink(record: RequestRecord, seconds: float) -> None:
    """A ``Router.sinks`` entry: runs once per request after its answer has gone out."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = orjson.dumps(logged(record)).decode()
    # makeRecord + handle is what Logger.info does, minus findCaller's walk up the stack.
    access_log.handle(access_log.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, line, (), None))


class BatchedLineHandler(logging.Handler):
    """Writes each record's bare message as a line, batched: lines queued during one turn
    of the event loop go out in one write at its end (at once when there is no loop)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    def handle(self, record: logging.LogRecord) -> bool:
        # No filters, lock or formatter: the message is the line, and all of it runs on
        # the event loop's one thread.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(record.getMessage())
        if len(self._lines) >= MAX_BATCH:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                self._scheduled = True
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not fail requests

    def close(self) -> None:
        self.flush()
        super().close()
