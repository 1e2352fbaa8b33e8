# Over 400 lines: the general parser and its short path for a plain chat body, side by side.
"""Request body -> Intent: what the client asked for and what the request needs. Pure.

Validation happens here, before anything is sent upstream; every error names its field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from probes.kinds import Endpoint
from proxy.catalog import DEFAULT_PREFER, PREFERS, TIERS, Catalog, Model, Prefer, Tier
from proxy.errors import RouterError, bad_request, quote

from .fields import EXTENSION_FIELDS
from .policy import DEFAULT_TASKS, TaskRoute

# Routing extensions (never forwarded upstream) are listed in proxy/decide/fields.py.
# "cache": true/false opts a request in or out of the response cache (proxy/accounting/cache.py).

# Rough tokens for an image part; the context check only needs an upper-ish estimate.
IMAGE_TOKENS = 800
CHARS_PER_TOKEN = 4


# Not frozen: built once per request and never changed after (dataclasses.replace makes a
# new one), and frozen's object.__setattr__ per field costs: 16 fields, ~130 bytecodes to
# build, ~50 without.
@dataclass(slots=True)
class Intent:
    endpoint: Endpoint
    auto: bool
    pinned: tuple[str, ...]  # model names in the order the client gave them
    prefer: Prefer | None
    tier: Tier | None  # None: every tier
    min_coding_score: float | None
    needs: frozenset[str]
    prompt_tokens: int  # estimated
    max_output_tokens: int  # what the client reserved, 0 when it did not say
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    tier_auto: bool = False  # tier "auto": the classifier picks the tier before planning
    task: str | None = None  # the caller's task hint, already applied to tier and prefer
    escalate: bool = False  # retry once a tier up on a cut-off, empty or refused answer
    # The field max_output_tokens came from, for errors that name it.
    max_output_param: str = "max_tokens"
    hedge: bool | None = None  # the request's (or its key's) say on hedging; None: default
    # The tier the client named ('auto:<tier>' or the tier field). A key's limits refuse a
    # named tier they exclude but narrow any other (a bare auto's standard, a task's, the
    # classifier's): proxy/decide/allowance.py.
    named_tier: Tier | None = None


def _check_type(
    body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str
) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise bad_request(f"'{name}' must be {what}", name)
    return value


def _parse_model(model: str) -> tuple[bool, str | None, Prefer | None]:
    """'auto', 'auto:<prefer>', 'auto:<tier>', 'auto:<tier>:<prefer>' -> (auto, tier, prefer);
    the tier may be 'auto' ('auto:auto', 'auto:auto:<prefer>')."""
    if model != "auto" and not model.startswith("auto:"):
        return False, None, None
    parts = model.split(":")[1:]
    tier: str | None = None
    prefer: Prefer | None = None
    if len(parts) > 2 or any(not p for p in parts):
        raise bad_request(_model_help(model), "model")
    for i, part in enumerate(parts):
        if (part in TIERS or part == "auto") and tier is None and i == 0:
            tier = part
        elif part in PREFERS and prefer is None and (i == 1 or (tier is None and len(parts) == 1)):
            prefer = part
        else:
            raise bad_request(_model_help(model), "model")
    return True, tier, prefer


def _model_help(model: str) -> str:
    return (
        f"'model' {quote(model)} is not a valid auto route: use 'auto', 'auto:<prefer>', "
        f"'auto:<tier>' or 'auto:<tier>:<prefer>' with tier in {', '.join(TIERS)} "
        f"or auto, and prefer in {', '.join(PREFERS)}"
    )


def _content_tokens(content: Any, needs: set[str]) -> int:
    if isinstance(content, str):
        return len(content) // CHARS_PER_TOKEN
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind in ("image_url", "input_image"):
                needs.add("vision")
                total += IMAGE_TOKENS
            elif isinstance(part.get("text"), str):
                total += len(part["text"]) // CHARS_PER_TOKEN
    return total


# The roles OpenAI's Chat Completions accepts (ChatCompletionRequestMessage).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# The roles that need no field but role and content. A tuple: ``in`` compares, so an
# unhashable role (a list) is simply not plain rather than a TypeError.
PLAIN_ROLES = ("user", "assistant", "system", "developer", "function")


def _messages(body: Mapping[str, Any], needs: set[str]) -> int:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "messages")
    tokens = 0
    for i, msg in enumerate(messages):
        # The usual message (a role that needs nothing more, string content, no tool calls)
        # passes on one look: ~30 bytecodes where _message runs ~90.
        if (
            type(msg) is dict
            and msg.get("role") in PLAIN_ROLES
            and type(content := msg.get("content")) is str
            and "tool_calls" not in msg
        ):
            tokens += 4 + len(content) // CHARS_PER_TOKEN
        else:
            tokens += _message(i, msg, needs)
    return tokens


def _message(i: int, msg: Any, needs: set[str]) -> int:
    """One message's checks and estimated tokens, whatever its shape."""
    if not isinstance(msg, dict):
        raise bad_request(f"'messages[{i}]' must be an object", f"messages[{i}]")
    role = msg.get("role")
    if not isinstance(role, str) or not role:
        raise bad_request(f"'messages[{i}].role' must be a non-empty string", f"messages[{i}].role")
    if role not in ROLES:
        # OpenAI refuses any other role; the Anthropic and Bedrock translators would
        # otherwise send it upstream as a user turn.
        raise bad_request(
            f"'messages[{i}].role' {quote(role)} is not one of {', '.join(ROLES)}",
            f"messages[{i}].role",
        )
    if role == "tool" and not (isinstance(msg.get("tool_call_id"), str) and msg["tool_call_id"]):
        # Required by OpenAI; without it no upstream can pair the result with its call.
        raise bad_request(
            f"'messages[{i}].tool_call_id' is required on a tool message: the id of the "
            "assistant's tool call it answers",
            f"messages[{i}].tool_call_id",
        )
    content = msg.get("content")
    if content is not None and not isinstance(content, str | list):
        raise bad_request(
            f"'messages[{i}].content' must be a string or an array of parts",
            f"messages[{i}].content",
        )
    tokens = 4 + _content_tokens(content, needs)
    calls = msg.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise bad_request(
            f"'messages[{i}].tool_calls' must be an array", f"messages[{i}].tool_calls"
        )
    for call in calls or ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            tokens += len(str(call["function"].get("arguments", ""))) // CHARS_PER_TOKEN
    return tokens


