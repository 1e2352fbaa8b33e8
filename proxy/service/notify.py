"""The sd_notify(3) protocol spoken directly over $NOTIFY_SOCKET, with no libsystemd.

Owns readiness, reload, stop and status messages, and the event-loop watchdog ping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

_log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd; every method is a no-op outside a Type=notify unit.

    Sends never raise: a lost notification must not take a request down with it. The
    first failure is logged at debug level, later ones are silent.
    """

    __slots__ = ("_address", "_failed", "_sock", "_watchdog_usec")

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """``address`` is a socket path, or ``"\\0name"`` for an abstract socket."""
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._failed = False
        self._sock: socket.socket | None = None
        if address is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as sd_notify(3) does."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw.startswith("@"):
            address = "\0" + raw[1:]
        elif raw.startswith("/"):
            address = raw
        elif raw:
            _log.debug("NOTIFY_SOCKET is neither a path nor an abstract socket; ignoring it")
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of WATCHDOG_USEC, in seconds (systemd's advice); None without a watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str = "") -> None:
        """The service accepts connections: first start, and the end of every reload."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}" if status else "READY=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """Reload started; call ready() when the new configuration is live."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, message: str) -> None:
        sock = self._sock
        if sock is None or self._address is None:
            return
        try:
            sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.debug("sd_notify send failed (further failures not logged): %s", exc)


async def watchdog_task(notifier: Notifier) -> None:
    """Pings the watchdog from the event loop itself until cancelled.

    Running on the loop (not in a thread) is the point: if a callback blocks the
    loop, the pings stop and systemd kills and restarts the service.
    """
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    pid = env.get("WATCHDOG_PID")
    # A forked child inherits the variables but is not the process systemd watches.
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    # A newline in the text would start a new (bogus) assignment in the datagram.
    return " ".join(text.splitlines())
