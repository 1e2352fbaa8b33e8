"""The AWS Bedrock adapter: Converse and ConverseStream through one aioboto3 client.

The client is created in ``start()`` and reused; botocore's own retries are off because
dispatch does fallback. Credentials come from the standard AWS chain unless given.
Translation lives in ``bedrock_wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aioboto3
import aiobotocore.session
import aiohttp
from botocore.config import Config
from botocore.eventstream import ParserError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from .base import UnsupportedFeatureError, UpstreamError, UpstreamRequest
from .bedrock_wire import (
    ConverseStreamTranslator,
    from_converse_response,
    to_converse_request,
    upstream_error,
)
from .translate import DONE, json_tool_name, sse

SERVICE = "bedrock-runtime"
CREDENTIAL_KEYS = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
# Far above the streams one process can hold open; a bound only because botocore wants one.
MAX_POOL_CONNECTIONS = 4096


def _failure(exc: BaseException, *, mid_stream: bool = False) -> UpstreamError:
    """Any exception out of aiobotocore -> UpstreamError; never includes request content."""
    if isinstance(exc, ClientError):  # EventStreamError is one: an in-stream exception
        return upstream_error(exc.response, mid_stream=mid_stream)
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return UpstreamError("timeout", f"bedrock: timed out ({type(exc).__name__})")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return UpstreamError("auth", f"bedrock: no usable AWS credentials ({type(exc).__name__})")
    if isinstance(exc, ParamValidationError):
        # The report quotes values (prompt text); name only the parameters.
        params = sorted(set(re.findall(r"parameter ([\w.\[\]]+)", str(exc))))
        where = ", ".join(params) or "the request"
        return UpstreamError("client", f"bedrock: {where} does not fit the Converse API")
    if isinstance(exc, ParserError):
        return UpstreamError(
            "protocol", f"bedrock: undecodable event stream ({type(exc).__name__})"
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("server", "bedrock: connection broke mid-answer")
    if isinstance(exc, ConnectTimeoutError | BotoCoreError | aiohttp.ClientError | OSError):
        return UpstreamError("connect", f"bedrock: connection failed ({type(exc).__name__})")
    return UpstreamError("protocol", f"bedrock: unexpected {type(exc).__name__}")


_FAILURES = (BotoCoreError, ClientError, ParserError, aiohttp.ClientError, OSError, TimeoutError)


class BedrockStream:
    """An accepted ConverseStream answer, yielded as OpenAI SSE chunks."""

    __slots__ = ("_events", "_gen", "_translator")

    def __init__(self, events: Any, translator: ConverseStreamTranslator) -> None:
        self._events = events  # aiobotocore's AioEventStream
        self._translator = translator
        self._gen: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        if self._gen is None:
            self._gen = self._iterate()
        return self._gen

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        translator = self._translator
        try:
            async for event in self._events:
                try:
                    chunks = translator.feed(event)
                except (TypeError, ValueError, AttributeError):
                    raise UpstreamError(
                        "protocol", f"bedrock: malformed {list(event)} event"
                    ) from None
                for chunk in chunks:
                    yield sse(chunk)
        except _FAILURES as exc:
            raise _failure(exc, mid_stream=True) from None
        if not translator.done:
            raise UpstreamError("server", "bedrock stream ended before messageStop")
        yield DONE

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
        self._events.close()  # releases (or drops, when unfinished) the connection


class BedrockProvider:
    """One Bedrock runtime endpoint (a region, or ``endpoint_url`` for a compatible server)."""

    kind = "bedrock"

    def __init__(
        self,
        name: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        timeouts: tuple[float, float] = (5, 60),
        credentials: Mapping[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        if credentials is not None and not set(credentials) <= CREDENTIAL_KEYS:
            unknown = sorted(set(credentials) - CREDENTIAL_KEYS)
            raise ValueError(f"bedrock provider {name}: unknown credential keys {unknown}")
        self.name = name
        self.region = region
        self.endpoint_url = endpoint_url
        self.ca_file = ca_file
        self._credentials = dict(credentials) if credentials is not None else None
        self._config = Config(
            connect_timeout=timeouts[0],  # (connect, read) in seconds
            read_timeout=timeouts[1],
            # One attempt in total ("max_attempts" would mean one *retry*): fallback is ours.
            retries={"total_max_attempts": 1, "mode": "standard"},
            # botocore's default pool of 10 would queue the 11th concurrent stream, live
            # requests behind hanging probes among them; the upstream sessions have no limit.
            max_pool_connections=MAX_POOL_CONNECTIONS,
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"BedrockProvider(name={self.name!r}, region={self.region!r})"

    def _make_session(self) -> aioboto3.Session:
        # Runs in an executor: botocore reads config files and gzipped JSON models from disk.
        # Loading them here fills the loader's cache, so creating the client on the event
        # loop is CPU work only (about 3 ms instead of 50).
        core = aiobotocore.session.get_session()
        loader = core.get_component("data_loader")
        for model in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model(SERVICE, model)
        for data in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(data)
        creds = self._credentials or {}
        return aioboto3.Session(botocore_session=core, region_name=self.region, **creds)

    async def start(self) -> None:
        if self._client is not None:
            return
        session = await asyncio.get_running_loop().run_in_executor(None, self._make_session)
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            session.client(
                SERVICE,
                region_name=self.region,
                endpoint_url=self.endpoint_url or None,
                config=self._config,
                verify=self.ca_file or None,
            )
        )
        self._stack = stack

    def pool_target(self) -> None:
        """botocore keeps its own connection pool."""
        return None

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _kwargs(self, request: UpstreamRequest) -> dict[str, Any]:
        if request.endpoint != "chat":
            raise UnsupportedFeatureError(
                "prompt", "legacy completions are not supported by Bedrock"
            )
        if self._client is None:
            raise RuntimeError(f"bedrock provider {self.name} used before start()")
        return to_converse_request(request.upstream_id, request.body)

    @staticmethod
    def _id(resp: Mapping[str, Any]) -> str:
        request_id = (resp.get("ResponseMetadata") or {}).get("RequestId")
        return f"chatcmpl-{request_id or uuid.uuid4().hex}"

    async def stream(self, request: UpstreamRequest) -> BedrockStream:
        kwargs = self._kwargs(request)
        try:
            resp = await self._client.converse_stream(**kwargs)
        except _FAILURES as exc:
            raise _failure(exc) from None
        translator = ConverseStreamTranslator(
            id=self._id(resp),
            model=request.reported_model,
            created=int(time.time()),
            json_tool=json_tool_name(request.body),
        )
        return BedrockStream(resp["stream"], translator)

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        kwargs = self._kwargs(request)
        try:
            resp = await self._client.converse(**kwargs)
        except _FAILURES as exc:
            raise _failure(exc) from None
        try:
            return from_converse_response(
                resp,
                id=self._id(resp),
                created=int(time.time()),
                model=request.reported_model,
                json_tool=json_tool_name(request.body),
            )
        except (TypeError, ValueError, AttributeError):
            raise UpstreamError("protocol", "bedrock answer is malformed") from None
