"""SSE relay: frames upstream bytes into events, parses each one, and forwards it.

Every event is parsed (framing, JSON validity, in-band errors, content seen, tokens
produced), translated streams included, so a malformed or failed upstream becomes an error
event instead of bytes the client's SDK chokes on. Events pass through as sent but for
three edits: CRLF line ends become LF, the usage event gains ``usage.cost`` (and is dropped
when the client did not ask for usage), and where the upstream calls the model by another
name than the catalog's, its ``"model"`` value is swapped in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from proxy.providers.base import UpstreamError
from proxy.providers.sse import MAX_EVENT_BYTES, fields

DONE = b"data: [DONE]"
# A relay's upstream model name before the first chunk has told it (see SSERelay._learn).
UNSEEN = object()

CostFn = Callable[[int, int], float]


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError("protocol", "upstream sent a chunk that is not valid JSON") from None


def _is_content(obj: dict[str, Any]) -> bool:
    """True for the first chunk that carries answer content: text, a tool call, a refusal
    or a finish reason. The role-only opening chunk of OpenAI streams is not content."""
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (
            delta.get("content")
            or delta.get("tool_calls")
            or delta.get("refusal")
            or delta.get("function_call")
            # Reasoning models think first; their first thought is their first sign of life.
            or delta.get("reasoning_content")
        ):
            return True
    return False


def _says_something(choice: object) -> bool:
    """Whether a streamed choice carries anything but its index: a delta with a key, a
    finish reason, text or logprobs."""
    if type(choice) is not dict:
        return True  # not ours to judge: forwarded as it came
    return bool(
        choice.get("delta")
        or choice.get("finish_reason")
        or choice.get("text")
        or choice.get("logprobs")
    )


# A streamed delta up to this long is one token (OpenAI streams one token per chunk, and
# a token is rarely longer); a longer one (Anthropic's and Bedrock's deltas hold several
# tokens) counts as one token per 4 characters.
ONE_TOKEN_CHARS = 12


def _tokens(text: object) -> int:
    if type(text) is not str or not text:
        return 0
    n = len(text)
    return 1 if n <= ONE_TOKEN_CHARS else -(-n // 4)


# _tokens of a string by its length, for the deltas the common chunk holds (one subscript
# instead of a call: 21 bytecodes a chunk). Up to 1,024 characters, so every entry is a
# cached small int.
TOKENS_BY_LENGTH = tuple(_tokens("x" * n) for n in range(1025))
# The length of a str; TypeError for anything else (a list of content parts, None).
str_len = str.__len__


def produced_tokens(obj: dict[str, Any]) -> int:
    """Estimated completion tokens in one chunk: its text, reasoning, refusal and tool-call
    arguments. Used only when a stream ends before the upstream's usage event."""
    total = 0
    # _tokens is called only for values that are there (a typical delta has one of the four).
    for choice in obj.get("choices") or ():
        if type(choice) is not dict:
            continue
        if text := choice.get("text"):
            total += _tokens(text)
        delta = choice.get("delta")
        if type(delta) is not dict:
            continue
        if text := delta.get("content"):
            total += _tokens(text)
        if text := delta.get("reasoning_content"):
            total += _tokens(text)
        if text := delta.get("refusal"):
            total += _tokens(text)
        for call in delta.get("tool_calls") or ():
            if type(call) is dict and type(fn := call.get("function")) is dict:
                total += _tokens(fn.get("arguments"))
    return total


