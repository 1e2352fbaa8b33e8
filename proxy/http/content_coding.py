"""Request bodies by ``Content-Encoding``: aiohttp decodes gzip and deflate (br and zstd
with their optional libraries) as it reads; x-gzip, gzip's old name, is decoded here; any
other coding, or more than one, is a 415 naming it with ``Accept-Encoding`` (RFC 9110
15.5.16) instead of its bytes failing as "not valid JSON" or "not valid HTTP".
"""

from __future__ import annotations

import zlib

from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD

from proxy.errors import RouterError, quote

# The codings aiohttp decodes as it reads a body (br and zstd only where their optional
# libraries are installed); x-gzip, gzip's old name (RFC 9110 8.4.1.3), is decoded here.
DECODED = frozenset(
    {
        "gzip",
        "deflate",
        "identity",
        *(["br"] if HAS_BROTLI else []),
        *(["zstd"] if HAS_ZSTD else []),
    }
)


_ACCEPTED = ", ".join(c for c in ("gzip", "deflate", "br", "zstd") if c in DECODED)


def unsupported_encoding(what: str) -> RouterError:
    return RouterError(
        415,
        f"the request body's Content-Encoding ({what}) is not one this router decodes: send "
        f"it uncompressed, or with Content-Encoding {_ACCEPTED.replace(', ', ' or ')}",
        code="unsupported_content_encoding",
        headers={"Accept-Encoding": _ACCEPTED, "Connection": "close"},
    )


def decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body as its ``Content-Encoding`` says, where aiohttp left it coded: x-gzip (gzip
    under its old name) is decoded here, within ``limit``; a coding nobody decodes is a 415
    rather than its bytes failing as "not valid JSON"."""
    coding = encoding.strip().lower()
    if coding in DECODED or not coding:
        return raw  # aiohttp decoded it as it read
    if coding != "x-gzip":
        return _refuse_coding(coding)
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(raw, limit + 1)
    except zlib.error:
        out = None
    if out is not None and len(out) > limit:
        raise RouterError(
            413,
            f"the request body is too large once decoded (over max_body_bytes, {limit} bytes)",
            code="request_too_large",
            headers={"Connection": "close"},
        )
    if out is None or not inflate.eof or inflate.unused_data:
        raise RouterError(
            400,
            f"the request body is not valid for its Content-Encoding ({quote(encoding)})",
            code="invalid_content_encoding",
            headers={"Connection": "close"},
        )
    return out


def _refuse_coding(coding: str) -> bytes:
    if "," in coding:
        raise unsupported_encoding(f"{quote(coding)}: more than one coding")
    raise unsupported_encoding(quote(coding))
