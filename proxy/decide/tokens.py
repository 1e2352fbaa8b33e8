"""Bearer tokens as bytes and digests, in one way that cannot raise on any header bytes.

aiohttp decodes header bytes as UTF-8 with ``surrogateescape``: a byte that is not UTF-8
arrives as a lone surrogate, and a plain ``str.encode()`` of it raises (a 500 before
authentication). Access control and experiment matching both hash through here.
"""

from __future__ import annotations

import hashlib


def token_bytes(token: str) -> bytes:
    """The bytes the client sent (for any str: lone surrogates pass through as such)."""
    try:
        return token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return token.encode("utf-8", "surrogatepass")


def hash_key(key: str) -> str:
    """What goes in config for a key, and what a bearer token is compared as: SHA-256 hex."""
    return hashlib.sha256(token_bytes(key)).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when absent or another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
