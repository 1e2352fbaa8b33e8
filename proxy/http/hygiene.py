"""Log hygiene: no request bytes, header values or body text in any log, at any level.

aiohttp's server logs a malformed request with the raw bytes it received (``Authorization``
and body included) and a traceback; botocore logs whole requests at DEBUG. The router's
protocol (proxy/http/hostile_input.py) logs a bad request as one line through ``BadRequestLog``, and
``guard_library_logs`` strips what the libraries would add: exception text and tracebacks
(which quote the bytes), and any bytes argument.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("model_router.http")

# aiohttp's loggers (aiohttp/log.py) and the AWS stack's.
LIBRARY_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "asyncio",
)
# Libraries that log whole requests at DEBUG (botocore: the body, i.e. the prompt, and the
# SigV4 Authorization header). They stay at WARNING whatever MODEL_ROUTER_LOG_LEVEL says.
CHATTY_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


class WithholdDetails(logging.Filter):
    """Keeps a library's record but not what may quote a request: the exception's text and
    traceback become its class name, and bytes arguments their length."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                record.msg = f"{record.msg} [{type(exc).__name__}]"
            record.exc_info = None
            record.exc_text = None
        record.stack_info = None
        if isinstance(record.args, tuple):
            record.args = tuple(_safe(a) for a in record.args)
        elif record.args:
            record.args = {k: _safe(v) for k, v in record.args.items()}
        return True


def _safe(arg: object) -> object:
    if isinstance(arg, bytes | bytearray | memoryview):
        return f"<{len(arg)} bytes>"
    if isinstance(arg, BaseException):
        return type(arg).__name__
    return arg


class WithholdLibraryDetails(WithholdDetails):
    """The same, for a handler: applied to records of the library loggers and their
    children (``botocore.endpoint``, ``urllib3.connectionpool``), which a filter on the
    parent logger does not see."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_PREFIXES):
            return super().filter(record)
        return True


_PREFIXES = tuple(f"{name}." for name in (*LIBRARY_LOGGERS, *CHATTY_LOGGERS))
_PREFIXES += tuple(name for name in (*LIBRARY_LOGGERS, *CHATTY_LOGGERS))
_FILTER = WithholdDetails()
_HANDLER_FILTER = WithholdLibraryDetails()


def guard_library_logs() -> None:
    """Install the filter on every library logger that can see request bytes (idempotent),
    and hold the chatty ones at WARNING."""
    for name in (*LIBRARY_LOGGERS, *CHATTY_LOGGERS):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if _HANDLER_FILTER not in handler.filters:
            handler.addFilter(_HANDLER_FILTER)


class LineBucket:
    """A token bucket of log lines: ``burst`` at once, then ``per_s`` a second. What it
    refuses is counted and reported with the next line that passes."""

    __slots__ = ("burst", "clock", "level", "per_s", "stamp", "suppressed")

    def __init__(
        self, burst: float = 20.0, per_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self.clock = clock
        self.level = burst
        self.stamp = clock()
        self.suppressed = 0

    def take(self) -> bool:
        now = self.clock()
        self.level = min(self.burst, self.level + (now - self.stamp) * self.per_s)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        self.suppressed += 1
        return False


class BadRequestLog:
    """One line per malformed request (remote address, error class, bytes received),
    rate-limited: a flood of bad requests writes a bounded amount."""

    __slots__ = ("bucket",)

    def __init__(self, bucket: LineBucket | None = None) -> None:
        self.bucket = bucket or LineBucket()

    def bad_request(self, remote: str, error: BaseException | str, received: int) -> None:
        name = error if isinstance(error, str) else type(error).__name__
        bucket = self.bucket
        if not bucket.take():
            return
        dropped, bucket.suppressed = bucket.suppressed, 0
        more = f" ({dropped} more not logged)" if dropped else ""
        log.warning(
            "bad request from %s: %s after %d bytes received%s", remote, name, received, more
        )
