"""Hostile request bodies: property-based (hypothesis) against ``model-router serve --demo`` as a
subprocess logging at DEBUG, and a fixed corpus of the nastiest cases against the in-process
app. Any body is either routed (the upstream was asked) or refused with a 4xx in OpenAI's
shape; never a 5xx of our own, never a traceback in the log."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.decide.fields import EXTENSION_FIELDS, openai_fields
from tests.conftest import Proxy, server_log, spawn_server, stop_server
from tests.openapi_schema import assert_valid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``serve --demo`` subprocess, its stderr read on a thread, and a keep-alive client."""

    def __init__(self) -> None:
        self.sim_port = free_port()
        self.proc, url = spawn_server(
            ["serve", "--demo", "--port", "0", "--sim-port", str(self.sim_port)],
            {"MODEL_ROUTER_DEMO_SCALE": "0.001", "MODEL_ROUTER_LOG_LEVEL": "DEBUG"},
        )
        self.port = int(url.rsplit(":", 1)[1])
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, Any, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = self._conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self._conn.close()
                self._conn = None
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")

    def fields_seen(self) -> set[str]:
        """Every top-level field the simulated upstreams were sent, so far."""
        conn = http.client.HTTPConnection("127.0.0.1", self.sim_port, timeout=10)
        try:
            conn.request("GET", "/_sim/stats")
            return set(json.loads(conn.getresponse().read())["fields_seen"])
        finally:
            conn.close()

    @property
    def lines(self) -> list[str]:
        return server_log(self.proc).splitlines(keepends=True)

    def log(self, since: int = 0) -> str:
        """The log from line ``since`` on."""
        time.sleep(0.2)  # lines written before the last answer may still be unflushed
        return "".join(self.lines[since:])

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        stop_server(self.proc)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.stop()


def check(status: int, headers: Any, data: bytes) -> None:
    """Routed (the upstream was asked: its failure may be a 5xx) or a 4xx in OpenAI's shape."""
    routed = int(headers.get("x-router-attempts") or 0) >= 1
    if routed:
        return
    assert 400 <= status < 500 or status == 200, (status, data[:300])
    if status != 200:
        payload = orjson.loads(data)
        assert_valid("ErrorResponse", payload)
        assert payload["error"]["message"]


def assert_clean_log(server: Server, since: int) -> None:
    log = server.log(since)
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 300) : at + 2000]
    assert " ERROR " not in log, [line for line in log.splitlines() if " ERROR " in line]


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


def dumps(value: Any) -> bytes:
    """stdlib json: it writes NaN and Infinity as bare words, and ints of any size."""
    return json.dumps(value).encode()


def test_any_json_value_is_routed_or_refused_cleanly(server: Server) -> None:
    @SETTINGS
    @given(value=json_values)
    def run(value: Any) -> None:
        check(*server.post(dumps(value)))

    since = len(server.lines)
    run()
    assert_clean_log(server, since)


MODELS = ["auto", "auto:fast", "auto:economy:cheap", "gpt-5-nano", "claude-haiku-4-5", "nope"]
FIELDS = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "functions",
    "response_format",
    "prefer",
    "tier",
    "min_coding_score",
    "models",
    "temperature",
    "logprobs",
    "top_logprobs",
    "n",
    "stop",
    "prompt",
    "suffix",
    "reasoning_effort",
    "user",
    "metadata",
    "api_base",
    "aws_region",
    "litellm_params",
    "extra_body",
    "top_k",
]
FORWARDABLE = openai_fields()["chat"] | openai_fields()["completions"]
tool_lists = st.lists(
    st.fixed_dictionaries(
        {"type": st.just("function")},
        optional={
            "function": st.fixed_dictionaries(
                {"name": st.text(max_size=10) | json_values},
                optional={"parameters": json_values, "description": json_values},
            )
            | json_values
        },
    ),
    max_size=3,
)
call_lists = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(max_size=5), "type": st.just("function")},
        optional={
            "function": st.fixed_dictionaries({"name": json_values, "arguments": json_values})
        },
    ),
    max_size=2,
)
message_lists = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "tool"])}, optional={"content": json_values}
    ),
    max_size=3,
)
MESSAGE_FIELDS = ["role", "content", "tool_calls", "tool_call_id", "name", "function_call"]
PART_FIELDS = ["type", "text", "image_url"]
# One change to an otherwise valid body, so every other check passes and the changed field
# is really looked at: ((where, field), value).
mutations = st.tuples(
    st.one_of(
        st.sampled_from([("body", f) for f in FIELDS]),
        st.sampled_from([("message", f) for f in MESSAGE_FIELDS]),
        st.sampled_from([("part", f) for f in PART_FIELDS]),
    ),
    st.one_of(scalars, json_values, tool_lists, call_lists, message_lists),
)


