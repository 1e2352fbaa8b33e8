"""The fault matrix of the box: what the real ``model-router serve`` process promises when the
machine under it misbehaves (a full disk, SIGKILL mid-write, a locked or corrupt usage
database, no descriptors left, a clock step, a provider host that does not resolve or drops
packets, a thousand slow clients). Each row starts the server as a subprocess against the
simulator, as systemd would run it; README's "Faults of the box" table is what they check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import procs
from tests.conftest import server_log, spawn_server, stop_server

MSG = [{"role": "user", "content": "hello there"}]
MODEL = "gpt-5-nano"


@dataclass
class Server:
    """A running ``model-router serve``: its process, URL, state directory and log."""

    proc: subprocess.Popen[str]
    url: str
    state: Path
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, orjson.loads(raw) if path != "/metrics" else raw.decode()

    def status(self) -> dict[str, Any]:
        return dict(self.get("/v1/router/status")[1])

    def metrics(self) -> dict[str, float]:
        text = self.get("/metrics")[1]
        return {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.labels
        }

    def client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="k", max_retries=0, timeout=30)
        self.clients.append(client)
        return client

    def ask(self, stream: bool = False, model: str = MODEL, rid: str | None = None) -> str:
        """One answer through the SDK; returns its text (a stream must end with [DONE])."""
        headers = {"x-request-id": rid} if rid else None
        client = self.client() if not self.clients else self.clients[0]
        if not stream:
            done = client.chat.completions.create(
                model=model,
                messages=MSG,  # type: ignore[arg-type]
                extra_headers=headers,
            )
            return done.choices[0].message.content or ""
        parts = []
        for chunk in client.chat.completions.create(
            model=model,
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
            extra_headers=headers,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)

    def log(self) -> str:
        return server_log(self.proc)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        stop_server(self.proc)


def serve(
    state: Path,
    config: str = "",
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
    args: tuple[str, ...] = ("--demo",),
) -> Server:
    state.mkdir(parents=True, exist_ok=True)
    path = state / "config.toml"
    path.write_text(config or "[probes]\nenabled = false\n")
    proc, url = spawn_server(
        ["serve", *args, "--port", "0", "--config", str(path)],
        {"MODEL_ROUTER_DEMO_SCALE": "0.0", "STATE_DIRECTORY": str(state), **(env or {})},
        log_path=str(log_path) if log_path else None,
        preexec_fn=preexec_fn,
    )
    return Server(proc, url, state)


@contextlib.contextmanager
def running(state: Path, config: str = "", **kw: Any) -> Iterator[Server]:
    server = serve(state, config, **kw)
    try:
        yield server
    finally:
        server.stop()


def until(check: Callable[[], bool], within_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not true within {within_s} s")


def rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT request_id, cost FROM usage").fetchall()
    finally:
        conn.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


USAGE = "[probes]\nenabled = false\n[usage]\nflush_ms = {flush_ms}\nqueue_max = {queue_max}\n"


# --- 1. disk full ----------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A directory whose writes can be made to fail: a 8 MiB tmpfs filled to the brim (real
    ENOSPC) where mounting is allowed, else RLIMIT_FSIZE lowered on the server (EFBIG: the
    same failing ``write()`` for SQLite and the log handler, another errno)."""

    path: Path
    how: str  # "tmpfs" or "rlimit_fsize"
    filler: Path | None = None

    def fill(self, pid: int) -> None:
        if self.how == "rlimit_fsize":
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
            return
        self.filler = self.path / "filler"
        with open(self.filler, "wb", buffering=0) as fh:
            for size in (1 << 16, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * size)
        # tmpfs counts whole pages: a file whose last page is part-filled can still grow to
        # the page's end with no space left. Fill that slack in the files the router appends
        # to (its log), or a few short access-log lines still fit and nothing fails.
        for path in self.path.iterdir():
            if path.is_file() and path != self.filler:
                with open(path, "ab", buffering=0) as fh, contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\n")
        with pytest.raises(OSError) as exc:
            (self.path / "probe").write_bytes(b"x" * 8192)
        assert exc.value.errno == errno.ENOSPC

    def free(self, pid: int) -> None:
        if self.how == "rlimit_fsize":
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
            return
        assert self.filler is not None
        self.filler.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.path / "probe").unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    path = tmp_path / "disk"
    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode == 0:
        print("disk full by: an 8 MiB tmpfs filled to ENOSPC")
        try:
            yield SmallDisk(path, "tmpfs")
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    # Not root, or a container without CAP_SYS_ADMIN: say so in the test's output.
    print(f"disk full by: RLIMIT_FSIZE (EFBIG), since mount failed: {mount.stderr.strip()}")
    yield SmallDisk(path, "rlimit_fsize")


