"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from proxy.service.notify import Notifier, watchdog_task

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's end: a bound datagram socket, exported as NOTIFY_SOCKET."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with contextlib.ExitStack() as stack:
        path = tmp_path / "notify"
        if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes; basetemp may be deep
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "notify"
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


@pytest.fixture
def notifier(receiver: socket.socket) -> Iterator[Notifier]:
    n = Notifier.from_env()
    yield n
    n.close()


def drain(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        pytest.param(
            lambda n: n.ready("listening on 127.0.0.1:8080"),
            b"READY=1\nSTATUS=listening on 127.0.0.1:8080",
            id="ready-with-status",
        ),
        pytest.param(lambda n: n.ready(), b"READY=1", id="ready-bare"),
        pytest.param(lambda n: n.status("12 deployments"), b"STATUS=12 deployments", id="status"),
        pytest.param(lambda n: n.status("a\nWATCHDOG=1"), b"STATUS=a WATCHDOG=1", id="newline"),
        pytest.param(lambda n: n.stopping(), b"STOPPING=1", id="stopping"),
        pytest.param(lambda n: n.watchdog(), b"WATCHDOG=1", id="watchdog"),
    ],
)
def test_each_call_sends_one_datagram_with_exact_bytes(
    notifier: Notifier,
    receiver: socket.socket,
    send: Callable[[Notifier], None],
    expected: bytes,
) -> None:
    send(notifier)
    assert drain(receiver) == [expected]


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    notifier: Notifier, receiver: socket.socket
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = drain(receiver)
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match is not None, message
    assert before <= int(match[1]) <= after


def test_abstract_socket_is_addressed_with_a_leading_at_sign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"model-router-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier.from_env()
        try:
            n.ready("up")
        finally:
            n.close()
        assert drain(sock) == [b"READY=1\nSTATUS=up"]


@pytest.mark.parametrize("value", [None, "", "relative/path"], ids=["unset", "empty", "relative"])
def test_without_a_usable_notify_socket_every_call_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier.from_env()
    assert not n.enabled
    assert n.watchdog_interval_s is None
    n.ready("x")
    n.status("x")
    n.reloading()
    n.watchdog()
    n.stopping()
    n.close()
    asyncio.run(asyncio.wait_for(watchdog_task(n), timeout=1))  # returns at once


def test_send_failures_never_reach_the_caller_and_are_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    n = Notifier.from_env()
    with caplog.at_level(logging.DEBUG, logger="proxy.service.notify"):
        for _ in range(3):
            n.watchdog()
        n.ready("x")
    n.close()
    n.ready("after close")
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.DEBUG


def test_send_to_a_full_socket_buffer_does_not_block_or_raise(
    notifier: Notifier, receiver: socket.socket
) -> None:
    # Nobody reads: the receive queue fills and sendto would block if it could.
    for _ in range(10_000):
        notifier.status("x" * 1000)
    assert drain(receiver)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        pytest.param("100000", None, 0.05, id="half-of-usec"),
        pytest.param("10000000", "self", 5.0, id="pid-matches"),
        pytest.param("100000", "other", None, id="pid-is-another-process"),
        pytest.param("0", None, None, id="zero"),
        pytest.param("-5", None, None, id="negative"),
        pytest.param("soon", None, None, id="not-a-number"),
        pytest.param(None, None, None, id="unset"),
    ],
)
def test_watchdog_interval_follows_watchdog_usec_and_pid(
    receiver: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + (pid == "other")))
    n = Notifier.from_env()
    try:
        assert n.watchdog_interval_s == expected
    finally:
        n.close()


async def next_datagram(sock: socket.socket) -> bytes:
    async with asyncio.timeout(5):
        return await asyncio.get_running_loop().sock_recv(sock, 4096)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_watchdog_task_pings_repeatedly_and_stops_when_cancelled(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch, loop_factory: LoopFactory
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier.from_env()

    async def scenario() -> None:
        task = asyncio.create_task(watchdog_task(n))
        for _ in range(3):
            assert await next_datagram(receiver) == b"WATCHDOG=1"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        drain(receiver)
        await asyncio.sleep(4 * 0.05)
        assert drain(receiver) == []

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(scenario())
    finally:
        n.close()


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_watchdog_pings_stop_while_the_event_loop_is_blocked(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch, loop_factory: LoopFactory
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    n = Notifier.from_env()
    during_block: list[bytes] = []

    def block_the_loop() -> None:
        # Drain and re-read on the loop thread: nothing else on the loop runs in between,
        # so any datagram here came from outside the loop. 10 intervals of blocking.
        drain(receiver)
        time.sleep(0.5)
        during_block.extend(drain(receiver))

    async def scenario() -> None:
        task = asyncio.create_task(watchdog_task(n))
        await next_datagram(receiver)
        asyncio.get_running_loop().call_soon(block_the_loop)
        await asyncio.sleep(0)
        assert await next_datagram(receiver) == b"WATCHDOG=1"  # resumes once unblocked
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(scenario())
    finally:
        n.close()
    assert during_block == []
