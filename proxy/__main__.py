# Over 400 lines: the CLI (serve, check-config, report, status, hash-key, sim-fault), its options.
"""The CLI and composition root: ``model-router serve | check-config | report | status |
hash-key | sim-fault``. The help text a user reads is DESCRIPTION and each argument's help."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.util
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import uvloop
from aiohttp import web
from prometheus_client import disable_created_metrics

from proxy.accounting.usage_log import DB_NAME, db_path
from proxy.http.log_stream import ACCESS_LOGGER, AfterBatch, CountingStreamHandler
from proxy.http.metrics import METRICS
from proxy.serve.drain import IN_FLIGHT, drain
from proxy.serve.state import ROUTER
from proxy.service.discovery import enabled_providers
from proxy.service.reload import ReloadError
from proxy.sim.control import (
    FaultOrder,
    SimControlError,
    reset,
    set_fault,
    unknown_model_hint,
)
from proxy.sim.script import FAULT_MODES

from .app import NOTIFIER, RUNTIME, make_app, start_server
from .config import Config, ConfigError, load_config, mask_url
from .decide.tokens import hash_key
from .errors import SimPortError
from .http.hygiene import guard_library_logs
from .preflight import PreflightError, bind_error, preflight
from .workers import PortError, watch_parent

log = logging.getLogger("model_router")

# systemd/model-router.service's StateDirectory=, where `report` looks on the box.
SERVICE_STATE_DIR = "/var/lib/model-router"


DESCRIPTION = """\
Model Router: an OpenAI-compatible proxy that picks a model for each request by what the
client asks for (cheap, fast, quality, coding; a tier) and falls back when a provider fails.

Try it without any API key:  model-router serve --demo
"""


MAX_WORKERS = 256


def _port(text: str) -> int:
    """argparse type for --port and --sim-port: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{port} is not a TCP port: use 1-65535, or 0 for any free port"
        )
    return port


def _version() -> str:
    try:
        return metadata.version("model-router")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-router",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_serve_args, _check_args, _report_args, _status_args, _hash_key_args, _fault_args):
        add(sub)
    return parser


# The subcommands' parsers, one function per command; `_parser` adds them in help order.
if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def _serve_args(sub: Commands) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the proxy",
        description="Run the proxy until stopped (Ctrl-C or SIGTERM; SIGHUP reloads the "
        "config). Without --demo it needs at least one provider with credentials.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="the TOML config file (default: built-in defaults)"
    )
    serve.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=_port,
        help="the port to listen on (default 8080, or the config's; 0 picks a free port, "
        "printed when ready)",
    )
    _add_demo_flags(serve)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port through SO_REUSEPORT, under a supervising "
        "parent (default 1: one process, no parent)",
    )
    serve.add_argument(
        "--worker-index",
        type=int,
        default=None,
        metavar="I",
        help="set by the --workers parent on each worker it starts; not for direct use",
    )
    serve.add_argument(
        "--sim-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="with --demo: the simulator's port, so you can make a simulated provider fail "
        "with POST /_sim/fault or `model-router sim-fault` (default: a free port, printed "
        "at start)",
    )


def _check_args(sub: Commands) -> None:
    check = sub.add_parser(
        "check-config",
        help="check a config the way serve would, without serving",
        description="Load a config and make every check serve makes before it starts "
        "(providers with credentials, client keys off loopback, the port, a writable usage "
        "log), then list the models that would be enabled. Exit 0 when serve would start, "
        "2 with the same message serve would print when it would refuse.",
    )
    check.add_argument("path", metavar="FILE", help="the TOML config file to check")
    _add_demo_flags(check)


