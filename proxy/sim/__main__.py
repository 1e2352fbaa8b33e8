"""``python -m proxy.sim``: the simulated provider as its own process, for benchmarks and
for pointing another gateway at. Prints one ready line with its URL, stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

import uvloop

from .launch import start_sim
from .script import Profile
from .server import SimState
from .tls import make_sim_tls


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument(
        "--ttft-ms", type=float, default=0.0, help="time to the first content chunk"
    )
    parser.add_argument("--gap-ms", type=float, default=0.0, help="time between content chunks")
    parser.add_argument("--tokens", type=int, default=16, help="content chunks per answer")
    parser.add_argument(
        "--keyless",
        action="store_true",
        help="accept OpenAI-wire requests without a bearer token, as a local server does",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="serve HTTPS with a certificate made now; the CA a client must trust is written "
        "to TLS_DIR/sim-ca.pem (needs the trustme package, in the test and bench extras)",
    )
    return parser


async def serve(
    host: str, port: int, profile: Profile, keyless: bool = False, tls_dir: Path | None = None
) -> None:
    tls = make_sim_tls(tls_dir).server if tls_dir is not None else None
    state = SimState(default=profile, keyless=keyless)
    runner, url = await start_sim(state, host, port, tls=tls)
    print(f"sim ready on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tokens < 0 or args.ttft_ms < 0 or args.gap_ms < 0:
        parser.error("--tokens, --ttft-ms and --gap-ms must not be negative")
    profile = Profile(ttft_ms=args.ttft_ms, gap_ms=args.gap_ms, tokens=args.tokens)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.host, args.port, profile, args.keyless, args.tls_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