def mutated(endpoint: str, model: str, stream: bool, changes: list[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": stream, "max_tokens": 8}
    if endpoint == "/v1/chat/completions":
        part = {"type": "text", "text": "hello"}
        body["messages"] = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [part]},
        ]
    else:
        body["prompt"] = "def f(x):"
    for (where, name), value in changes:
        messages = body.get("messages")
        if where == "body":
            body[name] = value
        elif isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            last = messages[-1]
            parts = last.get("content")
            if where == "message":
                last[name] = value
            elif isinstance(parts, list) and parts and isinstance(parts[0], dict):
                parts[0][name] = value
    return body


def test_nearly_valid_bodies_with_wrong_types_are_routed_or_refused_cleanly(
    server: Server,
) -> None:
    @SETTINGS
    @given(
        endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
        model=st.sampled_from(MODELS),
        stream=st.booleans(),
        changes=st.lists(mutations, min_size=1, max_size=2),
    )
    def run(endpoint: str, model: str, stream: bool, changes: list[Any]) -> None:
        body = mutated(endpoint, model, stream, changes)
        check(*server.post(dumps(body), endpoint))

    since = len(server.lines)
    run()
    assert_clean_log(server, since)


def test_no_unknown_field_ever_reaches_an_upstream(server: Server) -> None:
    """Any top-level field names at all: each request is refused or routed, and what the
    upstreams were sent holds only fields OpenAI's schema defines."""

    @settings(SETTINGS, max_examples=150)
    @given(
        endpoint=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
        extra=st.dictionaries(
            st.text(max_size=30) | st.sampled_from(FIELDS) | st.sampled_from(sorted(FORWARDABLE)),
            st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=10),
            max_size=4,
        ),
    )
    def run(endpoint: str, extra: dict[str, Any]) -> None:
        body = mutated(endpoint, "auto:economy:cheap", False, [])
        body.update(extra)
        status, headers, data = server.post(dumps(body), endpoint)
        check(status, headers, data)
        ours = openai_fields()["chat" if endpoint.endswith("chat/completions") else "completions"]
        unknown = set(extra) - ours - EXTENSION_FIELDS
        if unknown:
            assert status == 400, (status, data[:300])
            assert orjson.loads(data)["error"]["param"] in unknown

    since = len(server.lines)
    run()
    assert server.fields_seen() <= FORWARDABLE, server.fields_seen() - FORWARDABLE
    assert_clean_log(server, since)


raw_mutations = st.sampled_from(
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"1e999",
        b'"\xff\xfe"',
        b'"\\ud800"',
        b"\x00",
        b"\xef\xbb\xbf{}",
        b'{"model": "auto", "model": 5}',
        b"[" * 2000,
        b"{" * 10,
        b'"' + b"\\" * 7 + b'"',
        b"-",
        b"0" * 400,
        b"",
    ]
)


def test_raw_bytes_nan_invalid_utf8_and_duplicates_are_refused_cleanly(server: Server) -> None:
    @SETTINGS
    @given(
        prefix=st.binary(max_size=40),
        splice=raw_mutations,
        where=st.sampled_from(["model", "content", "max_tokens", "stream", "end"]),
    )
    def run(prefix: bytes, splice: bytes, where: str) -> None:
        parts = {
            b"model": b'"auto"',
            b"content": b'"hi"',
            b"max_tokens": b"8",
            b"stream": b"false",
        }
        if where != "end":
            parts[where.encode()] = splice
        body = (
            b'{"model": %(model)s, "messages": [{"role": "user", "content": %(content)s}], '
            b'"max_tokens": %(max_tokens)s, "stream": %(stream)s, "model": "auto"}'
        ) % parts
        if where == "end":
            body += splice
        check(*server.post(prefix + body))

    since = len(server.lines)
    run()
    assert_clean_log(server, since)


