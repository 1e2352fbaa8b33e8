"""The CLI and composition root: ``model-router serve | check-config | report | status |
hash-key``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop
from prometheus_client import disable_created_metrics

from proxy.http.auth import is_loopback
from proxy.http.log_stream import ACCESS_LOGGER, CountingStreamHandler
from proxy.http.metrics import METRICS
from proxy.serve.drain import IN_FLIGHT, drain
from proxy.serve.state import ROUTER
from proxy.service.reload import ReloadError

from .app import (
    NOTIFIER,
    RUNTIME,
    SIM_URL,
    enabled_providers,
    how_to_enable,
    make_app,
    start_server,
)
from .config import Config, ConfigError, load_config
from .decide.tokens import hash_key
from .http.hygiene import guard_library_logs

log = logging.getLogger("model_router")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config file (default: built-in defaults)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--demo", action="store_true", help="route to built-in simulated providers")
    serve.add_argument(
        "--sim-port",
        type=int,
        default=0,
        help="with --demo: the simulator's port, whose /_sim/fault makes a provider fail "
        "(default: a free port, printed at start)",
    )
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding a non-loopback address with no [[keys]] configured",
    )
    check = sub.add_parser("check-config", help="validate a config and list the enabled models")
    check.add_argument("path")
    report = sub.add_parser("report", help="calls, spend and TTFT from the usage log")
    report.add_argument("--db", help="usage log (default: as `serve` would place it)")
    report.add_argument("--config", help="take the usage log path from this config")
    report.add_argument("--since", default="24h", help="24h, 30m, 7d, today, all or a date")
    report.add_argument("--by", choices=("model", "tier", "prefer", "key", "arm"), default="model")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    status = sub.add_parser(
        "status",
        help="the live table in a terminal (exit 1 when the router is not ready); with "
        "[[keys]], an admin key in $MODEL_ROUTER_ADMIN_KEY",
    )
    status.add_argument("--url", default=None, help="the router (default http://127.0.0.1:8080)")
    status.add_argument("--watch", action="store_true", help="redraw in place until interrupted")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws with --watch"
    )
    sub.add_parser(
        "hash-key",
        help="read a client API key on stdin and print the SHA-256 digest for [[keys]] sha256",
    )
    return parser


def _hash_key() -> int:
    # One line: the key must not sit in shell history or the process list.
    key = sys.stdin.readline().strip()
    if not key:
        print("model-router: hash-key: no key on stdin", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"model-router: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def serve(
    config: Config, *, demo: bool, config_path: str | None = None, sim_port: int = 0
) -> None:
    """Run until SIGTERM/SIGINT, then drain; SIGHUP reloads ``config_path``."""
    app = make_app(config, demo=demo, config_path=config_path, sim_port=sim_port)
    runner, port = await start_server(app, config.server.host, config.server.port)
    notifier = app[NOTIFIER]
    router = app[ROUTER].current
    mode = "demo, simulated providers" if demo else "live providers"
    print(
        f"model-router ready on http://{config.server.host}:{port} "
        f"({len(router.catalog.models)} models enabled, {mode})",
        flush=True,
    )
    if demo:
        print(
            f"simulated providers on {app[SIM_URL]} (fault control: POST /_sim/fault)",
            flush=True,
        )
    notifier.ready(f"serving {len(router.catalog.models)} models on port {port}")
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
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

    def on_hup() -> None:
        task = asyncio.create_task(reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await stop.wait()
        notifier.stopping()
        in_flight = app[IN_FLIGHT]
        drain_s = app[ROUTER].current.config.server.drain_s
        notifier.status(f"draining {len(in_flight.requests)} request(s) for up to {drain_s:g} s")
        for task in list(reloads):
            task.cancel()
        await drain(runner, in_flight, drain_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _logging() -> None:
    level = os.environ.get("MODEL_ROUTER_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    # The access log is bare JSON, one object per line, so `journalctl -o cat | jq` works.
    access = logging.getLogger(ACCESS_LOGGER)
    # Its failed writes are counted (/v1/router/status, /readyz, /metrics), not raised.
    handler = CountingStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _logging()
    guard_library_logs()
    # A process-wide switch of the library: no `_created` line beside every counter and
    # histogram, which halves what a scrape formats on the event loop.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    if args.command == "report":
        from proxy.accounting.report import run_report
        from proxy.accounting.usage_log import db_path

        db = args.db or db_path(_load(args.config).usage, os.environ)
        return run_report(db, args.since, args.by, args.json)
    if args.command == "hash-key":
        return _hash_key()
    if args.command == "status":
        from .status.cli import DEFAULT_URL, run_status

        if not args.interval > 0:
            print("model-router: status: --interval must be > 0", file=sys.stderr)
            return 2
        return run_status(args.url or DEFAULT_URL, args.watch, args.interval)
    if args.command == "check-config":
        config = _load(args.path)
        enabled = enabled_providers(config, os.environ)
        catalog = config.catalog.only_providers(enabled)
        print(f"{args.path}: valid; {len(config.catalog.models)} models in catalog")
        print(f"providers with credentials: {', '.join(sorted(enabled)) or 'none'}")
        for m in catalog.models:
            print(f"  {m.id:<28} {m.tier:<9} {', '.join(d.provider for d in m.deployments)}")
        return 0
    config = _load(args.config)
    server = config.server
    if args.host is not None or args.port is not None:
        from dataclasses import replace

        server = replace(
            server,
            host=args.host or server.host,
            port=server.port if args.port is None else args.port,
        )
        config = replace(config, server=server)
    if not config.keys and not is_loopback(server.host) and not args.insecure_no_auth:
        print(
            f"model-router: refusing to serve {server.host!r} without client keys: anyone "
            "who can reach it could spend your provider credit. Add [[keys]] to the config "
            "(`model-router hash-key` prints a key's digest), bind 127.0.0.1, or pass "
            "--insecure-no-auth if something in front of the router authenticates.",
            file=sys.stderr,
        )
        return 2
    if not args.demo and not enabled_providers(config, os.environ):
        print(f"model-router: {how_to_enable(config)}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, demo=args.demo, config_path=args.config, sim_port=args.sim_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
