"""`model-router serve` as users run it: a subprocess on uvloop, answering the OpenAI SDK."""

from __future__ import annotations

import openai


def test_serve_demo_starts_on_uvloop_and_streams_an_answer(demo_server: str) -> None:
    client = openai.OpenAI(base_url=f"{demo_server}/v1", api_key="client-key", max_retries=0)
    try:
        stream = client.chat.completions.create(
            model="auto:fast", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        client.close()
    assert text