def _report_args(sub: Commands) -> None:
    report = sub.add_parser(
        "report",
        help="calls, spend and time to first token from the usage log",
        description="Summarise the usage log: one total line, then one row per group "
        "(calls, cost, p50 and p95 time to first token).",
    )
    report.add_argument(
        "--db",
        metavar="FILE",
        action="append",
        help="the usage log to read (default: the config's [usage] path, else "
        "$STATE_DIRECTORY/model-router.db, else /var/lib/model-router/model-router.db when "
        "that folder exists, else ./model-router.db); repeat it to read the logs of several "
        "workers or instances together",
    )
    report.add_argument(
        "--config", metavar="FILE", help="read the usage log's path from this config"
    )
    report.add_argument(
        "--since",
        default="24h",
        help="how far back: 30m, 24h, 7d, today, all, or a date such as 2026-01-31 (default 24h)",
    )
    report.add_argument(
        "--by",
        choices=("model", "tier", "prefer", "key", "arm"),
        default="model",
        help="one row per model (default), tier, prefer value, client key id or experiment arm",
    )
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _status_args(sub: Commands) -> None:
    status = sub.add_parser(
        "status",
        help="the router's live table in a terminal",
        description="Show a running router's deployments, latency and breakers in the "
        "terminal; exit 1 when the router is not ready. When the router has [[keys]], put "
        "an admin key in $MODEL_ROUTER_ADMIN_KEY.",
    )
    status.add_argument(
        "--url", default=None, help="the router to ask (default http://127.0.0.1:8080)"
    )
    status.add_argument(
        "--watch", action="store_true", help="redraw in place until interrupted (Ctrl-C)"
    )
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws with --watch"
    )


def _hash_key_args(sub: Commands) -> None:
    sub.add_parser(
        "hash-key",
        help="print the SHA-256 digest of a client API key, for [[keys]] sha256",
        description="Read a client API key and print its SHA-256 digest for a [[keys]] "
        "entry's sha256. At a terminal it asks for the key without showing it; otherwise it "
        "reads one line from standard input (more than one is refused). The key never goes "
        "on the command line, so it stays out of shell history and the process list.",
    )


def _fault_args(sub: Commands) -> None:
    fault = sub.add_parser(
        "sim-fault",
        help="make a simulated provider fail (for serve --demo)",
        description="Tell the simulator of a running `serve --demo --sim-port PORT` to fail "
        "requests for one model, to watch fallback and circuit breakers at work in "
        "/v1/router/status. `--mode none` clears the fault; `--reset` clears every fault.",
    )
    fault.add_argument(
        "model",
        nargs="?",
        help="the upstream model id to fail, as /v1/models lists under deployments "
        "(e.g. gpt-4o-mini); * for every model",
    )
    fault.add_argument(
        "--sim-port", type=_port, required=True, metavar="PORT", help="the simulator's port"
    )
    fault.add_argument(
        "--mode",
        choices=sorted(FAULT_MODES),
        default="status",
        help="how to fail: status (answer an HTTP error, the default), reset (drop the "
        "connection), hang_headers / hang_first_token (never answer), none (stop failing); "
        "the others strike mid-stream",
    )
    fault.add_argument(
        "--status", type=int, default=500, help="with --mode status: the HTTP status (500)"
    )
    fault.add_argument(
        "--count", type=int, help="fail only this many requests, then recover (default: all)"
    )
    fault.add_argument(
        "--after-chunks",
        type=int,
        default=0,
        metavar="N",
        help="for the mid-stream modes: strike after N content chunks (default 0)",
    )
    fault.add_argument("--reset", action="store_true", help="clear every fault and counter")


def _add_demo_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        action="store_true",
        help="route to built-in simulated providers instead of real ones (no API keys needed)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow an address other than loopback with no [[keys]] configured (only when "
        "something in front of the router authenticates)",
    )