def test_disk_full_keeps_serving_reports_it_and_writes_the_queue_when_space_returns(
    small_disk: SmallDisk,
) -> None:
    state = small_disk.path / "state"
    log = small_disk.path / "router.log"  # stderr: the access log too, as StandardError=file:
    config = USAGE.format(flush_ms=20, queue_max=12)
    with running(state, config, log_path=log) as server:
        for _ in range(3):
            server.ask()
        until(lambda: server.status()["usage_log"]["written_rows"] == 3, what="3 rows written")
        small_disk.fill(server.pid)
        # Requests keep being served, streams and not, while nothing can be written.
        answers = [server.ask(stream=i % 2 == 1) for i in range(20)]
        assert all(answers)
        until(lambda: server.status()["usage_log"]["ok"] is False, what="usage log error")
        usage = server.status()["usage_log"]
        assert usage["written_rows"] == 3
        # Bounded: queue_max rows wait, the rest are counted as dropped.
        assert usage["queued_rows"] == 12 and usage["dropped_rows"] == 8, usage
        access = server.status()["access_log"]
        assert access["ok"] is False and access["write_errors"] >= 1, access
        if small_disk.how == "tmpfs":
            assert "full" in usage["error"], usage  # sqlite3: "database or disk is full"
            assert "No space left" in access["error"], access
        code, ready = server.get("/readyz")
        assert code == 200 and ready["status"] == "ready"
        assert set(ready["degraded"]) == {"usage_log", "access_log"}, ready
        m = server.metrics()
        assert m["model_router_usage_log_ok"] == 0 and m["model_router_access_log_ok"] == 0
        assert m["model_router_usage_log_dropped_rows_total"] == 8
        assert m["model_router_usage_log_queued_rows"] == 12
        assert m["model_router_access_log_write_errors_total"] >= 1
        # The writer waits on a thread, never the loop: no lag sample reached 2.5 s.
        hist = {
            s.labels.get("le"): s.value
            for f in text_string_to_metric_families(server.get("/metrics")[1])
            for s in f.samples
            if s.name == "model_router_event_loop_lag_seconds_bucket"
        }
        assert hist["2.5"] == hist["+Inf"], hist

        small_disk.free(server.pid)
        until(lambda: server.status()["usage_log"]["ok"] is True, what="usage log recovers")
        usage = server.status()["usage_log"]
        assert usage["written_rows"] == 15 and usage["queued_rows"] == 0, usage
        server.ask()
        until(lambda: server.status()["access_log"]["ok"] is True, what="access log recovers")
        assert server.get("/readyz")[1]["degraded"] == {}
        until(lambda: server.status()["usage_log"]["written_rows"] == 16, what="new row")
    db = state / "model-router.db"
    assert integrity(db) == "ok"
    assert len(rows(db)) == 16


# --- 2. SIGKILL during a burst of writes -----------------------------------------------------

FLUSH_MS = 100.0
# A row is committed within one flush interval of its answer, plus the write itself; the
# margin absorbs a loaded CI machine. Rows answered longer ago than this must survive SIGKILL.
KILL_WINDOW_S = FLUSH_MS / 1000 + 1.5


