"""The provider plug point: OpenAI-shaped request in, OpenAI-shaped answer out.

Adapters translate wire formats and nothing else: no retries, no timing, no breaker
logic. Every failure leaves an adapter as an ``UpstreamError`` whose ``kind`` is one of
the failure classes below; dispatch decides what each class means.

    UpstreamError
      kind="connect"       could not connect / connection reset before a response
      kind="timeout"       no response in time (dispatch also imposes its own deadlines)
      kind="rate_limited"  429 / throttling; ``retry_after`` seconds when the upstream said
      kind="overloaded"    503 / 529 / "model not ready": the provider is shedding load
      kind="server"        other 5xx, or an error event from the upstream mid-stream
      kind="auth"          401 / 403: our credentials are wrong (not the client's fault)
      kind="client"        400 / 404 / 413 / 422 / content filter: the request's fault;
                           never counts against a deployment's health
      kind="protocol"      the upstream spoke something we cannot parse
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from probes.kinds import Endpoint, FailureKind


class UpstreamError(Exception):
    """An upstream failed. ``str()`` must never contain credentials or prompt text."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.param = param

    def __repr__(self) -> str:
        return (
            f"UpstreamError(kind={self.kind!r}, status={self.status!r}, message={self.message!r})"
        )


class UnsupportedFeatureError(Exception):
    """The request uses a feature this wire format cannot express; ``param`` names it.

    Raised before anything is sent, so the client gets a 400 instead of a silently
    dropped field.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class Sent:
    """Whether an attempt's request has left: set (``done``) once its bytes are written to the
    upstream's connection. From then on the upstream has the prompt and bills it whether or not
    an answer comes back, so dispatch charges an attempt cancelled before its response head
    only if this is set; a request refused at connect, or never sent, is not charged.

    No ``__init__`` and a class default: one per attempt costs the call and nothing else."""

    done = False


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What dispatch hands an adapter.

    ``body`` is the client's OpenAI-shaped body with routing extensions removed and
    ``model`` already set to ``upstream_id``; for streams ``stream_options.include_usage``
    is already true. Adapters must not mutate it, nor keep it past the call: dispatch
    reuses it for the next attempt.
    """

    endpoint: Endpoint
    upstream_id: str
    body: dict[str, Any]
    stream: bool
    # The ``model`` the client's answer carries (the catalog id); chunks an adapter makes
    # itself are stamped with it. Empty: the upstream id.
    answer_model: str = ""

    @property
    def reported_model(self) -> str:
        return self.answer_model or self.upstream_id

    # The deployment's FIM template (``providers/fim.py``), for servers that take no
    # ``suffix``: an adapter renders prompt + suffix in it. "" sends ``suffix`` as it is.
    fim_template: str = ""
    # Set by the adapter once the request is written upstream (None: nobody asks).
    sent: Sent | None = None


class UpstreamStream(Protocol):
    """An accepted streaming answer.

    Iterating yields bytes of OpenAI-format SSE (``data: {...}\\n\\n`` events, in the
    shape of ``CreateChatCompletionStreamResponse`` or the completions equivalent),
    ending with ``data: [DONE]\\n\\n`` only when the upstream finished. Pass-through
    adapters may yield arbitrary slices of the byte stream; translating adapters yield
    whole events. The final usage event (``"choices": []`` with ``usage``) must be present
    whenever the upstream reports usage. Mid-stream failures raise ``UpstreamError``.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None:
        """Release the upstream connection; safe to call twice."""
        ...


class Provider(Protocol):
    """One configured upstream (a provider entry in config)."""

    name: str
    kind: str

    async def start(self) -> None:
        """Create long-lived clients. Called once at app start-up."""
        ...

    async def close(self) -> None: ...

    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        """Send a streaming request; return once the upstream has accepted it (status 2xx).

        Raises ``UpstreamError`` for refusals, ``UnsupportedFeatureError`` before sending
        for requests this wire format cannot express.
        """
        ...

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        """Send a non-streaming request; return an OpenAI-shaped response object
        (``CreateChatCompletionResponse`` or ``CreateCompletionResponse``) with ``usage``."""
        ...

    def pool_target(self) -> tuple[str, Any, ssl.SSLContext | bool] | None:
        """The base URL, the ``UpstreamSession`` and the TLS setting its requests use, so the
        app can keep that connection pool warm; None for an adapter with a pool of its own.
        (The session is typed Any: the decision layer imports this module, not the session.)"""
        ...
