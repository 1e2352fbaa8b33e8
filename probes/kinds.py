"""The words the measuring and serving layers share: the two request endpoints and the
failure kinds an upstream attempt (or a probe) ends with. Here, below both, because
``probes/`` imports nothing from ``proxy/``; providers, routing and breakers import it."""

from __future__ import annotations

from typing import Literal

FailureKind = Literal[
    "connect", "timeout", "rate_limited", "overloaded", "server", "auth", "client", "protocol"
]
Endpoint = Literal["chat", "completions"]

# Failures that say nothing about the deployment's health: the request's own 4xx.
CLIENT_FAULTS: frozenset[str] = frozenset({"client"})
RATE_LIMITED: FailureKind = "rate_limited"