def test_sigkill_during_a_write_burst_keeps_the_db_sound_and_the_budget_reads_back(
    tmp_path: Path,
) -> None:
    config = USAGE.format(flush_ms=FLUSH_MS, queue_max=10_000) + "[budget]\ndaily_usd = 1000.0\n"
    server = serve(tmp_path, config)
    done: list[tuple[str, float]] = []  # (request id, when the answer completed)
    stop = threading.Event()

    def burst() -> None:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
        with client:
            while not stop.is_set():
                rid = uuid.uuid4().hex
                try:
                    client.chat.completions.create(
                        model=MODEL,
                        messages=MSG,  # type: ignore[arg-type]
                        extra_headers={"x-request-id": rid},
                    )
                except openai.APIError:
                    return  # the server is gone
                done.append((rid, time.monotonic()))

    threads = [threading.Thread(target=burst) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        until(lambda: len(done) >= 50, within_s=60, what="50 answers")
        # Long enough that many answers are older than the window when the kill comes.
        first = done[0][1]
        until(lambda: time.monotonic() - first > 3 * KILL_WINDOW_S, what="the burst runs")
        killed_at = time.monotonic()
        server.proc.kill()
        server.proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
    db = tmp_path / "model-router.db"
    assert integrity(db) == "ok"
    logged = {rid for rid, _ in rows(db)}
    old = [rid for rid, at in done if at < killed_at - KILL_WINDOW_S]
    missing = [rid for rid in old if rid not in logged]
    assert old and not missing, f"{len(missing)} of {len(old)} rows older than the window lost"
    # What was lost is at most the answers of the window before the kill.
    lost = [rid for rid, _ in done if rid not in logged]
    recent = [rid for rid, at in done if at >= killed_at - KILL_WINDOW_S]
    assert len(lost) <= len(recent)
    # The restarted server reads today's spend back from the database.
    spent = sum(cost for _, cost in rows(db))
    assert spent > 0
    with running(tmp_path, config) as again:
        spend = again.status()["spend"]
        assert spend["today_usd"] == pytest.approx(spent, abs=1e-6)
        assert spend["remaining_usd"] == pytest.approx(1000.0 - spent, abs=1e-6)


# --- 3. locked and corrupt usage database ----------------------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO usage (ts, request_id, endpoint, stream, intent, attempts, status,"
             " total_ms, prompt_tokens, completion_tokens, cost, cache_hit)"
             " VALUES (0, 'locker', 'chat', 0, 'x', 0, 0, 0, 0, 0, 0, 0)")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def test_a_usage_db_locked_by_another_process_is_reported_and_caught_up(tmp_path: Path) -> None:
    db = tmp_path / "model-router.db"
    with running(tmp_path, USAGE.format(flush_ms=20, queue_max=100)) as server:
        server.ask()
        until(lambda: server.status()["usage_log"]["written_rows"] == 1, what="first row")
        # Another process holds the write lock (an open write transaction), as `sqlite3`
        # would during a long manual edit.
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            for i in range(5):
                assert server.ask(stream=i % 2 == 0)
            until(lambda: server.status()["usage_log"]["ok"] is False, what="lock reported")
            usage = server.status()["usage_log"]
            assert "locked" in usage["error"], usage
            assert usage["queued_rows"] == 5 and usage["dropped_rows"] == 0, usage
            assert "usage_log" in server.get("/readyz")[1]["degraded"]
            assert server.metrics()["model_router_usage_log_ok"] == 0
        finally:
            assert locker.stdin is not None
            locker.stdin.write("\n")
            locker.stdin.close()
            locker.wait(10)
            assert locker.stdout is not None
            locker.stdout.close()
        until(lambda: server.status()["usage_log"]["ok"] is True, what="lock released")
        usage = server.status()["usage_log"]
        assert usage["written_rows"] == 6 and usage["dropped_rows"] == 0, usage
        assert "database is locked" in server.log()
    assert sorted(r[0] for r in rows(db)) != [] and len(rows(db)) == 6


GARBAGE = b"this is not an SQLite database, just what a bad copy left behind\n" * 64


def test_a_corrupt_usage_db_is_moved_aside_at_start_and_when_replaced_while_running(
    tmp_path: Path,
) -> None:
    db = tmp_path / "model-router.db"
    db.write_bytes(GARBAGE)
    config = USAGE.format(flush_ms=20, queue_max=100) + "[budget]\ndaily_usd = 5.0\n"
    with running(tmp_path, config) as server:  # starts instead of refusing
        status = server.status()
        moved = status["usage_log"]["quarantined"]
        assert len(moved) == 1 and re.search(r"model-router\.db\.corrupt-\d{8}T\d{6}Z", moved[0])
        assert Path(moved[0]).read_bytes() == GARBAGE  # kept for inspection, not deleted
        assert (
            "moved the file aside to" in server.log() and "not an SQLite database" in server.log()
        )
        assert status["spend"]["today_usd"] == 0
        for _ in range(3):
            server.ask()
        until(lambda: server.status()["usage_log"]["written_rows"] == 3, what="3 rows")
        # Someone copies a broken file over the open database.
        (tmp_path / "incoming").write_bytes(GARBAGE)
        os.replace(tmp_path / "incoming", db)
        for _ in range(2):
            server.ask(stream=True)
        until(lambda: server.status()["usage_log"]["written_rows"] == 5, what="2 more rows")
        usage = server.status()["usage_log"]
        assert len(usage["quarantined"]) == 2 and usage["dropped_rows"] == 0, usage
        assert usage["ok"] is True
        assert server.metrics()["model_router_usage_log_quarantined_files_total"] == 2
    assert integrity(db) == "ok" and len(rows(db)) == 2


