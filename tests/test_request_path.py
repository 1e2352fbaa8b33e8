"""Following one streaming request from the handler to the upstream and back stays within its
wings: along any call chain, a module of ours, once left for a deeper one, is not entered again.

How it is watched: the real app serves one streaming chat completion from the simulator to the
real OpenAI SDK, all on this thread, while ``sys.setprofile`` sees every Python call.

- *Our modules* are the files under ``proxy/`` and ``probes/``, except the simulator
  (``proxy/sim/``, the upstream here): a chain that passes through it is the simulator's own
  work and is not checked. Other frames (the standard library, ``logging``, asyncio, aiohttp,
  the SDK) are dropped from a chain, so a library calling back into us reads as our caller
  calling us.
- *The chain* of a call is its frame and its callers (``f_back``, which for a coroutine that
  its task resumes is the chain of awaits), cut at the route handler (``chat_completions``)
  when that is on it. A task started while the request is in flight continues the chain of
  the code that created it (a task factory records it), so work handed to another task is
  followed, not lost.
- Read from the handler down, consecutive frames of one module are one *visit*.

The rule: no chain visits a module twice. ``A -> B -> A`` fails (a deeper module climbed back
into one it had left, e.g. through a callback); ``A -> B``, back to ``A``, then ``A -> C`` is
two chains and fine.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

from proxy.http import handlers
from proxy.sim.script import Profile
from tests.conftest import Proxy, StartProxy
from tests.test_hedge import FAST, SLOW, data

ROOT = Path(__file__).resolve().parent.parent
OURS = (str(ROOT / "proxy") + "/", str(ROOT / "probes") + "/")
SIMULATOR = str(ROOT / "proxy" / "sim") + "/"
HANDLER = ("proxy.http.handlers", "chat_completions")

Visit = tuple[str, str]  # (module, the outermost function of the visit)
Chain = tuple[Visit, ...]
SIM = "sim"


def module_of(filename: str, cache: dict[str, str | None]) -> str | None:
    """``proxy.serve.dispatch`` for our files, ``"sim"`` for the simulator, None otherwise."""
    if filename not in cache:
        name: str | None = None
        if filename.startswith(SIMULATOR):
            name = SIM
        elif filename.startswith(OURS):
            rel = Path(filename).relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts).removesuffix(".__init__")
        cache[filename] = name
    return cache[filename]


def joined(outer: Chain, inner: list[Visit]) -> Chain:
    """``outer`` then ``inner``; a visit split between them (same module) is one."""
    if outer and inner and outer[-1][0] == inner[0][0]:
        return (*outer, *inner[1:])
    return (*outer, *inner)


class ChainRecorder:
    """Every distinct chain of our modules seen at a call, and each task's parent chain."""

    def __init__(self, root: CodeType) -> None:
        self.root = root
        self.chains: set[Chain] = set()
        self._parents: dict[asyncio.Task[Any], Chain | None] = {}
        self._modules: dict[str, str | None] = {}

    def chain_at(self, frame: FrameType | None) -> Chain | None:
        """The chain at ``frame``, outermost first; None when it is the simulator's."""
        visits: list[Visit] = []  # innermost first
        reached_root = False
        while frame is not None:
            module = module_of(frame.f_code.co_filename, self._modules)
            if module == SIM:
                return None
            if module is not None:
                if visits and visits[-1][0] == module:
                    visits[-1] = (module, frame.f_code.co_name)  # outermost of the visit
                else:
                    visits.append((module, frame.f_code.co_name))
            if frame.f_code is self.root:
                reached_root = True
                break
            frame = frame.f_back
        visits.reverse()
        if reached_root:
            return tuple(visits)
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        parent: Chain | None = self._parents.get(task, ()) if task is not None else ()
        return None if parent is None else joined(parent, visits)

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or module_of(frame.f_code.co_filename, self._modules) in (None, SIM):
            return
        chain = self.chain_at(frame)
        if chain is not None:
            self.chains.add(chain)

    def task_factory(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kw)
        self._parents[task] = self.chain_at(sys._getframe(1))
        return task


