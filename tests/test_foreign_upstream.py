"""The router against an upstream whose HTTP is nobody's here: the standard library's
``http.server`` (in a thread, on 127.0.0.1), speaking HTTP/1.0 (a stream's end is the
connection's close) and HTTP/1.1 (a length, or chunks framed by hand), to the real OpenAI SDK.
Our own client (``proxy/providers/session.py``) must read each the way the SDK expects."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import Sim, StartProxy, config_for
from tests.test_fault_matrix import MSG, NANO, with_base_url
from tests.test_fault_matrix import settings as row_settings

WORDS = ["one", " two", " three"]


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    event = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
    return b"data: " + json.dumps({**event, "choices": [choice]}).encode() + b"\n\n"


class Upstream(BaseHTTPRequestHandler):
    chunked = False  # HTTP/1.1 streams: chunked framing written by hand (http.server has none)

    def log_message(self, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        if not body.get("stream"):
            data = json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(WORDS)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.protocol_version == "HTTP/1.1":  # 1.0: the close ends this one too
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        events = [chunk(model, {"role": "assistant", "content": ""})]
        events += [chunk(model, {"content": w}) for w in WORDS]
        events += [chunk(model, {}, "stop"), b"data: [DONE]\n\n"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            if self.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            else:
                self.wfile.write(event)  # HTTP/1.0: the close ends it
            self.wfile.flush()
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")


class Http10(Upstream):
    protocol_version = "HTTP/1.0"


class Http11(Upstream):
    protocol_version = "HTTP/1.1"
    chunked = True


@pytest.fixture(params=[Http10, Http11], ids=["http-1.0", "http-1.1"])
def upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_the_sdk_gets_the_answer_from_a_standard_library_upstream(
    upstream: str, stream: bool, start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(
        config=with_base_url(config_for(sim.url, row_settings()), "openai", upstream)
    )
    client = proxy.client()
    for _ in range(2):  # the second over the connection the first left (where one was kept)
        if not stream:
            got = await client.chat.completions.create(model=NANO, messages=MSG)
            assert got.choices[0].message.content == "".join(WORDS)
            assert got.usage is not None and got.usage.completion_tokens == 3
            continue
        texts, finish = [], None
        async for part in await client.chat.completions.create(
            model=NANO, messages=MSG, stream=True
        ):
            if part.choices:
                texts.append(part.choices[0].delta.content or "")
                finish = part.choices[0].finish_reason or finish
        assert "".join(texts) == "".join(WORDS) and finish == "stop"
