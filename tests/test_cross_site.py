"""Browsers against the keyless router (proxy/http/cross_site.py), over real sockets: what a
cross-site page sends (a text/plain "simple request", an HTML form, a no-cors GET) and what a
DNS-rebinding page sends (a foreign Host) is refused with a 403 in OpenAI's shape, nothing
goes upstream and the access log has the line; loopback pages, tools and configured names
are served; with [[keys]] none of it applies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from proxy.config import ConfigError, parse_config
from proxy.decide.tokens import hash_key
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

HOST = "127.0.0.1"
CHAT = orjson.dumps(
    {"model": "auto", "max_tokens": 50, "messages": [{"role": "user", "content": "spend"}]}
)
# The body of csrf.html's form: enctype=text/plain sends name=value, which it makes JSON.
FORM = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"user":"="}'
KEY = "mr-cross-site-key-0404"


async def raw(
    proxy: Proxy,
    headers: dict[str, str],
    body: bytes = b"",
    method: str = "POST",
    path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, str], bytes]:
    """One request as the bytes a browser sends (aiohttp's client would set Host itself)."""
    port = int(proxy.url.rsplit(":", 1)[1])
    headers = {"Host": f"{HOST}:{port}", **headers}
    if body or method == "POST":
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = out.partition(b"\r\n")
    header_block, _, payload = rest.partition(b"\r\n\r\n")
    got = {}
    for line in header_block.decode().split("\r\n"):
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), got, payload


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "model_router.access"]


def refused(status: int, body: bytes, code: str) -> str:
    assert status == 403, body
    data = orjson.loads(body)
    assert_valid("ErrorResponse", data)
    assert data["error"]["code"] == code
    assert data["error"]["type"] == "permission_error"
    message: str = data["error"]["message"]
    return message


CROSS_SITE = [
    pytest.param(
        {
            "Origin": "https://evil.example",
            "Content-Type": "text/plain;charset=UTF-8",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        },
        CHAT,
        id="fetch-no-cors-text-plain",
    ),
    pytest.param(
        {
            "Origin": "http://attacker.test:8000",
            "Content-Type": "text/plain",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
        },
        FORM,
        id="html-form-enctype-text-plain",
    ),
    pytest.param(
        {"Origin": "null", "Content-Type": "text/plain"}, CHAT, id="sandboxed-frame-null-origin"
    ),
    pytest.param(
        {"Origin": "http://127.0.0.1.evil.example", "Content-Type": "application/json"},
        CHAT,
        id="loopback-lookalike-name",
    ),
    pytest.param(
        {"Origin": "http://localhost.evil.example:80", "Content-Type": "application/json"},
        CHAT,
        id="localhost-lookalike-name",
    ),
]


@pytest.mark.parametrize(("headers", "body"), CROSS_SITE)
async def test_a_cross_site_post_is_403_nothing_goes_upstream_and_it_is_logged(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, headers: dict[str, str], body: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="model_router.access")
    status, got, payload = await raw(proxy, headers, body)
    message = refused(status, payload, "origin_not_allowed")
    assert "allowed_origins" in message and "[[keys]]" in message
    assert got["x-request-id"]
    assert not proxy.sim.state.requests
    (line,) = access_lines(caplog)
    assert line["status"] == 403 and line["error"] == "origin_not_allowed"
    assert line["path"] == "/v1/chat/completions" and line["method"] == "POST"
    assert line["request_id"] == got["x-request-id"]


async def test_a_cross_site_get_without_origin_is_refused_but_a_followed_link_is_served(
    proxy: Proxy,
) -> None:
    # <img src=...> / <script src=...> / fetch(no-cors) GET: no Origin, but Sec-Fetch-* say it.
    sub = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    status, _, payload = await raw(proxy, sub, method="GET", path="/v1/router/status")
    refused(status, payload, "cross_site_request")
    # The user clicking a link to the status page from another site is a top-level navigation.
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    status, _, payload = await raw(proxy, nav, method="GET", path="/status")
    assert status == 200, payload


