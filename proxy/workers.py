"""``serve --workers N``: a supervising parent and N worker processes on one port.

Each worker is an ordinary ``model-router serve`` (its own uvloop, app and upstream pools)
bound with ``SO_REUSEPORT``, so the kernel spreads connections over them. The parent serves
no traffic. It speaks sd_notify to systemd for all of them: the workers report to the parent
over a socket of its own (the same protocol, with the sender's pid from SCM_CREDENTIALS), and
the parent says READY once every worker is ready. A worker that dies is started again (with a
growing pause if it keeps dying); SIGTERM is passed on and the parent waits for every worker
to drain; SIGHUP is passed on and READY follows when every worker has reloaded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence

from .accounting.usage_log import db_path
from .config import Config
from .service.notify import Notifier

log = logging.getLogger("model_router.workers")

# A worker that dies within this long of starting counts as crashing; the pause before its
# next start doubles each time, up to the cap.
CRASH_WINDOW_S = 10.0
RESTART_PAUSE_S = (0.2, 10.0)
# What the parent adds to the drain before it kills a worker that does not exit on SIGTERM.
STOP_GRACE_S = 10.0
_UCRED = struct.Struct("3i")
# The parent's pid, in each worker's environment: a worker started after its parent died
# would otherwise take its new parent (init, a subreaper) for its own.
PARENT_ENV = "MODEL_ROUTER_WORKERS_PARENT"
PARENT_CHECK_S = 0.5


def worker_db_path(config: Config, environ: dict[str, str], index: int) -> str:
    """Each worker keeps its own usage log: ``usage.db`` -> ``usage-w1.db``."""
    base = db_path(config.usage, environ)
    root, ext = os.path.splitext(base)
    return f"{root}-w{index}{ext or '.db'}"


def not_shared(workers: int) -> str:
    """What N workers without Redis do not share (said at start)."""
    return (
        f"{workers} workers without [cluster] redis_url: each worker keeps its own latency "
        f"table (learning only from its share of the traffic), circuit breakers (each must "
        f"see a provider fail itself), probe loop ({workers}x the probes and probe spend), "
        f"per-key rpm/tpm and concurrent-stream limits and daily budgets (a key may get up "
        f"to {workers}x its limits, and the global budget up to {workers}x), and response "
        f"cache. Usage logs are per worker (model-router-w<N>.db; `model-router report "
        f"--db A --db B` reads them together). Set [cluster] redis_url to share all but the "
        f"cache."
    )


async def watch_parent(stop: asyncio.Event) -> None:
    """In a worker: set ``stop`` (drain and exit, as on SIGTERM) once the parent is gone. A
    parent killed outright (SIGKILL, the OOM killer) cannot stop its workers, and an orphan
    would keep serving the port on its old config, beside the workers of the next start."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())
    while True:
        await asyncio.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            break
    log.error("the --workers parent (pid %d) is gone: draining and exiting", parent)
    stop.set()


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: fixes the port (a free one for 0) for
    the workers to bind. Connections go only to listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        # With SO_REUSEPORT the bind below would succeed on a port that another router's
        # workers (any program of this user with SO_REUSEPORT) listen on, and share it with
        # them; a plain bind fails there, as a single process's does.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class PortError(Exception):
    """The shared port could not be reserved; the CLI words it as a single process's."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class Worker:
    __slots__ = ("crashes", "index", "proc", "ready", "started")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.ready = False
        self.crashes = 0


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], workers: int) -> None:
        self.config = config
        self.argv = list(argv)  # serve's arguments, less --workers, --host and --port
        self.workers = [Worker(i) for i in range(workers)]
        self.notifier = Notifier.from_env()
        self.stopping = False
        self.reloading: set[int] = set()
        self.rejected: list[str] = []  # this reload's "reload rejected: ..." from workers
        self.port = 0
        self._sock: socket.socket | None = None
        self._address = ""
        self._all_ready = asyncio.Event()
        self._exited: asyncio.Queue[Worker] = asyncio.Queue()

    async def run(self) -> int:
        host = self.config.server.host
        try:
            reserved = reserve_port(host, self.config.server.port)
        except OSError as exc:
            raise PortError(exc) from None
        self.port = reserved.getsockname()[1]
        self._listen()
        loop = asyncio.get_running_loop()
        for w in self.workers:
            await self._spawn(w)
        if not self.config.cluster.enabled and len(self.workers) > 1:
            log.warning("%s", not_shared(len(self.workers)))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        try:
            code = await self._first_ready()
            reserved.close()
            if code:
                return code
            pids = " ".join(str(self._pid(w)) for w in self.workers)
            print(
                f"model-router ready on http://{host}:{self.port} "
                f"({len(self.workers)} workers, pids {pids})",
                flush=True,
            )
            self.notifier.ready(f"{len(self.workers)} workers serving on port {self.port}")
            await self._supervise()
            return 0
        finally:
            watchdog.cancel()
            reserved.close()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._sock is not None:
                loop.remove_reader(self._sock.fileno())
                self._sock.close()
            self.notifier.close()

    # --- children ----------------------------------------------------------------------

    async def _spawn(self, w: Worker) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["NOTIFY_SOCKET"] = self._address
        env[PARENT_ENV] = str(os.getpid())
        args = [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            *self.argv,
            "--host",
            self.config.server.host,
            "--port",
            str(self.port),
            "--worker-index",
            str(w.index),
        ]
        if w.proc is not None:
            # A worker restarted during a reload: its predecessor will not report; the new
            # one starts on the current config anyway.
            self._reload_done(w.proc.pid)
        # The workers' own lines go to stderr (the log): stdout carries only the parent's
        # one "ready on" line, which scripts and service managers wait for.
        w.proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=sys.stderr.fileno())
        w.started = time.monotonic()
        w.ready = False
        proc = w.proc

        async def wait() -> None:
            await proc.wait()
            if w.proc is proc:
                await self._exited.put(w)

        asyncio.create_task(wait(), name=f"worker-{w.index}-wait")  # noqa: RUF006
        log.info("worker %d started (pid %d)", w.index, proc.pid)

    def _pid(self, w: Worker) -> int:
        return w.proc.pid if w.proc is not None else 0

    async def _first_ready(self) -> int:
        """Wait until every worker is ready; a worker that exits first ends the start-up."""
        ready = asyncio.create_task(self._all_ready.wait())
        exited = asyncio.create_task(self._exited.get())
        done, _ = await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            ready.cancel()
            w = exited.result()
            code = w.proc.returncode if w.proc is not None else 1
            log.error("worker %d exited with status %s before it was ready", w.index, code)
            self.stopping = True
            await self._terminate_all()
            return code if code and code > 0 else 1
        exited.cancel()
        return 0

    async def _supervise(self) -> None:
        while True:
            w = await self._exited.get()
            if self.stopping:
                if all(x.proc is None or x.proc.returncode is not None for x in self.workers):
                    return
                continue
            code = w.proc.returncode if w.proc is not None else None
            quick = time.monotonic() - w.started < CRASH_WINDOW_S
            w.crashes = w.crashes + 1 if quick else 0
            pause = min(RESTART_PAUSE_S[1], RESTART_PAUSE_S[0] * 2 ** max(0, w.crashes - 1))
            log.error(
                "worker %d (pid %d) exited with status %s; starting it again in %.1f s",
                w.index,
                self._pid(w),
                code,
                pause,
            )
            await asyncio.sleep(pause)
            if not self.stopping:
                await self._spawn(w)

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        log.info("stopping: %d workers drain", len(self.workers))
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        grace = self.config.server.drain_s + STOP_GRACE_S
        asyncio.get_running_loop().call_later(grace, self._kill_stragglers)
        if all(w.proc is None or w.proc.returncode is not None for w in self.workers):
            self._exited.put_nowait(self.workers[0])

    def _kill_stragglers(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                log.error("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()

    async def _terminate_all(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            if w.proc is not None:
                try:
                    async with asyncio.timeout(self.config.server.drain_s + STOP_GRACE_S):
                        await w.proc.wait()
                except TimeoutError:
                    w.proc.kill()

    def _reload(self) -> None:
        if self.stopping:
            return
        self.notifier.reloading()
        self.rejected = []
        self.reloading = {self._pid(w) for w in self.workers if w.proc is not None}
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGHUP)

    # --- the workers' sd_notify messages -----------------------------------------------

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        name = f"model-router-{os.getpid()}-{os.urandom(4).hex()}"
        sock.bind("\0" + name)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        self._sock = sock
        self._address = "@" + name
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_message)

    def _on_message(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            if fields.get("READY") == "1":
                self._worker_ready(pid, fields.get("STATUS", ""))

    def _worker_ready(self, pid: int, status: str = "") -> None:
        for w in self.workers:
            if self._pid(w) == pid:
                w.ready = True
                log.info("worker %d (pid %d) ready", w.index, pid)
        if all(w.ready for w in self.workers):
            self._all_ready.set()
        self._reload_done(pid, status)

    def _reload_done(self, pid: int, status: str = "") -> None:
        if not self.reloading or pid not in self.reloading:
            return
        self.reloading.discard(pid)
        if status.startswith("reload rejected"):
            self.rejected.append(status)
        if self.reloading:
            return
        if self.rejected:
            # What systemctl status shows: a rejected config must not read as reloaded.
            summary = (
                f"{self.rejected[0]} ({len(self.rejected)} of {len(self.workers)} workers "
                f"kept their previous config)"
            )
            log.error("%s", summary)
            self.notifier.ready(summary)
        else:
            self.notifier.ready(f"{len(self.workers)} workers reloaded")

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


def supervise(config: Config, argv: Sequence[str], workers: int) -> int:
    import uvloop

    async def main() -> int:
        return await Supervisor(config, argv, workers).run()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
