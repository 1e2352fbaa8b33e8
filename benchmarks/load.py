"""The load generator: an aiohttp client on a uvloop loop, in its own process so it never
shares an interpreter with what it measures. ``python -m benchmarks.load`` reads one job (a
JSON line) on stdin, prints ``progress DONE TOTAL`` lines and then ``result {json}``.

Jobs: ``sequential`` (one request at a time, targets interleaved), ``lanes`` (one paced
stream at a time per target, targets side by side), ``concurrent`` (N streams held in
flight), ``throughput`` (non-streaming requests as fast as N workers can), ``hold`` (open
N streams, say ``held``, wait for ``release`` on stdin).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvloop

# The first chunk with answer text; the role-only opening chunk has "content":"".
CONTENT = re.compile(rb'"(?:content|text)":"[^"]')
DONE = b"data: [DONE]\n\n"
clock = time.perf_counter


@dataclass(slots=True)
class Sample:
    ok: bool
    start: float
    total_ms: float
    ttft_ms: float | None = None
    stalls: int = 0
    max_gap_ms: float = 0.0
    reads: int = 0
    error: str | None = None


class Progress:
    """Throttled progress lines for the orchestrator's display."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self._last = total, 0, 0.0

    def tick(self, n: int = 1) -> None:
        self.done += n
        now = clock()
        if now - self._last > 0.2 or self.done >= self.total:
            self._last = now
            print(f"progress {min(self.done, self.total)} {self.total}", flush=True)


