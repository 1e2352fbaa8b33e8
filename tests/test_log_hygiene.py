"""No key and no prompt in any log, at any level: every malformed-request shape carrying a
known key and a known prompt, sent over raw sockets to ``model-router serve --demo`` at
DEBUG; then neither is in its stderr or stdout, the usage database or /metrics. A flood of
bad requests writes a bounded number of lines."""

from __future__ import annotations

import http.client
import io
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.decide.tokens import hash_key
from proxy.http.hygiene import guard_library_logs
from tests.conftest import server_log, spawn_server, stop_server

KEY = "mr-leak-canary-key-5f1e9a"
PROMPT = "canary-prompt-7c2d41 never write me down"
BODY = (
    b'{"model": "gpt-5-nano", "messages": [{"role": "user", "content": "'
    + PROMPT.encode()
    + b'"}]}'
)
AUTH = b"Authorization: Bearer " + KEY.encode()


def head(*lines: bytes, eol: bytes = b"\r\n", length: int | None = None) -> bytes:
    extra = [b"Content-Length: %d" % (len(BODY) if length is None else length)]
    return eol.join([b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1", *lines, *extra])


# Each is sent on a connection of its own; most make aiohttp's parser fail mid-request.
SHAPES = {
    "bare-lf": head(AUTH, b"Content-Type: application/json", eol=b"\n") + b"\n\n" + BODY,
    "nul-after-key": head(AUTH + b"\x00", b"Content-Type: application/json") + b"\r\n\r\n" + BODY,
    "nul-in-body-line": head(AUTH) + b"\r\n\r\n" + BODY.replace(b"never", b"nev\x00er"),
    "space-before-colon": head(b"Authorization : Bearer " + KEY.encode()) + b"\r\n\r\n" + BODY,
    "control-char-header": head(AUTH, b"X-Bad: a\x01b") + b"\r\n\r\n" + BODY,
    "header-without-colon": head(AUTH, b"this is not a header " + PROMPT.encode())
    + b"\r\n\r\n"
    + BODY,
    "obs-fold": head(AUTH, b"X-Folded: a", b" " + PROMPT.encode()) + b"\r\n\r\n" + BODY,
    "bad-version": head(AUTH).replace(b"HTTP/1.1", b"HTTP/9.9") + b"\r\n\r\n" + BODY,
    "bad-method": head(AUTH).replace(b"POST", b"P\x7fST") + b"\r\n\r\n" + BODY,
    "cl-and-te": head(AUTH, b"Transfer-Encoding: chunked") + b"\r\n\r\n" + BODY,
    "two-content-lengths": head(AUTH, b"Content-Length: 3") + b"\r\n\r\n" + BODY,
    "bad-chunk-size": head(AUTH, b"Transfer-Encoding: chunked")
    .replace(b"Content-Length: %d\r\n" % len(BODY), b"")
    .removesuffix(b"\r\nContent-Length: %d" % len(BODY))
    + b"\r\n\r\nzz\r\n"
    + BODY
    + b"\r\n0\r\n\r\n",
    "header-too-long": head(AUTH, b"X-Long: " + PROMPT.encode() * 400) + b"\r\n\r\n" + BODY,
    "non-ascii-key": head(b"Authorization: Bearer " + KEY.encode() + b"\xff\xfe")
    + b"\r\n\r\n"
    + BODY,
    "key-in-request-line": b"GET /v1/models?api_key=" + KEY.encode() + b"&q=" + b"\x00 HTTP/1.1"
    b"\r\nHost: x\r\n\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + KEY.encode() + BODY,
}


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


class Server:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        config = tmp / "config.toml"
        config.write_text(f'[[keys]]\nid = "canary"\nsha256 = "{hash_key(KEY)}"\n')
        self.proc, url = spawn_server(
            ["serve", "--demo", "--port", "0", "--config", str(config)],
            {
                "MODEL_ROUTER_DEMO_SCALE": "0.001",
                "MODEL_ROUTER_LOG_LEVEL": "DEBUG",
                "STATE_DIRECTORY": str(self.state),
            },
        )
        self.port = int(url.rsplit(":", 1)[1])

    def get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {KEY}"})
            return conn.getresponse().read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("leak"))
    try:
        yield srv
    finally:
        stop_server(srv.proc)


def test_no_malformed_request_puts_the_key_or_the_prompt_in_any_log(server: Server) -> None:
    answers = {name: send(server.port, data) for name, data in SHAPES.items()}
    # Well-formed requests with the same key and prompt, so the usage log has rows; one
    # pins a "model" named after the prompt.
    send(server.port, head(AUTH, b"Connection: close") + b"\r\n\r\n" + BODY)
    odd = BODY.replace(b'"gpt-5-nano"', b'"' + PROMPT.encode() + b'"')
    send(server.port, head(AUTH, b"Connection: close", length=len(odd)) + b"\r\n\r\n" + odd)
    for name, answer in answers.items():
        assert KEY.encode() not in answer, name
        if answer:
            assert not answer.startswith(b"HTTP/1.1 5"), (name, answer[:200])
    metrics = server.get("/metrics")
    assert b"model_router_requests_total" in metrics
    time.sleep(1.0)  # the usage log's flush interval
    assert server.proc.stdout is not None
    stop_server(server.proc)  # flushes every log and the usage database
    stdout = server.proc.stdout.read() if not server.proc.stdout.closed else ""
    log = server_log(server.proc)
    stores = {"stderr": log.encode(), "stdout": stdout.encode(), "metrics": metrics}
    for path in server.state.iterdir():
        stores[path.name] = path.read_bytes()
    assert any(name.endswith(".db") for name in stores), sorted(stores)
    for where, data in stores.items():
        for secret in (KEY.encode(), PROMPT.encode(), b"canary-prompt"):
            assert secret not in data, (where, secret)
    assert "Traceback" not in log
    assert "bad request from 127.0.0.1" in log  # what is logged instead


def test_a_flood_of_bad_requests_writes_a_bounded_log(tmp_path: Path) -> None:
    srv = Server(tmp_path)
    try:
        before = len(server_log(srv.proc))
        for _ in range(300):
            send(srv.port, SHAPES["nul-after-key"])
        time.sleep(1.1)  # the bucket has a line again: it says how many it held back
        send(srv.port, SHAPES["bare-lf"])
        time.sleep(0.3)
        grown = server_log(srv.proc)[before:]
    finally:
        stop_server(srv.proc)
    lines = [line for line in grown.splitlines() if "bad request from" in line]
    # The bucket: a burst of 20 lines, then one a second.
    assert 10 <= len(lines) <= 40, len(lines)
    assert len(grown) < 40 * 200, len(grown)
    assert "more not logged)" in lines[-1], lines[-1]


def test_library_records_lose_exception_text_and_bytes_at_any_depth() -> None:
    """botocore.endpoint, urllib3.connectionpool, aiohttp.server: a filter on the handler
    reaches the children a filter on the parent logger does not see."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        guard_library_logs()
        for name in ("botocore.endpoint", "urllib3.connectionpool", "aiohttp.server"):
            try:
                raise ValueError(f"request was {KEY} {PROMPT}")
            except ValueError:
                logging.getLogger(name).error("failed: %s", PROMPT.encode(), exc_info=True)
        logging.getLogger("model_router.test").warning("ours: %s", "kept")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert KEY not in text and PROMPT not in text and "Traceback" not in text
    assert text.count("[ValueError]") == 3 and "ours: kept" in text