@pytest.mark.parametrize(
    ("host", "method", "path", "body"),
    [
        pytest.param("rebind.evil.example:8080", "GET", "/v1/router/status", b"", id="read-status"),
        pytest.param("rebind.evil.example", "POST", "/v1/chat/completions", CHAT, id="spend"),
        pytest.param("10.1.2.3:8080", "GET", "/v1/models", b"", id="lan-address"),
        pytest.param("localhost.evil.example", "GET", "/healthz", b"", id="lookalike"),
        pytest.param("127.0.0.1:80:80", "GET", "/v1/models", b"", id="malformed"),
    ],
)
async def test_a_dns_rebinding_host_is_403_on_a_loopback_router(
    proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
    host: str,
    method: str,
    path: str,
    body: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="model_router.access")
    # Same-origin for the browser once the name resolves to 127.0.0.1: Origin is that name.
    headers = {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json"}
    status, _, payload = await raw(proxy, headers, body, method, path)
    message = refused(status, payload, "host_not_allowed")
    assert "allowed_hosts" in message and "DNS-rebinding" in message
    assert b"latency" not in payload and not proxy.sim.state.requests
    assert [line["error"] for line in access_lines(caplog)] == ["host_not_allowed"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="sdk-no-origin"),
        pytest.param({"Host": "localhost:8080"}, id="host-localhost"),
        pytest.param({"Host": "[::1]:8080"}, id="host-ipv6-loopback"),
        pytest.param({"Host": "127.0.0.2"}, id="host-127/8"),
        pytest.param({"Host": "0.0.0.0:8080"}, id="host-unspecified"),
        pytest.param({"Host": "LOCALHOST."}, id="host-case-and-dot"),
        pytest.param({"Host": "app.localhost:8080"}, id="host-localhost-subdomain"),
        pytest.param({"Origin": "http://localhost:5173"}, id="origin-vite-dev-server"),
        pytest.param({"Origin": "https://127.0.0.1:3000"}, id="origin-127"),
        pytest.param({"Origin": "http://[::1]:8080"}, id="origin-ipv6"),
        pytest.param(
            {"Origin": "http://localhost:5173", "Sec-Fetch-Site": "cross-site"},
            id="origin-loopback-other-site",
        ),
        pytest.param({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, id="same-origin"),
    ],
)
async def test_loopback_pages_and_tools_are_served(proxy: Proxy, headers: dict[str, str]) -> None:
    status, _, payload = await raw(
        proxy, {"Content-Type": "application/json", **headers}, CHAT, "POST"
    )
    assert status == 200, payload
    assert orjson.loads(payload)["choices"]


async def test_allowed_origins_and_hosts_let_a_browser_app_and_a_reverse_proxy_in(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        {
            "server": {
                "allowed_origins": ["https://Chat.Example.com/", "chrome-extension://abcdef"],
                "allowed_hosts": ["router.example.com"],
            }
        }
    )
    for headers in (
        {"Origin": "https://chat.example.com", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "chrome-extension://abcdef"},
        {"Host": "router.example.com:443", "Origin": "https://router.example.com"},
    ):
        status, _, payload = await raw(proxy, {"Content-Type": "text/plain", **headers}, CHAT)
        assert status == 200, (headers, payload)
    status, _, payload = await raw(proxy, {"Origin": "https://chat.example.com:8443"}, CHAT)
    refused(status, payload, "origin_not_allowed")  # another port is another origin
    status, _, payload = await raw(proxy, {"Host": "other.example.com"}, CHAT)
    refused(status, payload, "host_not_allowed")


async def test_bound_off_loopback_without_keys_the_lan_name_is_served_but_origins_are_checked(
    start_proxy: StartProxy,
) -> None:
    # `serve --host 0.0.0.0 --insecure-no-auth`: the app sees the configured address (the test
    # itself listens on 127.0.0.1 only).
    proxy = await start_proxy({"server": {"host": "0.0.0.0"}})
    status, _, payload = await raw(proxy, {"Host": "router.lan:8080"}, CHAT)
    assert status == 200, payload
    status, _, payload = await raw(
        proxy, {"Host": "router.lan:8080", "Origin": "https://evil.example"}, CHAT
    )
    refused(status, payload, "origin_not_allowed")
    # Naming the LAN names turns the Host check back on.
    listed = await start_proxy(
        {"server": {"host": "0.0.0.0", "allowed_hosts": ["router.lan", "[fd00::1]"]}}
    )
    for host in ("router.lan:8080", "[fd00::1]:8080"):
        status, _, payload = await raw(listed, {"Host": host}, CHAT)
        assert status == 200, payload
    status, _, payload = await raw(listed, {"Host": "rebind.evil.example:8080"}, CHAT)
    refused(status, payload, "host_not_allowed")


async def test_with_keys_a_page_cannot_spend_without_one_and_a_keyed_app_is_not_checked(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"keys": [{"id": "app", "sha256": hash_key(KEY)}]})
    evil = {"Origin": "https://evil.example", "Host": "rebind.evil.example"}
    status, _, payload = await raw(proxy, {**evil, "Content-Type": "text/plain"}, CHAT)
    assert status == 401, payload
    status, _, payload = await raw(proxy, {**evil, "Authorization": f"Bearer {KEY}"}, CHAT)
    assert status == 200, payload


@pytest.mark.parametrize(
    ("server", "message"),
    [
        pytest.param(
            {"allowed_origins": ["https://chat.example.com/app"]},
            "server.allowed_origins: 'https://chat.example.com/app' is not an origin",
            id="origin-with-path",
        ),
        pytest.param(
            {"allowed_origins": ["chat.example.com"]},
            "server.allowed_origins: 'chat.example.com' is not an origin",
            id="origin-without-scheme",
        ),
        pytest.param(
            {"allowed_origins": "https://chat.example.com"},
            "server.allowed_origins: expected tuple",
            id="origin-not-a-list",
        ),
        pytest.param(
            {"allowed_hosts": ["router.example.com:8080"]},
            "server.allowed_hosts: 'router.example.com:8080' is not a host name",
            id="host-with-port",
        ),
        pytest.param(
            {"allowed_hosts": ["https://router.example.com"]},
            "server.allowed_hosts: 'https://router.example.com' is not a host name",
            id="host-with-scheme",
        ),
    ],
)
def test_bad_allowed_origins_or_hosts_are_config_errors(
    server: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"server": server})
    assert str(err.value).startswith(message), err.value