# --- 4. file descriptors exhausted -----------------------------------------------------------

NOFILE = 200  # -> (200 - FD_RESERVE) // 2 = 68 client connections
FD_CAP = 68
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


def raw_request(sock: socket.socket, body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    sock.sendall(REQUEST % (len(data), data))
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_no_descriptors_left_answers_503_or_closes_cleanly_and_serves_once_they_close(
    tmp_path: Path, sim_process: procs.Service
) -> None:
    # Idle clients hold their connections for the whole test, all from one address.
    limits = "[limits]\nheader_timeout_s = 120.0\nfirst_request_timeout_s = 120.0\n"
    config = procs.router_config(sim_process.url).replace("[limits]\n", limits)
    config += "\n[probes]\nenabled = false\n"

    def low_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    server = serve(tmp_path, config, env=procs.router_env(), preexec_fn=low_nofile, args=())
    host, port = server.url.removeprefix("http://").split(":")
    idle: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        assert f"holds {FD_CAP} client connections" in server.log()
        body = {"model": "auto", "messages": MSG}
        # Idle clients take every connection the limit allows.
        for _ in range(FD_CAP):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        until(lambda: len(os.listdir(f"/proc/{server.pid}/fd")) >= FD_CAP + 10, what="accepted")
        # Past the cap: a 503 in OpenAI's shape while descriptors remain, then closed sockets
        # (libuv accepts and closes on EMFILE); never a hang, never a crash.
        answers: Counter[str] = Counter()
        for _ in range(NOFILE):
            try:
                sock = socket.create_connection((host, int(port)), timeout=10)
            except OSError as exc:
                answers[f"connect: {type(exc).__name__}"] += 1
                continue
            flood.append(sock)
            try:
                head = raw_request(sock, body)
            except (ConnectionResetError, BrokenPipeError):
                answers["reset"] += 1
                continue
            answers[
                "503" if head.startswith(b"HTTP/1.1 503") else head[:40].decode() or "closed"
            ] += 1
        clean = {"503", "reset", "closed", "connect: ConnectionRefusedError"}
        assert set(answers) <= clean, answers
        assert answers["503"] > 0, answers
        cpu = procs.cpu_seconds(server.pid)
        time.sleep(1.0)
        # An accept loop spinning on EMFILE would burn a core; a quiet one uses ~nothing.
        assert procs.cpu_seconds(server.pid) - cpu < 0.5
        assert server.proc.poll() is None
        for sock in flood:
            sock.close()
        # A client admitted under the cap is served: its upstream socket was kept back.
        head = raw_request(idle[0], body)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
    finally:
        for sock in idle + flood:
            sock.close()
    try:
        until(
            lambda: len(os.listdir(f"/proc/{server.pid}/fd")) < FD_CAP,
            what="connections closed",
        )
        assert server.ask(model="auto") and server.ask(stream=True, model="auto")
        # Running out of descriptors is ours, not the providers': no breaker opened.
        deployments = server.status()["deployments"]
        assert all(d["breaker"] == "closed" for d in deployments), deployments
    finally:
        server.stop()


def test_a_first_request_after_descriptors_ran_out_is_not_failed_by_the_routers_own_files(
    tmp_path: Path,
) -> None:
    """The tables the router reads from its own package (OpenAI's field types, the
    classifier's weights) are read at start: a first request that meets EMFILE (the
    process's descriptors all taken, by anything) still gets its 400 naming the field, or
    its answer, never a 500 because a JSON file next to the code could not be opened."""
    server = serve(tmp_path)
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    try:
        # Settled (pools warmed), then not one descriptor more for the process.
        time.sleep(1.0)
        in_use = len(os.listdir(f"/proc/{server.pid}/fd"))
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (in_use, hard))
        bad = {"model": MODEL, "messages": MSG, "temperature": "hot"}
        head, body = raw_exchange(sock, bad)
        assert head.startswith(b"HTTP/1.1 400"), (head, body)
        assert orjson.loads(body)["error"]["param"] == "temperature", body
        for model in (MODEL, "auto:fast"):
            head, body = raw_exchange(sock, {"model": model, "messages": MSG})
            error = orjson.loads(body).get("error") or {}
            assert error.get("code") != "internal_error", (model, head, body)
            # An upstream socket that could not be opened is the upstream's 502, named.
            assert head.startswith(b"HTTP/1.1 200") or (
                head.startswith(b"HTTP/1.1 502") and error["code"] == "upstream_unavailable"
            ), (model, head, body)
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        head, body = raw_exchange(sock, {"model": "auto:fast", "messages": MSG})
        assert head.startswith(b"HTTP/1.1 200"), (head, body)
        assert "unhandled" not in server.log()
    finally:
        sock.close()
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        server.stop()