class SSERelay:
    """Per-stream state. ``feed`` returns the bytes to forward now; raises UpstreamError."""

    __slots__ = (
        "buf",
        "content_seen",
        "cost",
        "done",
        "include_usage",
        "model",
        "needles",
        "produced",
        "prompt_estimate",
        "swap_from",
        "swap_to",
        "upstream_model",
        "usage",
    )

    def __init__(
        self,
        include_usage: bool,
        cost: CostFn,
        prompt_estimate: int = 0,
        model: str = "",
    ) -> None:
        self.buf = b""
        self.done = False
        self.content_seen = False
        self.include_usage = include_usage
        self.cost = cost
        self.usage: dict[str, Any] | None = None
        # What the upstream has sent so far, estimated (for a stream that ends early), and
        # the router's estimate of the prompt.
        self.produced = 0
        self.prompt_estimate = prompt_estimate
        # The client sees the catalog's id (``model``) in every chunk, whatever name the
        # upstream answers under (OpenAI answers "gpt-4o" as "gpt-4o-2024-08-06"): the first
        # chunk that names one decides (_learn). upstream_model is that name while chunks
        # are renamed from it, None while they are not (the same name, or no ``model``:
        # the probes' relays), UNSEEN until the first chunk.
        self.model = model
        self.upstream_model: object = UNSEEN if model else None
        self.needles: tuple[tuple[bytes, bytes], ...] = ()
        # The compact needle, for the common chunk's byte swap.
        self.swap_from = self.swap_to = b""

    def feed(self, chunk: bytes) -> bytes:
        if (
            not self.buf
            and chunk.startswith(b"data: {")
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
        ):
            # One whole one-line event, as a paced upstream sends them: parsed right here
            # (the trailing blank line is JSON whitespace) and, the common chunk, forwarded
            # as these very bytes: no framing, no copies, no event method per chunk.
            obj = _loads(chunk[6:])  # "{" and valid JSON: a dict
            out = self._plain(chunk, obj)
            if out is not None:
                return out
            event = chunk[:-2]
            out = self._checked(event, event[6:], obj)
            if out is event:
                return chunk
            return b"" if out is None else out + b"\n\n"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self.buf + chunk if self.buf else chunk
        *events, self.buf = buf.split(b"\n\n")
        if len(self.buf) > MAX_EVENT_BYTES:
            raise UpstreamError("protocol", "upstream sent an event over 1 MiB without a boundary")
        if not events:
            return b""
        # map: no bytecodes of our own between one event's parse and the next.
        outs = list(map(self._event, events))
        while None in outs:  # a dropped usage event: one, if any
            outs.remove(None)
        if not outs:
            return b""
        outs.append(b"")
        return b"\n\n".join(outs)  # type: ignore[arg-type]

    def finish(self) -> None:
        """The upstream ended: complete only if it said [DONE] with nothing left over."""
        if self.buf.strip():
            raise UpstreamError("protocol", "upstream stream ended inside an event")
        if not self.done:
            raise UpstreamError("server", "upstream closed the stream before it was complete")

    def _plain(self, event: bytes, obj: dict[str, Any]) -> bytes | None:
        """The common chunk (no error, no usage, one choice whose delta holds only a
        ``content`` string, the model swapped by bytes if at all): its tokens counted, and
        the event to forward (framed or not, as given). None, with nothing recorded, for
        any other chunk: ``_checked`` takes it. 72 bytecodes a renamed chunk where the
        general checks, produced_tokens, _tokens and _renamed were 214 (measured)."""
        if "error" in obj or obj.get("usage") is not None:
            return None
        try:
            (choice,) = obj["choices"]  # one choice (ValueError else) ...
            delta = choice["delta"]
            (_,) = delta  # ... whose delta has one key (ValueError else) ...
            # ... content (KeyError else), a str (str.__len__ raises TypeError else).
            tokens = TOKENS_BY_LENGTH[str_len(delta["content"])]
        except (LookupError, TypeError, ValueError):
            return None  # not dicts and lists as above, or a text past the table
        if "text" in choice:
            return None
        upstream = self.upstream_model
        if upstream is not None:  # 7 bytecodes a chunk when no rename is due
            if upstream is UNSEEN:
                upstream = self._learn(obj.get("model"))
            if upstream is not None:
                if obj.get("model") != upstream or self.swap_from not in event:
                    return None  # another name, or spaced some other way: _checked decides
                # The needle cannot match in "data: ": the payload's first, as _renamed.
                event = event.replace(self.swap_from, self.swap_to, 1)
        self.produced += tokens
        if not self.content_seen and _is_content(obj):
            self.content_seen = True
        return event

    def _event(self, event: bytes) -> bytes | None:
        """The event (without its blank line) to forward: ``event`` itself (unchanged), a
        rewrite, or None to drop it."""
        if event.startswith(b"data: {") and b"\n" not in event:
            obj = _loads(event[6:])  # "{" and valid JSON: a dict
            out = self._plain(event, obj)
            if out is not None:
                return out
            return self._checked(event, event[6:], obj)
        payload: bytes | None
        if event.startswith(b"data: ") and b"\n" not in event:
            payload = event[6:]
        elif event.startswith(b"data:") and b"\n" not in event:
            payload = event[5:]
        else:
            payload = self._slow_path(event)
            if payload is None:
                return event  # comments and empty keep-alives
        if payload == b"[DONE]":
            self.done = True
            return event
        obj = _loads(payload)
        if not isinstance(obj, dict):
            raise UpstreamError("protocol", "upstream sent a chunk that is not a JSON object")
        return self._checked(event, payload, obj)

    def _checked(self, event: bytes, payload: bytes, obj: dict[str, Any]) -> bytes | None:
        """Any chunk's checks and edits: an in-band error, content, tokens, usage, rename."""
        if "error" in obj:
            err = obj["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamError("server", f"upstream error mid-stream: {message}")
        choices = obj.get("choices")
        if choices is not None and type(choices) is not list:
            # A number here was a TypeError out of the relay: a silent cut, not an error event.
            raise UpstreamError("protocol", "upstream sent a chunk whose choices is not a list")
        if not self.content_seen and _is_content(obj):
            self.content_seen = True
        self.produced += produced_tokens(obj)
        upstream = self.upstream_model
        if upstream is UNSEEN:
            upstream = self._learn(obj.get("model"))
        renamed = upstream is not None and obj.get("model") == upstream
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if renamed:
                obj["model"] = self.model
            return self._usage_event(obj, usage)
        if renamed:
            return self._renamed(payload, obj)
        return event

    def _renamed(self, payload: bytes, obj: dict[str, Any]) -> bytes:
        """The event with the catalog's model name: a byte swap of the one ``"model"`` key
        (quotes inside JSON strings are escaped, so the needle cannot match text), or a
        re-encode when the upstream spaced it some other way."""
        for old, new in self.needles:
            if old in payload:
                return b"data: " + payload.replace(old, new, 1)
        obj["model"] = self.model
        return b"data: " + orjson.dumps(obj)

    def charge(self) -> tuple[int, int, float, bool]:
        """(prompt tokens, completion tokens, cost, estimated): the upstream's usage when it
        came; else what was generated, counted from the relayed content, plus the estimated
        prompt: a stream the client left, or that broke, is charged too."""
        usage = self.usage
        if usage is not None:
            try:
                prompt = int(usage.get("prompt_tokens") or 0)
                completion = int(usage.get("completion_tokens") or 0)
                if prompt >= 0 and completion >= 0:
                    return prompt, completion, float(usage.get("cost") or 0.0), False
            except (TypeError, ValueError):
                pass
            # Counts that are not numbers ("x", a list) or are negative: estimated, as without.
        prompt, completion = self.prompt_estimate, self.produced
        return prompt, completion, round(self.cost(prompt, completion), 10), True

    def _learn(self, name: object) -> object:
        """The first chunk's model name decides the stream's renaming: renamed from it
        (needles made once) when it is a string other than the catalog's id, else never."""
        if type(name) is not str or name == self.model:
            self.upstream_model = None
            return None
        self.upstream_model = name
        old, new = orjson.dumps(name), orjson.dumps(self.model)
        self.needles = (
            (b'"model":' + old, b'"model":' + new),
            (b'"model": ' + old, b'"model": ' + new),
        )
        self.swap_from, self.swap_to = self.needles[0]
        return name

    def _slow_path(self, event: bytes) -> bytes | None:
        name, data = fields(event, "upstream")
        if name == "error":
            raise UpstreamError("server", "upstream sent an error event mid-stream")
        return data

    def _usage_event(self, obj: dict[str, Any], usage: dict[str, Any]) -> bytes | None:
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int) and min(prompt, completion) >= 0:
            usage["cost"] = round(self.cost(prompt, completion), 10)
        self.usage = usage
        if not self.include_usage:
            if not obj.get("choices"):
                return None
            # Usage on a chunk with a choice (LiteLLM sends {"choices": [{"index": 0,
            # "delta": {}}], "usage": ...}): the client did not ask for usage, so the usage
            # goes, and so does the chunk if that leaves it saying nothing.
            del obj["usage"]
            if not any(map(_says_something, obj["choices"])):
                return None
        return b"data: " + orjson.dumps(obj)
