"""The CLI and composition root: ``model-router serve | check-config | hash-key``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop

from .app import enabled_providers, how_to_enable, make_app, start_server
from .auth import hash_key, is_loopback
from .config import Config, ConfigError, load_config
from .state import ROUTER

log = logging.getLogger("model_router")

# Libraries that log whole requests at DEBUG (botocore: the body, i.e. the prompt, and the
# SigV4 Authorization header). They stay at WARNING whatever MODEL_ROUTER_LOG_LEVEL says.
CHATTY_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config file (default: built-in defaults)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080; 0 picks a free one)")
    serve.add_argument("--demo", action="store_true", help="route to built-in simulated providers")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding a non-loopback address with no [[keys]] configured",
    )
    check = sub.add_parser("check-config", help="validate a config and list the enabled models")
    check.add_argument("path")
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


async def serve(config: Config, *, demo: bool) -> None:
    app = make_app(config, demo=demo)
    runner, port = await start_server(app, config.server.host, config.server.port)
    router = app[ROUTER].current
    mode = "demo, simulated providers" if demo else "live providers"
    print(
        f"model-router ready on http://{config.server.host}:{port} "
        f"({len(router.catalog.models)} models enabled, {mode})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("MODEL_ROUTER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "hash-key":
        return _hash_key()
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
        runner.run(serve(config, demo=args.demo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