def re_entered(chain: Chain) -> bool:
    modules = [m for m, _ in chain]
    return len(modules) != len(set(modules))


def show(chain: Chain) -> str:
    return " -> ".join(f"{m}:{fn}" for m, fn in chain)


async def consume(client: Any, model: str) -> str:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def recorded(
    proxy: Proxy, model: str, warmed: Callable[[], None] = lambda: None
) -> set[Chain]:
    """The chains of one streaming request, after one unrecorded request has warmed what is
    built lazily (connection pools), as on a server that has been running; ``warmed`` runs
    between the two."""
    client = proxy.client()
    await consume(client, model)
    warmed()
    recorder = ChainRecorder(handlers.chat_completions.__code__)
    loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    loop.set_task_factory(recorder.task_factory)  # type: ignore[arg-type]
    sys.setprofile(recorder.profile)
    try:
        text = await consume(client, model)
    finally:
        sys.setprofile(None)
        loop.set_task_factory(factory)
    assert text
    return recorder.chains


@pytest.mark.parametrize(
    "model",
    [
        # prefer=fast streams are hedged by default: the race's attempts run in their own tasks.
        pytest.param("auto:fast", id="hedged-race"),
        pytest.param("auto:cheap", id="plain-attempt"),
    ],
)
async def test_one_streaming_request_enters_no_module_twice_on_any_chain(
    proxy: Proxy, model: str
) -> None:
    chains = await recorded(proxy, model)
    from_handler = [c for c in chains if c[:1] == (HANDLER,)]
    # The recording followed the request through every wing: the face, the decision, the
    # core, the accounting and an adapter, down to the call that opens the upstream stream.
    seen = {m for c in from_handler for m, _ in c}
    assert {
        "proxy.http.hostile_input",
        "proxy.http.respond",
        "proxy.decide.routing",
        "proxy.serve.dispatch",
        "proxy.serve.relay",
        "proxy.accounting.ledger",
        "proxy.providers.openai",
    } <= seen
    assert any(c[-1] == ("proxy.providers.openai", "stream") for c in from_handler)
    assert [show(c) for c in sorted(chains) if re_entered(c)] == []


async def test_a_race_that_starts_its_hedge_enters_no_module_twice(
    start_proxy: StartProxy,
) -> None:
    """The primary turns slow after the warm-up, so both attempts run in the recorded race,
    and the hedge's task is followed too."""
    proxy = await start_proxy(data())
    fast = Profile(ttft_ms=5.0, gap_ms=1.0, tokens=6)
    proxy.sim.state.profiles.update({SLOW: fast, FAST: fast})

    def slow_primary() -> None:
        proxy.sim.state.profiles[SLOW] = Profile(ttft_ms=400.0, gap_ms=1.0, tokens=6)

    chains = await recorded(proxy, "auto:fast", slow_primary)
    assert proxy.router.dispatcher.hedge.budget.used == 1
    # Both attempts open their upstream from tasks that dispatch started: each chain runs
    # from the handler through dispatch straight to the adapter.
    opened = {c for c in chains if c[-1] == ("proxy.providers.openai", "stream")}
    assert opened and all(c[0] == HANDLER and c[-2][0] == "proxy.serve.dispatch" for c in opened)
    assert [show(c) for c in sorted(chains) if re_entered(c)] == []


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        pytest.param((("a", "f"), ("b", "g")), False, id="down-only"),
        pytest.param((("a", "f"), ("b", "g"), ("a", "h")), True, id="climbs-back"),
        pytest.param((("a", "f"), ("b", "g"), ("c", "h"), ("b", "k")), True, id="deep-return"),
    ],
)
def test_a_module_visited_twice_on_one_chain_is_caught(chain: Chain, expected: bool) -> None:
    assert re_entered(chain) is expected


def test_a_task_continues_its_creators_chain_without_splitting_a_visit() -> None:
    outer: Chain = (("a", "f"), ("b", "g"))
    assert joined(outer, [("b", "task"), ("c", "h")]) == (("a", "f"), ("b", "g"), ("c", "h"))
    assert re_entered(joined(outer, [("c", "h"), ("a", "k")]))