def test_huge_strings_are_routed_or_refused_cleanly(server: Server) -> None:
    @settings(SETTINGS, max_examples=25)
    @given(
        size=st.integers(min_value=0, max_value=3_000_000),
        char=st.sampled_from(["x", "é", "\u2028", "\\", '"', "\x00", "😀"]),
    )
    def run(size: int, char: str) -> None:
        body = {
            "model": "auto:cheap",
            "messages": [{"role": "user", "content": char * (size // 4)}],
            "max_tokens": 4,
        }
        check(*server.post(dumps(body)))

    since = len(server.lines)
    run()
    assert_clean_log(server, since)


# --- the fixed corpus: the nastiest cases, against the in-process app ----------------------

MSG = b'[{"role": "user", "content": "hi"}]'
CORPUS: list[Any] = [
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "max_tokens": NaN}',
        400,
        None,
        id="nan-literal",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "temperature": Infinity}',
        400,
        None,
        id="infinity-literal",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "max_tokens": 1e999}',
        400,
        None,
        id="overflowing-float",
    ),
    pytest.param(
        b'{"model": "auto", "messages": '
        + MSG
        + b', "max_tokens": 123456789012345678901234567890}',
        400,
        "max_tokens",
        id="int-past-64-bits",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        None,
        id="invalid-utf8",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        None,
        id="lone-surrogate",
    ),
    pytest.param(
        b'\xef\xbb\xbf{"model": "auto", "messages": ' + MSG + b"}", 400, None, id="utf8-bom"
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "model": 7}',
        400,
        "model",
        id="duplicate-key-last-wins",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi", "tool_calls": 5}]}',
        400,
        "messages[0].tool_calls",
        id="tool-calls-not-array",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": "user", "content": "hi", "tool_calls": {"a": 1}}]}',
        400,
        "messages[0].tool_calls",
        id="tool-calls-object",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": ["user"], "content": "hi"}]}',
        400,
        "messages[0].role",
        id="role-array",
    ),
    pytest.param(
        b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}',
        400,
        "messages[0].content",
        id="content-number",
    ),
    pytest.param(
        b'{"model": "claude-haiku-4-5", "messages": [{"role": "banana", "content": "hi"}]}',
        400,
        "messages[0].role",
        id="role-not-openais",
    ),
    pytest.param(
        b'{"model": "claude-haiku-4-5", "messages": '
        + MSG[:-1]
        + b', {"role": "tool", "content": "x"}]}',
        400,
        "messages[1].tool_call_id",
        id="tool-message-without-tool-call-id",
    ),
    pytest.param(
        b'{"model": "llama-3.3-70b", "messages": '
        + MSG[:-1]
        + b', {"role": "tool", "tool_call_id": 7, "content": "x"}]}',
        400,
        "messages[1].tool_call_id",
        id="tool-call-id-number",
    ),
    pytest.param(b'{"model": "auto", "messages": "hi"}', 400, "messages", id="messages-string"),
    pytest.param(b'{"model": ["auto"], "messages": ' + MSG + b"}", 400, "model", id="model-array"),
    pytest.param(b'{"model": "auto:", "messages": ' + MSG + b"}", 400, "model", id="auto-colon"),
    pytest.param(
        b'{"model": "auto:fast:fast:fast", "messages": ' + MSG + b"}",
        400,
        "model",
        id="auto-too-many-parts",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "stream_options": {"include_usage": "yes"}}',
        400,
        "stream_options.include_usage",
        id="include-usage-string",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "stream_options": []}',
        400,
        "stream_options",
        id="stream-options-array",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "models": [1, 2]}',
        400,
        "models",
        id="models-numbers",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "min_coding_score": true}',
        400,
        "min_coding_score",
        id="score-boolean",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "max_tokens": -1}',
        400,
        "max_tokens",
        id="negative-max-tokens",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "max_tokens": 8.5}',
        400,
        "max_tokens",
        id="fractional-max-tokens",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "tools": {"a": 1}}',
        400,
        "tools",
        id="tools-object",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "response_format": "json"}',
        400,
        "response_format",
        id="response-format-string",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "api_base": "http://10.0.0.1/v1"}',
        400,
        "api_base",
        id="api-base",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "base_url": "http://10.0.0.1/v1"}',
        400,
        "base_url",
        id="base-url",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "api_key": "sk-client"}',
        400,
        "api_key",
        id="api-key-in-body",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "aws_region": "us-west-2"}',
        400,
        "aws_region",
        id="aws-region",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "litellm_params": {"api_base": "x"}}',
        400,
        "litellm_params",
        id="litellm-params",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "extra_body": {"api_base": "x"}}',
        400,
        "extra_body",
        id="nested-extra-body",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "mock_response": "free"}',
        400,
        "mock_response",
        id="mock-response",
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b', "frobnicate": 1}',
        400,
        "frobnicate",
        id="unknown-field",
    ),
    pytest.param(
        b'{"model": "gpt-5-nano", "messages": [{"role": "user", "content": [5, null, {"type": 1}]}]}',
        200,
        None,
        id="odd-parts-go-to-an-openai-upstream-as-sent",
    ),
    pytest.param(b"[" * 1025 + b"]" * 1025, 400, None, id="past-orjson-depth"),
    pytest.param(b"[" * 65 + b"]" * 65, 400, None, id="past-our-depth"),
    pytest.param(b"[" * 64 + b"]" * 64, 400, None, id="deep-but-not-an-object"),
    pytest.param(b'"just a string"', 400, None, id="top-level-string"),
    pytest.param(b"null", 400, None, id="top-level-null"),
    pytest.param(b"{}", 400, "model", id="empty-object"),
    pytest.param(b" ", 400, None, id="whitespace-only"),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b"} trailing", 400, None, id="trailing-garbage"
    ),
    pytest.param(
        b'{"model": "auto", "messages": ' + MSG + b'} {"model": "auto"}',
        400,
        None,
        id="two-documents",
    ),
    pytest.param(
        b'{"model": "\\u0000auto", "messages": ' + MSG + b"}", 404, "model", id="nul-in-model"
    ),
]