def _prompt(body: Mapping[str, Any], needs: set[str]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise bad_request(
                "'prompt' must be one string (batched prompts are not routed)", "prompt"
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", "prompt")
    suffix = _check_type(body, "suffix", str, "a string")
    needs.add("fim")
    return (len(prompt) + len(suffix or "")) // CHARS_PER_TOKEN


def _needs(body: Mapping[str, Any], needs: set[str]) -> None:
    tools = _check_type(body, "tools", list, "an array")
    if tools or body.get("functions"):
        needs.add("tools")
    fmt = _check_type(body, "response_format", dict, "an object")
    if fmt and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    if body.get("logprobs") is True or body.get("top_logprobs") is not None:
        needs.add("logprobs")
    if body.get("reasoning_effort") is not None:
        needs.add("reasoning")


def _task(body: Mapping[str, Any], tasks: Mapping[str, TaskRoute]) -> str | None:
    task = body.get("task")
    if task is None:
        return None
    if not isinstance(task, str) or task not in tasks:
        raise bad_request(
            f"'task' {quote(task)} is not a known task; use one of {', '.join(sorted(tasks))}",
            "task",
            "unknown_task",
        )
    return task


# Every field parse_intent reads but model, messages and stream. A chat body with none of
# them (what most clients send) is parsed by _plain_chat.
ROUTING_INPUTS = frozenset(
    [
        "stream_options",
        "max_completion_tokens",
        "max_tokens",
        "prompt",
        "suffix",
        "tools",
        "functions",
        "response_format",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "prefer",
        "tier",
        "task",
        "escalate",
        "hedge",
        "min_coding_score",
        "models",
    ]
)


def parse_intent(
    body: Any, endpoint: Endpoint, tasks: Mapping[str, TaskRoute] = DEFAULT_TASKS
) -> Intent:
    if endpoint == "chat" and type(body) is dict and ROUTING_INPUTS.isdisjoint(body):
        found = _plain_chat(body)
        if found is not None:
            return found
    return _parse_intent(body, endpoint, tasks)


def _plain_chat(body: dict[str, Any]) -> Intent | None:
    """The common chat body parsed in ~120 bytecodes where _parse_intent runs ~600; None
    when the model or stream is anything unusual, for _parse_intent to judge. What the model
    name means comes from _parse_intent itself (_auto_routes), so the two cannot disagree."""
    model, stream = body.get("model"), body.get("stream")
    if type(model) is not str or not model or not (stream is None or type(stream) is bool):
        return None
    if model.startswith("auto"):
        route = _auto_routes().get(model)
        if route is None:
            return None
    else:
        route = None
    needs = {"chat"}
    tokens = _messages(body, needs)
    pinned: tuple[str, ...]
    if route is None:
        prefer, tier, tier_auto, named, pinned = None, None, False, None, (model,)
    else:
        (prefer, tier, tier_auto, named), pinned = route, ()
    return Intent(
        "chat", route is not None, pinned, prefer, tier, None, frozenset(needs), tokens, 0,
        stream or False, False, tier_auto, named_tier=named,
    )  # fmt: skip


@functools.cache
def _auto_routes() -> Mapping[str, tuple[Prefer | None, Tier | None, bool, Tier | None]]:
    """Every valid 'auto...' model name -> the (prefer, tier, tier_auto, named_tier)
    _parse_intent gives a chat body that names only it; built once, by _parse_intent."""
    names = ["auto", *(f"auto:{p}" for p in PREFERS)]
    for tier in (*TIERS, "auto"):
        names += [f"auto:{tier}", *(f"auto:{tier}:{p}" for p in PREFERS)]
    routes = {}
    for name in names:
        got = _parse_intent({"model": name, "messages": [{"role": "user"}]}, "chat", {})
        routes[name] = (got.prefer, got.tier, got.tier_auto, got.named_tier)
    return routes


def _parse_intent(body: Any, endpoint: Endpoint, tasks: Mapping[str, TaskRoute]) -> Intent:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: a model id, an alias or 'auto'", "model")
    stream, include_usage = _streaming(body)
    max_out, max_param = _max_output(body)
    needs: set[str] = {"chat"} if endpoint == "chat" else set()
    prompt_tokens = _messages(body, needs) if endpoint == "chat" else _prompt(body, needs)
    _needs(body, needs)
    auto, tier, prefer = _route_fields(body, model)
    task = _task(body, tasks)
    escalate = _check_type(body, "escalate", bool, "a boolean") or False
    hedge = _check_type(body, "hedge", bool, "a boolean (false opts out of hedging)")
    score = _min_coding_score(body)
    models = _check_type(body, "models", list, "an array of model ids") or []
    if not all(isinstance(m, str) and m for m in models):
        raise bad_request("'models' must be an array of model ids", "models")
    pinned: tuple[str, ...] = (() if auto else (model,)) + tuple(models)
    _check_escalate(escalate, stream, pinned)
    tier_auto = tier == "auto"
    named = None if pinned or tier_auto else tier
    if task is not None:
        route = tasks[task]
        prefer = prefer or route.prefer
        tier = tier or route.tier
    if auto and not pinned and prefer is None and tier is None and score is None:
        tier, prefer = "standard", DEFAULT_PREFER  # a bare 'auto'
    return Intent(
        endpoint=endpoint,
        auto=auto,
        pinned=pinned,
        prefer=None if pinned else (prefer or DEFAULT_PREFER),
        tier=None if pinned or tier_auto else tier,  # type: ignore[arg-type]
        min_coding_score=None if pinned or score is None else float(score),
        needs=frozenset(needs),
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_out,
        stream=stream,
        include_usage=include_usage,
        tier_auto=tier_auto and not pinned,
        task=task,
        escalate=escalate,
        max_output_param=max_param,
        hedge=hedge,
        named_tier=named,  # type: ignore[arg-type]
    )


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage)."""
    stream = _check_type(body, "stream", bool, "a boolean") or False
    options = _check_type(body, "stream_options", dict, "an object") or {}
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request(
            "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
        )
    return stream, include_usage


def _max_output(body: dict[str, Any]) -> tuple[int, str]:
    """(max output tokens, the field it came from, for errors that name it)."""
    max_out, max_param = 0, "max_tokens"
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if type(value) is float and value.is_integer() and value >= 2**63:
            # orjson reads an integer past 64 bits as a float: the number is what is wrong.
            raise bad_request(
                f"'{name}' is too large ({value:.3g}): it must be an integer below 2^63, and "
                "no model produces more than a few hundred thousand tokens",
                name,
                "integer_above_max_value",
            )
        value = _check_type(body, name, int, "a non-negative integer")
        if value is not None and value < 0:
            raise bad_request(f"'{name}' must be a non-negative integer", name)
        if value is not None and not max_out:
            max_out, max_param = value, name
    return max_out, max_param


def _route_fields(body: dict[str, Any], model: str) -> tuple[bool, str | None, Prefer | None]:
    """(auto, tier, prefer) from the model name, overridden by ``tier`` and ``prefer``."""
    auto, tier, prefer = _parse_model(model)
    if (p := body.get("prefer")) is not None:
        if p not in PREFERS:
            raise bad_request(
                f"'prefer' must be one of {', '.join(PREFERS)}; got {quote(p)}", "prefer"
            )
        prefer = p
    if (t := body.get("tier")) is not None:
        if t not in TIERS and t != "auto":
            raise bad_request(
                f"'tier' must be one of {', '.join(TIERS)} or auto; got {quote(t)}", "tier"
            )
        tier = t
    return auto, tier, prefer


def _min_coding_score(body: dict[str, Any]) -> Any:
    score = body.get("min_coding_score")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 100
    ):
        raise bad_request("'min_coding_score' must be a number from 0 to 100", "min_coding_score")
    return score


def _check_escalate(escalate: bool, stream: bool, pinned: tuple[str, ...]) -> None:
    if escalate and stream:
        raise bad_request(
            "'escalate' cannot apply to a streaming request: a streamed answer reaches the "
            "client as it is generated, so it cannot be judged and retried on a higher tier "
            "before the client has seen it; send stream: false to use escalate",
            "escalate",
            "escalate_with_stream",
        )
    if escalate and pinned:
        raise bad_request(
            "'escalate' applies to auto routes (model 'auto…'), not to named models: "
            "the router cannot choose a higher tier for a model you pinned",
            "escalate",
        )


def forwarded_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The client's body without routing extensions; ``model`` is set per attempt."""
    if EXTENSION_FIELDS.isdisjoint(body):
        return dict(body)  # the usual body: a C copy, 8 bytecodes where the filter ran 50
    return {k: v for k, v in body.items() if k not in EXTENSION_FIELDS}


def not_found(
    model: str,
    catalog: Catalog | None = None,
    allow: Callable[[Model], bool] | None = None,
    param: str = "model",
) -> RouterError:
    """404 for a model name; ``param`` is the field it came from (``model`` or ``models``).
    With ``allow`` (a limited key's filter) it says the key may not use it, as OpenAI does,
    and suggests only models the key may use."""
    near = catalog.nearest(model, keep=allow) if catalog is not None else []
    if allow is None:
        hint = f" The nearest catalog ids: {', '.join(near)}." if near else ""
        what = "does not exist or is not enabled"
        listing = "every routable model"
    else:
        hint = f" The nearest ids this key may use: {', '.join(near)}." if near else ""
        what = "does not exist or this API key may not use it"
        listing = "every model this key may use"
    where = " (in 'models')" if param == "models" else ""
    return RouterError(
        404,
        f"The model {quote(model)}{where} {what}.{hint} "
        f"GET /v1/models lists {listing}; use 'auto' to route by intent.",
        param=param,
        code="model_not_found",
    )


def pinned_param(intent: Intent, index: int) -> str:
    """The request field ``intent.pinned[index]`` came from: ``model`` is first unless auto."""
    return "model" if index == 0 and not intent.auto else "models"