def body_for(target: dict[str, Any], stream: bool, max_tokens: int) -> bytes:
    body: dict[str, Any] = {
        "model": target["model"],
        "messages": [{"role": "user", "content": "benchmark: say a few words"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        # Every target is asked for usage, so the router's usage rewrite is in the path.
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def headers_for(target: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {target['key']}", "Content-Type": "application/json"}


async def one(
    session: aiohttp.ClientSession,
    target: dict[str, Any],
    stream: bool,
    *,
    max_tokens: int,
    stall_ms: float,
    until_content: asyncio.Event | None = None,
    hold: asyncio.Event | None = None,
) -> Sample:
    """One request; for streams, TTFT to the first content chunk and the gaps after it."""
    url = target["url"].rstrip("/") + "/chat/completions"
    data = body_for(target, stream, max_tokens)
    start = clock()
    try:
        async with session.post(url, data=data, headers=headers_for(target)) as resp:
            if resp.status != 200:
                await resp.read()
                return Sample(False, start, (clock() - start) * 1e3, error=f"status {resp.status}")
            if not stream:
                raw = await resp.read()
                ok = b'"choices"' in raw
                return Sample(
                    ok, start, (clock() - start) * 1e3, error=None if ok else "no choices"
                )
            sample = Sample(False, start, 0.0)
            first = last = 0.0
            tail = b""
            stall_s = stall_ms / 1e3
            async for chunk in resp.content.iter_any():
                now = clock()
                sample.reads += 1
                if not first:
                    if CONTENT.search(tail + chunk):
                        first = now
                        sample.ttft_ms = (now - start) * 1e3
                        if until_content is not None:
                            until_content.set()
                        if hold is not None:
                            await hold.wait()
                            return sample
                else:
                    gap = now - last
                    if gap > stall_s:
                        sample.stalls += 1
                    sample.max_gap_ms = max(sample.max_gap_ms, gap * 1e3)
                last = now
                tail = (tail + chunk)[-64:]
            sample.total_ms = (clock() - start) * 1e3
            sample.ok = tail.endswith(DONE) and first > 0
            if not sample.ok:
                sample.error = "stream ended without content and [DONE]"
            return sample
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(False, start, (clock() - start) * 1e3, error=type(exc).__name__)


def _samples(samples: list[Sample]) -> dict[str, Any]:
    good = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[s.error or "?"] = errors.get(s.error or "?", 0) + 1
    return {
        "count": len(samples),
        "ok": len(good),
        "errors": errors,
        "total_ms": [round(s.total_ms, 4) for s in good],
        "ttft_ms": [round(s.ttft_ms, 4) for s in good if s.ttft_ms is not None],
        "stalls": sum(s.stalls for s in good),
        "max_gap_ms": round(max((s.max_gap_ms for s in good), default=0.0), 3),
    }


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def sequential(job: dict[str, Any]) -> dict[str, Any]:
    """One request at a time; targets interleaved round by round (the order rotating) so
    drift on the box hits every target alike."""
    targets, n, warmup = job["targets"], job["n"], job.get("warmup", 20)
    stream, max_tokens, stall = job["stream"], job["max_tokens"], job.get("stall_ms", 1e9)
    # A pause after each request, so work a target does after answering (its logs) is over
    # before the next target, which may share its core, is asked.
    think = job.get("think_ms", 0.0) / 1e3
    per: dict[str, list[Sample]] = {t["name"]: [] for t in targets}
    progress = Progress(n * len(targets))
    async with _session() as session:
        for i in range(warmup + n):
            shift = i % len(targets)
            for t in targets[shift:] + targets[:shift]:
                s = await one(session, t, stream, max_tokens=max_tokens, stall_ms=stall)
                if think:
                    await asyncio.sleep(think)
                if i >= warmup:
                    per[t["name"]].append(s)
                    progress.tick()
    return {name: _samples(samples) for name, samples in per.items()}


async def lanes(job: dict[str, Any]) -> dict[str, Any]:
    """One paced stream at a time per target, the targets side by side; lanes start a few
    milliseconds apart so their chunks do not arrive in the same instant."""
    targets, n = job["targets"], job["n"]
    progress = Progress(n * len(targets))

    async def lane(
        t: dict[str, Any], offset: float, session: aiohttp.ClientSession
    ) -> list[Sample]:
        await asyncio.sleep(offset)
        out = []
        for i in range(n + 1):
            s = await one(session, t, True, max_tokens=job["max_tokens"], stall_ms=job["stall_ms"])
            if i:  # the first opens the connections
                out.append(s)
                progress.tick()
        return out

    async with _session() as session:
        stagger = job.get("stagger_ms", 7.0) / 1e3
        results = await asyncio.gather(
            *(lane(t, i * stagger, session) for i, t in enumerate(targets))
        )
    return {t["name"]: _samples(r) for t, r in zip(targets, results, strict=True)}


async def concurrent(job: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` workers each run streams back to back. Worker starts are spread over
    ``ramp_s`` so the load is steady; streams per second counts streams that finished inside
    the measured window after the ramp."""
    target, c = job["target"], job["concurrency"]
    ramp, duration = job["ramp_s"], job["duration_s"]
    samples: list[Sample] = []
    t0 = clock()
    end_starts = t0 + ramp + duration
    progress = Progress(int((ramp + duration) * 10))

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(ramp * i / c)
        while clock() < end_starts:
            s = await one(
                session, target, True, max_tokens=job["max_tokens"], stall_ms=job["stall_ms"]
            )
            samples.append(s)

    async def ticker() -> None:
        while clock() < end_starts:
            await asyncio.sleep(0.1)
            progress.tick()

    async with _session() as session:
        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(worker(i, session) for i in range(c)))
        await tick
    window_start, window_end = t0 + ramp, end_starts
    finished = [
        s for s in samples if s.ok and window_start <= s.start + s.total_ms / 1e3 <= window_end
    ]
    out = _samples(samples)
    out["streams_per_s"] = len(finished) / duration
    out["elapsed_s"] = clock() - t0
    out["concurrency"] = c
    return out


async def throughput(job: dict[str, Any]) -> dict[str, Any]:
    """Non-streaming requests from ``concurrency`` workers for ``duration_s`` after a warm-up."""
    target, c = job["target"], job["concurrency"]
    warmup, duration = job["warmup_s"], job["duration_s"]
    samples: list[Sample] = []
    t0 = clock()
    window_start, window_end = t0 + warmup, t0 + warmup + duration
    progress = Progress(int((warmup + duration) * 10))

    async def worker(session: aiohttp.ClientSession) -> None:
        while clock() < window_end:
            s = await one(session, target, False, max_tokens=job["max_tokens"], stall_ms=1e9)
            if s.start >= window_start:
                samples.append(s)

    async def ticker() -> None:
        while clock() < window_end:
            await asyncio.sleep(0.1)
            progress.tick()

    async with _session() as session:
        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(worker(session) for _ in range(c)))
        await tick
    done = [s for s in samples if s.ok and s.start + s.total_ms / 1e3 <= window_end]
    out = _samples(samples)
    out["requests_per_s"] = len(done) / duration
    out["concurrency"] = c
    return out


async def hold(job: dict[str, Any]) -> dict[str, Any]:
    """Open ``n`` streams, each read up to its first content chunk, then hold them idle until
    the orchestrator says ``release``."""
    target, n = job["target"], job["n"]
    release = asyncio.Event()
    progress = Progress(n)
    loop = asyncio.get_running_loop()

    async def held(session: aiohttp.ClientSession, sem: asyncio.Semaphore) -> Sample:
        seen = asyncio.Event()
        async with sem:
            task = asyncio.create_task(
                one(
                    session,
                    target,
                    True,
                    max_tokens=job["max_tokens"],
                    stall_ms=1e9,
                    until_content=seen,
                    hold=release,
                )
            )
            waiter = asyncio.create_task(seen.wait())
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        progress.tick()
        return await task

    async with _session() as session:
        # Opened a batch at a time: the point is memory while held, not a connect storm.
        sem = asyncio.Semaphore(job.get("open_concurrency", 64))
        tasks = [asyncio.create_task(held(session, sem)) for _ in range(n)]
        while progress.done < n:
            await asyncio.sleep(0.05)
            if any(t.done() for t in tasks):
                failed = [t.result() for t in tasks if t.done() and not t.result().ttft_ms]
                if failed:
                    release.set()
                    await asyncio.gather(*tasks)
                    return {"held": 0, "error": failed[0].error}
        print(f"held {n}", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        release.set()
        samples = await asyncio.gather(*tasks)
    return {"held": sum(1 for s in samples if s.ttft_ms is not None)}


JOBS = {
    "sequential": sequential,
    "lanes": lanes,
    "concurrent": concurrent,
    "throughput": throughput,
    "hold": hold,
}


def main() -> None:
    job = orjson.loads(sys.stdin.readline())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(JOBS[job["kind"]](job))
    data = orjson.dumps(result)
    if job.get("result_path"):
        # Raw samples can run to megabytes: a file, not one enormous line on a pipe.
        with open(job["result_path"], "wb") as fh:
            fh.write(data)
        print(f"result @{job['result_path']}", flush=True)
    else:
        print("result " + data.decode(), flush=True)


if __name__ == "__main__":
    main()