@pytest.mark.parametrize(("body", "status", "param"), CORPUS)
async def test_corpus_of_nasty_bodies(
    proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    status: int,
    param: str | None,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        raw = await resp.read()
    assert resp.status == status, raw[:300]
    if status != 200:
        payload = orjson.loads(raw)
        assert_valid("ErrorResponse", payload)
        assert payload["error"]["param"] == param
        assert sum(proxy.sim.state.requests.values()) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("model", "messages", "refused_by"),
    [
        pytest.param(
            "claude-haiku-4-5",
            [{"role": "system", "content": "be brief"}],
            "claude-haiku-4-5-20251001",
            id="system-only-to-anthropic",
        ),
        pytest.param(
            "llama-3.3-70b",
            [{"role": "system", "content": "be brief"}],
            "us.meta.llama3-3-70b-instruct-v1:0",
            id="system-only-to-bedrock",
        ),
        pytest.param(
            "llama-3.3-70b",
            [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}],
            "us.meta.llama3-3-70b-instruct-v1:0",
            id="assistant-first-to-bedrock",
        ),
    ],
)
async def test_a_conversation_a_wire_cannot_carry_moves_on_without_reaching_it(
    proxy: Proxy, model: str, messages: list[dict[str, Any]], refused_by: str
) -> None:
    """OpenAI accepts these; the Messages API wants a user or assistant turn and Converse wants
    the first turn to be the user's. The translator refuses before sending (so the next
    deployment, an OpenAI-wire one, answers) instead of passing on the upstream's 400."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions", json={"model": model, "messages": messages}
        ) as resp,
    ):
        raw = await resp.read()
    assert resp.status == 200, raw[:300]
    assert resp.headers["x-router-provider"] == "openrouter"
    assert proxy.sim.state.requests.get(refused_by, 0) == 0
