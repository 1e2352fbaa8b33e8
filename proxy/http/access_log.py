"""The access log: one JSON line per request from the request record's logged fields, never
prompts, completions or keys. It goes through the ``model_router.access`` logger (so
embedding apps and tests see ordinary log records) without its slowest part, the caller
lookup per line, and when ``serve``'s own handler is the only one, without the log record
itself (``CountingStreamHandler.write_line``); ``serve`` writes the lines with a counting
handler (``log_stream``).
"""

from __future__ import annotations

import logging

import orjson

from proxy.serve.record import RequestRecord, logged

from .log_stream import ACCESS_LOGGER, INFO, CountingStreamHandler

access_log = logging.getLogger(ACCESS_LOGGER)


def access_log_sink(record: RequestRecord, seconds: float) -> None:
    """A ``Router.sinks`` entry: runs once per request after its answer has gone out."""
    if not access_log.isEnabledFor(INFO):
        return
    _write(orjson.dumps(logged(record)).decode())


# How much of a path the router serves no route for is logged: enough to see what a client
# called (``/v1/responses``), never a path-long payload.
PATH_MAX = 128


def access_log_edge(
    request_id: str, key_id: str | None, method: str, path: str, status: int, error: str | None
) -> None:
    """A request answered at the edge, before any request record (a refused key or origin,
    a route we do not serve): a shorter line, with the method and path instead of routing."""
    if not access_log.isEnabledFor(INFO):
        return
    line = {
        "request_id": request_id,
        "key_id": key_id,
        "method": method[:16],
        "path": path[:PATH_MAX],
        "status": status,
        "error": error,
    }
    _write(orjson.dumps(line).decode())


def _write(line: str) -> None:
    handlers = access_log.handlers
    if len(handlers) == 1 and not access_log.propagate and not access_log.filters:
        only = handlers[0]
        # serve's own set-up: the line is all a record would become, so skip the record. The
        # handler's side (no filter, a level that lets INFO through, the bare-message format)
        # is checked here rather than in a method: a call fewer per request.
        if (
            type(only) is CountingStreamHandler
            and not only.filters
            and only.level <= INFO
            and only.formatter is only.plain_formatter
        ):
            only.write_line(line)
            return
    # makeRecord + handle is what Logger.info does, minus findCaller's walk up the stack.
    access_log.handle(access_log.makeRecord(ACCESS_LOGGER, INFO, "", 0, line, (), None))