def raw_exchange(sock: socket.socket, body: dict[str, Any]) -> tuple[bytes, bytes]:
    """One request on a kept-alive connection; (status line and headers, body)."""
    got = raw_request(sock, body)
    head, _, rest = got.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest[:length]


# --- 5. clock steps --------------------------------------------------------------------------
# The wall clock is stepped with libfaketime (Debian's `faketime` package; .ci/run installs
# it): LD_PRELOAD'ed into the server, re-reading its offset file on every call, with
# CLOCK_MONOTONIC left alone, which is exactly what an NTP step does to a process.

FAKETIME_LIBS = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))


@dataclass
class FakeClock:
    offset_file: Path

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(FAKETIME_LIBS[0]),
            "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step_to(self, offset_s: float) -> None:
        """The server's wall clock reads real time + ``offset_s`` from now on."""
        self.offset_file.write_text(f"{offset_s:+.3f}\n")


@pytest.fixture
def fake_clock(tmp_path: Path) -> FakeClock:
    if not FAKETIME_LIBS:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing: .ci/run installs the faketime package")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    clock = FakeClock(tmp_path / "faketime")
    clock.step_to(0)
    return clock


def deployment(server: Server, key: str) -> dict[str, Any]:
    return next(d for d in server.status()["deployments"] if d["deployment"] == key)


CLOCK_CONFIG = """
[probes]
enabled = false
[breaker]
consecutive_failures = 2
base_open_s = 6.0
max_open_s = 6.0
jitter = 0.0
half_open_successes = 1
"""


