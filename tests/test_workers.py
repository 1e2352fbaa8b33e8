"""``model-router serve --workers 2``: the real supervising parent and its worker processes on
one SO_REUSEPORT port, under a stand-in systemd (a datagram NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from tests.cluster_support import free_port, http, wait_for, write_config
from tests.conftest import server_log, spawn_server, stop_server
from tests.test_service import finish, notify_socket, receive

__all__ = ["notify_socket"]  # the fixture, imported for use here

MSG = [{"role": "user", "content": "hello"}]
# Real processes start slowly on a loaded 2-core box; the default 60 s is for one process.
pytestmark = pytest.mark.timeout(180)


def two_free_ports() -> int:
    """A free port whose next one is free too: the workers' own listeners take both."""
    base = free_port()
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                base = free_port()


def worker_pid(url: str) -> int:
    # A fresh connection each time, so the kernel's SO_REUSEPORT choice is made anew.
    return int(
        http("GET", f"{url}/v1/router/status", None, {"Connection": "close"}).body["worker"]["pid"]
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    proc, url = spawn_server(
        ["serve", "--demo", "--workers", "2", "--port", "0"],
        {
            "NOTIFY_SOCKET": path,
            "MODEL_ROUTER_DEMO_SCALE": "0.02",
            "STATE_DIRECTORY": str(tmp_path),
        },
        timeout=60,
    )
    try:
        ready = receive(sock, "READY")[-1]
        assert "2 workers" in ready["STATUS"]
        proc.send_signal(signal.SIGHUP)  # every worker reloads, then the parent is READY again
        reloaded = receive(sock, "READY", timeout=60)
        assert "RELOADING" in reloaded[0] and reloaded[-1]["STATUS"] == "2 workers reloaded"
        seen: set[int] = set()
        wait_for(lambda: seen.add(worker_pid(url)) or len(seen) == 2, 10, "both workers answer")
        victim = min(seen)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), 5, "the worker is gone")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        for _ in range(10):
            answer = client.chat.completions.create(model="auto:fast", messages=MSG)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
        client.close()
        fresh: set[int] = set()
        wait_for(
            lambda: fresh.add(worker_pid(url)) or len(fresh - seen) == 1,
            60,
            "a new worker answers",
            step=0.1,
        )
        assert proc.poll() is None
        assert "exited with status -9; starting it again" in Path(proc.log_path).read_text()  # type: ignore[attr-defined]
        assert {f for f in (fresh | seen) if alive(f)} == (fresh | seen) - {victim}
    finally:
        assert stop_server(proc) == 0


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proxy.sim",
            "--ttft-ms",
            "300",
            "--gap-ms",
            "150",
            "--tokens",
            "10",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        sim_url = sim.stdout.readline().split("sim ready on ")[1].strip()
        base = two_free_ports()
        cfg = write_config(
            tmp_path / "router.toml",
            sim_url,
            {"probes": {"enabled": False}, "server": {"worker_port_base": base, "drain_s": 20.0}},
        )
        proc, _ = spawn_server(
            ["serve", "--config", str(cfg), "--workers", "2", "--port", "0"],
            {"OPENAI_API_KEY": "sim-key", "STATE_DIRECTORY": str(tmp_path)},
            timeout=60,
        )
        pids = [worker_pid(f"http://127.0.0.1:{base + i}") for i in range(2)]
        assert len(set(pids)) == 2
        texts: list[str] = []
        errors: list[str] = []
        started = threading.Barrier(5)

        def stream(port: int) -> None:
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
            )
            try:
                chunks = client.chat.completions.create(
                    model="gpt-4o-mini", messages=MSG, stream=True
                )  # type: ignore[arg-type]
                parts = []
                for i, chunk in enumerate(chunks):
                    if i == 1:
                        started.wait(10)
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                texts.append("".join(parts))
            except Exception as exc:
                errors.append(repr(exc))
            finally:
                client.close()

        threads = [threading.Thread(target=stream, args=(base + i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        started.wait(10)  # every stream has its first chunks: all four are mid-answer
        proc.send_signal(signal.SIGTERM)
        code, log = finish(proc, timeout=30)
        for t in threads:
            t.join(10)
        assert code == 0, log[-2000:]
        assert not errors, errors
        assert len(texts) == 4 and all(len(t.split()) == 10 for t in texts), texts
        assert not any(alive(p) for p in pids)
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


def test_a_config_the_workers_reject_on_sighup_is_reported_as_rejected(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """systemctl status must not say "reloaded" when every worker kept its old config."""
    sock, path = notify_socket
    cfg = tmp_path / "router.toml"
    cfg.write_text("[probes]\nenabled = false\n")
    proc, url = spawn_server(
        ["serve", "--demo", "--config", str(cfg), "--workers", "2", "--port", "0"],
        {
            "NOTIFY_SOCKET": path,
            "MODEL_ROUTER_DEMO_SCALE": "0.02",
            "STATE_DIRECTORY": str(tmp_path),
        },
        timeout=60,
    )
    try:
        receive(sock, "READY", timeout=60)
        cfg.write_text("[probes]\nenabled = false\nbogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        status = receive(sock, "READY", timeout=60)[-1]["STATUS"]
        assert status.startswith("reload rejected: probes.bogus: unknown key"), status
        assert "2 of 2 workers kept their previous config" in status
        assert http("GET", f"{url}/readyz").status == 200  # still serving, on the old config
        cfg.write_text("[probes]\nenabled = false\n")  # fixed: the next reload applies
        proc.send_signal(signal.SIGHUP)
        assert receive(sock, "READY", timeout=60)[-1]["STATUS"] == "2 workers reloaded"
    finally:
        assert stop_server(proc) == 0


def test_workers_drain_and_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """A parent killed outright (SIGKILL, the OOM killer) cannot pass SIGTERM on: its workers
    must notice, or they keep serving the port on an old config, unsupervised, beside the
    workers of the next start."""
    proc, url = spawn_server(
        ["serve", "--demo", "--workers", "2", "--port", "0"],
        {"MODEL_ROUTER_DEMO_SCALE": "0.02", "STATE_DIRECTORY": str(tmp_path)},
        timeout=60,
    )
    pids: set[int] = set()
    try:
        wait_for(lambda: pids.add(worker_pid(url)) or len(pids) == 2, 10, "both workers answer")
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in pids), 30, "the orphaned workers exit")
        with pytest.raises(OSError):
            http("GET", f"{url}/readyz")
        log = server_log(proc)
        assert log.count(f"the --workers parent (pid {proc.pid}) is gone") == 2, log[-2000:]
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
        stop_server(proc)


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_workers_refuse_a_port_in_use_in_one_line(reuse_port: bool, tmp_path: Path) -> None:
    """As a single process does: exit 2 and one line, not a traceback; and a port another
    router's workers listen on (SO_REUSEPORT, same user) is in use too, not shared."""
    with socket.socket() as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        args = ["serve", "--demo", "--workers", "2", "--port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "STATE_DIRECTORY": str(tmp_path)},
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"model-router: the router cannot listen on 127.0.0.1:{port}: the port is already in "
        f"use (`ss -ltnp 'sport = :{port}'` shows by what); stop that program or choose "
        "another port"
    ]


def test_status_reads_one_worker_per_frame_and_names_it(tmp_path: Path) -> None:
    """Each worker keeps its own history: ``model-router status`` on the shared port must show
    one worker's figures per frame (not /v1/router/status from one and the history from
    another) and say whose they are."""
    base = two_free_ports()
    cfg = tmp_path / "router.toml"
    cfg.write_text(f"[probes]\nenabled = false\n[server]\nworker_port_base = {base}\n")
    proc, url = spawn_server(
        ["serve", "--demo", "--config", str(cfg), "--workers", "2", "--port", "0"],
        {"MODEL_ROUTER_DEMO_SCALE": "0.02", "STATE_DIRECTORY": str(tmp_path)},
        timeout=60,
    )
    try:
        body = {"model": "gpt-4o-mini", "messages": MSG}
        for _ in range(12):  # fresh connections: the kernel spreads them over both workers
            assert http("POST", f"{url}/v1/chat/completions", body, {"Connection": "close"}).status
        own: dict[int, int] = {}

        def counted() -> bool:
            for i in range(2):
                hist = http("GET", f"http://127.0.0.1:{base + i}/v1/router/history").body
                own[i] = sum(sum(d["requests"]) for d in hist["deployments"])
            return sum(own.values()) == 12

        wait_for(counted, 30, "both workers' history holds the requests", step=0.5)
        assert all(own.values()), own  # both served some, or the check below proves nothing
        seen = set()
        for _ in range(8):
            done = subprocess.run(
                [sys.executable, "-m", "proxy", "status", "--url", url],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            head, totals = done.stdout.splitlines()[:2]
            index = int(head.split("  worker ")[1].split()[0])
            seen.add(index)
            assert totals.startswith(f"requests last hour {own[index]} "), (head, totals, own)
    finally:
        assert stop_server(proc) == 0