def _hash_key() -> int:
    # Never an argument: the key must not sit in shell history or the process list.
    if sys.stdin.isatty():
        key = getpass.getpass("client API key (not shown): ").strip()
    else:
        key = sys.stdin.readline().strip()
        # A file of keys piped in by mistake: hashing its first line alone would look like
        # success. Only what is there already (or an ended pipe) is read: a writer that keeps
        # the pipe open after one line is not waited for.
        if select.select([sys.stdin], [], [], 0)[0] and sys.stdin.read().strip():
            print(
                "model-router: hash-key: more than one line on standard input; give one key",
                file=sys.stderr,
            )
            return 2
    if not key:
        print("model-router: hash-key: no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _report_db(args: argparse.Namespace) -> str:
    """--db; else the config's path or $STATE_DIRECTORY; else the unit's state directory
    when this box has one; else ./ (what serve does outside systemd)."""
    if args.db:
        from proxy.accounting.report import PATH_SEP

        return PATH_SEP.join(args.db)
    if args.config or os.environ.get("STATE_DIRECTORY"):
        return db_path(_load(args.config).usage, os.environ)
    if Path(SERVICE_STATE_DIR).is_dir():
        return str(Path(SERVICE_STATE_DIR) / DB_NAME)
    return f"./{DB_NAME}"


def _sim_fault(args: argparse.Namespace) -> int:
    if not args.reset and not args.model:
        print(
            "model-router: sim-fault: name a model (or * for all), or pass --reset", file=sys.stderr
        )
        return 2
    order = FaultOrder(args.model, args.mode, args.status, args.count, args.after_chunks)
    hint = None if args.reset else unknown_model_hint(args.model)
    if hint is not None:
        print(f"model-router: sim-fault: {hint}", file=sys.stderr)
    try:
        print(reset(args.sim_port) if args.reset else set_fault(args.sim_port, order))
    except SimControlError as exc:
        print(f"model-router: sim-fault: {exc}", file=sys.stderr)
        return 2
    return 0


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"model-router: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(
    config: Config,
    *,
    demo: bool,
    config_path: str | None = None,
    sim_port: int = 0,
    worker: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain; SIGHUP reloads ``config_path``. ``worker``: this
    process is that worker of a ``--workers`` parent (proxy/workers.py)."""
    app = make_app(config, demo=demo, config_path=config_path, sim_port=sim_port, worker=worker)
    runner, port = await _listen(app, config, sim_port, worker)
    notifier = app[NOTIFIER]
    stop = asyncio.Event()
    reloads = _Reloads(app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.start)
    orphaned = None if worker is None else asyncio.create_task(watch_parent(stop))
    # Announced only now: a SIGHUP sent the moment READY arrives must find its handler, not
    # the default action (which ends the process).
    _announce(app, config, port, demo, worker)
    notifier.ready(f"serving {len(app[ROUTER].current.catalog.models)} models on port {port}")
    try:
        await stop.wait()
        notifier.stopping()
        in_flight = app[IN_FLIGHT]
        drain_s = app[ROUTER].current.config.server.drain_s
        notifier.status(f"draining {len(in_flight.requests)} request(s) for up to {drain_s:g} s")
        reloads.cancel()
        await drain(runner, in_flight, drain_s)
    finally:
        if orphaned is not None:
            orphaned.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def _listen(
    app: web.Application, config: Config, sim_port: int, worker: int | None
) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; a port that cannot be bound is a PreflightError saying which."""
    host, wanted = config.server.host, config.server.port
    try:
        runner, port = await start_server(app, host, wanted, reuse_port=worker is not None)
        if worker is not None and config.server.worker_port_base:
            # This worker alone, for scraping its /metrics (the shared port reaches any).
            own = web.TCPSite(runner, host, config.server.worker_port_base + worker)
            await own.start()
    except SimPortError as exc:
        raise bind_error(
            "the simulator (--sim-port)", "127.0.0.1", sim_port, exc.os_error
        ) from None
    except OSError as exc:
        raise bind_error("the router", host, wanted, exc) from None
    return runner, port


class _Reloads:
    """SIGHUP: each reload runs as a task, applied or rejected (and said so); drain cancels
    the ones still running."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reload(self) -> None:
        app, notifier = self.app, self.app[NOTIFIER]
        notifier.reloading()
        try:
            summary = await app[RUNTIME].reload()
        except ReloadError as exc:
            app[METRICS].reloads.labels("rejected").inc()
            log.error("config reload rejected, the previous config keeps serving: %s", exc)
            notifier.ready(f"reload rejected: {exc}")
        else:
            app[METRICS].reloads.labels("applied").inc()
            log.info("%s", summary)
            notifier.ready(summary)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


def _announce(
    app: web.Application, config: Config, port: int, demo: bool, worker: int | None
) -> None:
    """The ready line scripts wait for (a worker's must not read like the parent's)."""
    router = app[ROUTER].current
    mode = "demo, simulated providers" if demo else "live providers"
    what = (
        "model-router ready on"
        if worker is None
        else f"worker {worker} (pid {os.getpid()}) serving"
    )
    print(
        f"{what} http://{config.server.host}:{port} "
        f"({len(router.catalog.models)} models enabled, {mode})",
        flush=True,
    )
    if demo:
        from proxy.assembly.demo import SIM_URL

        print(
            f"simulated providers on {app[SIM_URL]} (fault control: POST /_sim/fault)",
            flush=True,
        )


def _logging() -> None:
    level = os.environ.get("MODEL_ROUTER_LOG_LEVEL", "INFO")
    # The access log is bare JSON, one object per line, so `journalctl -o cat | jq` works.
    access = logging.getLogger(ACCESS_LOGGER)
    # Its failed writes are counted (/v1/router/status, /readyz, /metrics), not raised.
    handler = CountingStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    # Everything else goes to the same stderr, after the access log's pending batch.
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        handlers=[AfterBatch(sys.stderr, handler)],
    )
    access.addHandler(handler)
    access.propagate = False
    # No format here reads them; each costs a lookup per log record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging()
    guard_library_logs()
    # A process-wide switch of the library: no `_created` line beside every counter and
    # histogram, which halves what a scrape formats on the event loop.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    if args.command == "report":
        from proxy.accounting.report import run_report

        return run_report(_report_db(args), args.since, args.by, args.json)
    if args.command == "hash-key":
        return _hash_key()
    if args.command == "sim-fault":
        return _sim_fault(args)
    if args.command == "status":
        from .status.cli import DEFAULT_URL, run_status

        if not args.interval > 0:
            print("model-router: status: --interval must be > 0", file=sys.stderr)
            return 2
        return run_status(args.url or DEFAULT_URL, args.watch, args.interval)
    if args.command == "check-config":
        return _check_config(args)
    try:
        return _serve_command(args)
    except PreflightError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 2


def _serve_command(args: argparse.Namespace) -> int:
    """serve: the config with --host/--port over it, the checks, then one process, a
    ``--workers`` parent, or one of its workers."""
    config = _load(args.config)
    server = config.server
    if args.host is not None or args.port is not None:
        server = replace(
            server,
            host=args.host or server.host,
            port=server.port if args.port is None else args.port,
        )
        config = replace(config, server=server)
    _check_serve(config, args)
    if args.workers > 1 and args.worker_index is None:
        from .workers import supervise

        forward = ["--config", args.config] if args.config else []
        forward += ["--demo"] if args.demo else []
        forward += ["--insecure-no-auth"] if args.insecure_no_auth else []
        try:
            return supervise(config, forward, args.workers)
        except PortError as exc:
            raise bind_error("the router", server.host, server.port, exc.os_error) from None
    if args.worker_index is not None:
        from .workers import worker_db_path

        usage = replace(
            config.usage, path=worker_db_path(config, dict(os.environ), args.worker_index)
        )
        config = replace(config, usage=usage)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            serve(
                config,
                demo=args.demo,
                config_path=args.config,
                sim_port=args.sim_port,
                worker=args.worker_index,
            )
        )
    return 0


def _check_serve(config: Config, args: argparse.Namespace) -> None:
    """What serve refuses before it starts (PreflightError), in the order a user fixes it."""
    preflight(
        config,
        os.environ,
        demo=args.demo,
        insecure_no_auth=args.insecure_no_auth,
        port_from_cli=args.port is not None,
    )
    if config.cluster.enabled and importlib.util.find_spec("redis") is None:
        raise PreflightError(
            "[cluster] redis_url needs redis-py: pip install 'model-router[cluster]'"
        )
    if not 1 <= args.workers <= MAX_WORKERS:
        raise PreflightError(f"--workers must be within 1..{MAX_WORKERS}")
    if args.workers > 1 and args.worker_index is None and args.sim_port:
        raise PreflightError("--sim-port cannot be shared by several workers")


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args.path)
    try:
        preflight(config, os.environ, demo=args.demo, insecure_no_auth=args.insecure_no_auth)
    except PreflightError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 2
    enabled = enabled_providers(config, os.environ)
    if args.demo:
        enabled = {n: pc for n, pc in config.providers.items() if pc.enabled is not False}
    catalog = config.catalog.only_providers(enabled)
    print(f"{args.path}: valid; {len(config.catalog.models)} models in catalog")
    what = "providers (simulated with --demo)" if args.demo else "providers with credentials"
    print(f"{what}: {', '.join(sorted(enabled)) or 'none'}")
    if config.cluster.enabled:
        print(
            f"cluster: shares state through {mask_url(config.cluster.redis_url)} "
            f"(key prefix {config.cluster.key_prefix!r})"
        )
    for m in catalog.models:
        print(f"  {m.id:<28} {m.tier:<9} {', '.join(d.provider for d in m.deployments)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