def test_a_wall_clock_step_moves_no_breaker_and_no_latency_estimate(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    sim_port = free_port()
    nano, mini = "gpt-5-nano@openai", "gpt-5-mini@openai"
    # Simulated latencies at 5 % of the catalog's: a decay that jumped would pull the
    # estimates 20x up toward the nominal figures.
    env = {**fake_clock.env(), "MODEL_ROUTER_DEMO_SCALE": "0.05"}
    server = serve(tmp_path, CLOCK_CONFIG, env=env, args=("--demo", "--sim-port", str(sim_port)))
    sim = f"http://127.0.0.1:{sim_port}/_sim/fault"
    try:
        for _ in range(4):
            server.ask(stream=True, model="gpt-5-mini")
        post(sim, {"model": "gpt-5-nano", "mode": "status", "status": 500})
        for _ in range(2):
            with pytest.raises(openai.APIStatusError):
                server.ask(model="gpt-5-nano")
        before = {d["deployment"]: d for d in server.status()["deployments"]}
        before_reset_in = server.status()["spend"]["resets_in_s"]
        assert before[nano]["breaker"] == "open" and before[mini]["samples"] >= 4
        for offset in (3600.0, -3600.0):
            fake_clock.step_to(offset)
            # The step took: the budget's wall clock moved by the offset.
            resets_in = server.status()["spend"]["resets_in_s"]
            moved = abs(resets_in - (before_reset_in - offset) % 86_400)
            assert min(moved, 86_400 - moved) < 60, (offset, before_reset_in, resets_in)
            now = {d["deployment"]: d for d in server.status()["deployments"]}
            # Still open, with the backoff it had (monotonic), not an hour more or less.
            assert now[nano]["breaker"] == "open", (offset, now[nano])
            assert 0 < now[nano]["breaker_detail"]["open_remaining_s"] <= 6.0
            # No breaker opened or closed, no estimate moved, no sample aged by an hour.
            assert {k: d["breaker"] for k, d in now.items()} == {
                k: d["breaker"] for k, d in before.items()
            }
            assert now[mini]["ttft_estimate_ms"] == pytest.approx(
                before[mini]["ttft_estimate_ms"], rel=0.05
            ), (offset, before[mini], now[mini])
            assert now[mini]["last_sample_age_s"] < 60, now[mini]
        # The backoff ends on the monotonic clock: the next request is the half-open trial.
        post(sim, {"model": "gpt-5-nano", "mode": "none"})
        until(
            lambda: deployment(server, nano)["breaker_detail"]["open_remaining_s"] == 0,
            what="the 6 s backoff ends",
        )
        assert server.ask(model="gpt-5-nano")
        assert deployment(server, nano)["breaker"] == "closed"
        assert deployment(server, nano)["breaker_detail"]["opened_count"] == 1
    finally:
        server.stop()


def test_the_daily_budget_rolls_over_at_utc_midnight_of_the_wall_clock(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    midnight = (int(time.time()) // 86_400 + 1) * 86_400
    config = USAGE.format(flush_ms=20, queue_max=100) + "[budget]\ndaily_usd = 1.0\n"
    env = fake_clock.env()
    with running(tmp_path, config, env=env) as server:
        fake_clock.step_to(midnight - 5.0 - time.time())  # 23:59:55 UTC in the server
        server.ask()
        spend = server.status()["spend"]
        assert spend["today_usd"] > 0
        assert spend["resets_at"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(midnight))
        until(lambda: server.status()["spend"]["today_usd"] == 0, what="the budget day ends")
        spend = server.status()["spend"]
        assert spend["resets_at"] == time.strftime(
            "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(midnight + 86_400)
        )
        assert spend["remaining_usd"] == 1.0
        until(lambda: server.status()["usage_log"]["written_rows"] == 1, what="row written")
    # Restarted on the new day: yesterday's row stays out of today's spend.
    with running(tmp_path, config, env=env) as server:
        assert server.status()["spend"]["today_usd"] == 0
        server.ask()
        assert server.status()["spend"]["today_usd"] > 0
    conn = sqlite3.connect(tmp_path / "model-router.db")
    try:
        (old_ts,), (new_ts,) = conn.execute("SELECT ts FROM usage ORDER BY id").fetchall()
    finally:
        conn.close()
    assert old_ts < midnight <= new_ts


def test_a_clock_stepped_back_across_midnight_does_not_hand_out_the_day_again(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    """NTP stepping the clock back over midnight must not restart the budget day: yesterday's
    budget was spent, and today's spend must not be forgotten when today comes round again."""
    midnight = (int(time.time()) // 86_400 + 1) * 86_400
    config = USAGE.format(flush_ms=20, queue_max=100) + "[budget]\ndaily_usd = 0.000001\n"
    with running(tmp_path, config, env=fake_clock.env()) as server:
        fake_clock.step_to(midnight + 5.0 - time.time())  # 00:00:05 UTC of the new day
        server.ask()  # the day's budget is spent by one answer
        spent = server.status()["spend"]["today_usd"]
        assert spent > 0.000001
        with pytest.raises(openai.RateLimitError):
            server.ask()
        fake_clock.step_to(midnight - 5.0 - time.time())  # stepped back to 23:59:55
        assert server.status()["spend"]["today_usd"] == spent
        with pytest.raises(openai.RateLimitError):
            server.ask()
        fake_clock.step_to(midnight + 10.0 - time.time())  # the new day again, 00:00:10
        assert server.status()["spend"]["today_usd"] == spent
        with pytest.raises(openai.RateLimitError):
            server.ask()


def post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 6. a provider host that does not resolve, or drops packets ------------------------------


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that answers no SYN: a listener that never accepts, its backlog full.
    Nothing leaves the box (an unroutable outside address would)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", port))
    finally:
        probe.close()
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


DEAD_HOSTS = """
[server]
connect_timeout_s = 1.0
[providers.openai]
base_url = "{sim}/v1"
[providers.openrouter]
base_url = "{sim}/v1"
[providers.google]
base_url = "http://generativelanguage.invalid/v1beta/openai"
[providers.deepseek]
base_url = "http://127.0.0.1:{hole}/v1"
[probes]
enabled = true
interval_s = 1.0
jitter = 0.0
timeout_s = 2.0
max_daily_spend_usd = 1000.0
[breaker]
consecutive_failures = 2
base_open_s = 2.0
max_open_s = 8.0
jitter = 0.0
half_open_successes = 1
"""
WATCH_S = 9.0


def test_a_host_that_does_not_resolve_or_drops_packets_opens_its_breaker_and_others_serve(
    tmp_path: Path, sim_process: procs.Service, black_hole: int
) -> None:
    config = DEAD_HOSTS.format(sim=sim_process.url, hole=black_hole)
    with running(tmp_path, config, env=procs.router_env(), args=()) as server:
        started = time.monotonic()
        dead = {
            d["deployment"]
            for d in server.status()["deployments"]
            if d["provider"] in ("google", "deepseek")
        }
        assert len(dead) == 4
        # Others serve meanwhile: routed by intent, and by a fallback list whose first model
        # only the black hole serves.
        while time.monotonic() - started < WATCH_S:
            assert server.ask(stream=True, model="auto:fast")
            raw = server.client().chat.completions.with_raw_response.create(
                model="deepseek-v3.2",
                messages=MSG,  # type: ignore[arg-type]
                extra_body={"models": ["deepseek-v3.2", "gpt-5-mini"]},
            )
            assert raw.headers["x-router-model"] == "gpt-5-mini"
            time.sleep(0.5)
        status = server.status()
        rows = {d["deployment"]: d for d in status["deployments"]}
        for key in dead:
            assert rows[key]["breaker_detail"]["opened_count"] >= 1, rows[key]
        live = [d for k, d in rows.items() if k not in dead]
        assert all(d["breaker"] == "closed" for d in live)
        # Not a retry loop: each dead deployment was tried `consecutive_failures` times, then
        # once per half-open trial, whose backoff doubles (2, 4, 8 s) -- not once a second.
        openings = sum(rows[k]["breaker_detail"]["opened_count"] for k in dead)
        assert openings <= 3 * len(dead), openings
        allowed = sum(2 + rows[k]["breaker_detail"]["opened_count"] for k in dead)
        print(
            f"dead deployments: {openings} openings, {status['probes']} probes; allowed {allowed}"
        )
        assert status["probes"]["failed"] <= allowed + len(dead), (status["probes"], allowed)
        code, ready = server.get("/readyz")
        assert code == 200 and ready["deployments_available"] == len(rows) - len(dead)
        # A model served by a dead host and a live one goes to the live one at once.
        raw = server.client().chat.completions.with_raw_response.create(
            model="gemini-2.5-flash",
            messages=MSG,  # type: ignore[arg-type]
        )
        assert raw.headers["x-router-provider"] == "openrouter"
        # A model only a dead host serves gets a clean error in OpenAI's shape.
        with pytest.raises(openai.APIStatusError) as exc:
            server.ask(model="deepseek-v3.2")
        assert exc.value.status_code in (502, 503, 504), exc.value


# --- 7. memory: a thousand slow streams with large prompts -----------------------------------

STREAMS = 1000
PROMPT_BYTES = 32 * 1024
# Documented in README ("Faults of the box"): what one open stream may hold, its prompt
# included, while its client reads slowly.
PER_STREAM_KIB = 160
# A stream whose upstream sends far faster than its client reads: measured ~2.9 MiB, reached
# within ~2 s and flat after, whatever the answer's length (the rest waits in the kernel's
# socket queues and upstream, behind aiohttp's paused reads).
FLOOD_KIB = 4096


def raise_nofile(n: int = 8192) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def slow_stream(
    host: str, port: int, body: bytes, opened: asyncio.Event, stop: asyncio.Event
) -> int:
    """A client that sends a large prompt, then reads its stream 512 bytes a second."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.transport.pause_reading()
    writer.write(REQUEST % (len(body), body))
    await writer.drain()
    writer.transport.resume_reading()
    got = await reader.read(512)
    opened.set()
    total = len(got)
    try:
        while not stop.is_set() and got:
            await asyncio.sleep(1.0)
            got = await reader.read(512)
            total += len(got)
    finally:
        writer.close()
    return total


# A few streams whose upstream sends a long answer as fast as it can (80,000 chunks, ~10 MiB)
# to clients that read 512 bytes a second: a proxy that buffered for them would grow by that.
FLOODS = 4
FLOOD_MODEL = "gpt-5-nano"
SLOW_MODEL = "gpt-5-mini"


@pytest.mark.timeout(120)
def test_a_thousand_slow_streams_with_large_prompts_stay_within_a_bound_per_stream(
    tmp_path: Path,
) -> None:
    raise_nofile()
    # Answers last ~15 s (50 chunks, 300 ms apart) so every stream is open when RSS is read.
    sim = procs.spawn("sim", procs.sim_argv(ttft_ms=0, gap_ms=0, tokens=8), cpus=None)
    post(f"{sim.url}/_sim/profile", {"model": SLOW_MODEL, "gap_ms": 300, "tokens": 50})
    post(f"{sim.url}/_sim/profile", {"model": FLOOD_MODEL, "gap_ms": 0, "tokens": 80_000})
    config = procs.router_config(sim.url) + "\n[probes]\nenabled = false\n"
    server = serve(tmp_path, config, env=procs.router_env(), preexec_fn=raise_nofile, args=())
    host, port = server.url.removeprefix("http://").split(":")
    prompt = "x" * PROMPT_BYTES

    def body(model: str) -> bytes:
        messages = [{"role": "user", "content": prompt}]
        return orjson.dumps({"model": model, "stream": True, "messages": messages})

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        opened = [asyncio.Event() for _ in range(STREAMS + FLOODS)]
        tasks = []

        async def start(first: int, n: int, model: str) -> None:
            for i in range(first, first + n):
                task = slow_stream(host, int(port), body(model), opened[i], stop)
                tasks.append(asyncio.create_task(task))
                if i % 100 == 99:
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened[first:][:n])), 90)

        # Warm: the first requests allocate what every later one reuses (pools, caches).
        await asyncio.to_thread(server.ask, stream=True, model="gpt-5")
        f: dict[str, Any] = {"idle": procs.rss_kib(server.pid)}
        t0 = time.monotonic()
        await start(STREAMS, FLOODS, FLOOD_MODEL)
        await asyncio.sleep(3.0)
        f["flood_3s"] = procs.rss_kib(server.pid)
        await asyncio.sleep(3.0)
        f["flood_6s"] = procs.rss_kib(server.pid)
        await start(0, STREAMS, SLOW_MODEL)
        opened_at = time.monotonic()
        f["opened"] = procs.rss_kib(server.pid)
        await asyncio.sleep(3.0)  # every stream under way, its buffers in use
        f["held"] = procs.rss_kib(server.pid)
        f["open"] = server.metrics()["model_router_open_streams"]
        stop.set()
        f["read"] = await asyncio.gather(*tasks)
        f["phases"] = (
            f"opened after {opened_at - t0:.1f} s, closed after {time.monotonic() - t0:.1f} s"
        )
        return f

    try:
        f = asyncio.run(run())
        flood = (f["flood_6s"] - f["idle"]) / FLOODS
        per_stream = (max(f["opened"], f["held"]) - f["flood_6s"]) / STREAMS
        print(
            f"RSS idle {f['idle'] / 1024:.1f} MiB; {FLOODS} flooded slow streams: "
            f"{f['flood_3s'] / 1024:.1f} MiB after 3 s, {f['flood_6s'] / 1024:.1f} after 6 s "
            f"({flood:.0f} KiB each); +{STREAMS} slow streams with {PROMPT_BYTES // 1024} KiB "
            f"prompts: {f['opened'] / 1024:.1f} MiB opened, {f['held'] / 1024:.1f} MiB 3 s on "
            f"({per_stream:.1f} KiB each); {f['phases']}"
        )
        # Bounded: a flooded stream holds a few MiB of its ~10 MiB answer, no more at 6 s
        # than at 3 s while the upstream still has most of it to send.
        assert flood <= FLOOD_KIB, flood
        assert f["flood_6s"] - f["flood_3s"] <= FLOODS * 256
        assert f["open"] == STREAMS + FLOODS
        assert per_stream <= PER_STREAM_KIB
        assert all(n > 0 for n in f["read"])
        until(lambda: server.metrics()["model_router_open_streams"] == 0, what="streams end")
        assert server.ask(model="gpt-5")
    finally:
        server.stop()
        sim.stop()
