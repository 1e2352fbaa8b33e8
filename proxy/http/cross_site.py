"""Browsers against the keyless router: with no ``[[keys]]`` anyone who can connect may spend,
and a web page in the user's browser can connect to 127.0.0.1. So, as Ollama does, a request
whose ``Origin`` is not a loopback origin (a cross-site form or ``fetch``), or whose ``Host``
is not a loopback name while the router listens on loopback (a DNS-rebinding page), is
refused with a 403 before anything is read or sent upstream. With keys a page cannot know
one, so none of this runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from proxy.config import Config
from proxy.errors import RouterError, quote

# Approved Host values remembered per config: one set lookup for the usual request; bounded,
# since Host is client text.
_SEEN_MAX = 64


def is_loopback(host: str) -> bool:
    """True when binding ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname (or "" = every address): assume reachable


def split_host(hostport: str) -> str | None:
    """``localhost:8080`` -> ``localhost``, ``[::1]:80`` -> ``::1``; lowercased, a trailing
    dot dropped; None when it is not a host with an optional port."""
    text = hostport.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return text[1:end] or None
    name, colon, port = text.rpartition(":")
    if not colon:
        name = text
    elif not port.isdigit() or ":" in name:
        return None
    name = name.removesuffix(".")
    return name or None


def is_loopback_name(host: str) -> bool:
    """``localhost`` and its subdomains (RFC 6761: they never leave the machine), and the
    loopback and unspecified addresses (Linux connects 0.0.0.0 to this machine)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or (mapped is not None and mapped.is_loopback)


def origin_host(origin: str) -> str | None:
    """The host of an ``http(s)://host[:port]`` origin; None for any other scheme, ``null``
    (a sandboxed frame, a file:// page, a redirect) or anything with a path."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in rest or "@" in rest:
        return None
    return split_host(rest)


def normal_origin(origin: str) -> str:
    return origin.strip().lower().removesuffix("/")


class BrowserGuard:
    """The checks for one config; ``refusal`` is called on every request when keys are off."""

    __slots__ = (
        "any_origin",
        "check_host",
        "hosts",
        "loopback",
        "origins",
        "seen",
        "where",
    )

    def __init__(self, config: Config) -> None:
        server = config.server
        self.where = f"{server.host}:{server.port}"
        self.origins = frozenset(normal_origin(o) for o in server.allowed_origins)
        self.any_origin = "*" in self.origins
        self.hosts = frozenset(
            h.lower().strip("[]").removesuffix(".") for h in server.allowed_hosts
        )
        self.loopback = is_loopback(server.host)
        # Bound to another address (--insecure-no-auth) clients use its LAN name, which only
        # the operator knows: the Host is checked there only against a list they give.
        self.check_host = "*" not in self.hosts and (self.loopback or bool(self.hosts))
        self.seen: set[str] = set()

    def refusal(self, headers: Mapping[str, str]) -> RouterError | None:
        """Why this request may not be served (a 403), or None."""
        if self.check_host and (host := headers.get("Host")) is not None and host not in self.seen:
            if not self._host_ok(host):
                return self._refuse_host(host)
            if len(self.seen) < _SEEN_MAX:
                self.seen.add(host)
        origin = headers.get("Origin")
        if origin is not None:
            if self.any_origin or self._origin_ok(origin):
                return None
            return RouterError(
                403,
                f"cross-origin request refused: Origin {quote(origin)} is not a loopback "
                "origin, and this router has no [[keys]], so a web page could spend your "
                "provider credit. To let a browser app call it, add its origin to [server] "
                "allowed_origins, or configure [[keys]]",
                type="permission_error",
                code="origin_not_allowed",
            )
        # No Origin: a GET a page triggers (<img>, <script>, a no-cors fetch) still says where
        # it came from here. A link the user follows (navigate) is let through.
        if headers.get("Sec-Fetch-Site") == "cross-site" and headers.get("Sec-Fetch-Mode") not in (
            None,
            "navigate",
        ):
            return RouterError(
                403,
                "cross-site request refused (Sec-Fetch-Site: cross-site): this router has no "
                "[[keys]], so only pages on this machine may call it; add the page's origin "
                "to [server] allowed_origins, or configure [[keys]]",
                type="permission_error",
                code="cross_site_request",
            )
        return None

    def _host_ok(self, host: str) -> bool:
        name = split_host(host)
        if name is None:
            return False
        return name in self.hosts or (self.loopback and is_loopback_name(name))

    def _origin_ok(self, origin: str) -> bool:
        if normal_origin(origin) in self.origins:
            return True
        # A page served under a name listed for the router (by the proxy in front) is its own.
        host = origin_host(origin)
        return host is not None and (is_loopback_name(host) or host in self.hosts)

    def _refuse_host(self, host: str) -> RouterError:
        return RouterError(
            403,
            f"Host {quote(host)} refused: this router listens on {self.where} with no [[keys]], "
            "and a request naming another host may come from a DNS-rebinding web page. Use "
            "http://127.0.0.1 or http://localhost; for a reverse proxy in front that passes "
            "its own name, add the name to [server] allowed_hosts",
            type="permission_error",
            code="host_not_allowed",
        )
