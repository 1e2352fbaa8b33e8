"""GET /status in a real headless Chromium (Debian's, driven by Playwright) against
``model-router serve --demo`` as a subprocess: every deployment gets a row and a painted
chart, and a breaker that opens shows on the page within 5 s without a reload."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.http.auth import hash_key
from tests.conftest import spawn_server, stop_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_KEY = "sk-status-admin-0001"
CLIENT_KEY = "sk-status-client-0002"
# deepseek-v3.2 has one deployment, on the deepseek provider, whose upstream id is this.
FAILING = ("deepseek-v3.2", "deepseek-chat", "deepseek-v3.2@deepseek")


def need_chromium() -> None:
    """CI installs chromium (.ci/run); there a missing browser fails the test, never skips it."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (the test extra)")
    if missing:
        why = f"needs {' and '.join(missing)}; `apt-get install chromium`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(url: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The demo with two keys, one of them admin; returns (router URL, simulator URL)."""
    tmp_path = tmp_path_factory.mktemp("demo")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[keys]]\nid = "ops"\nsha256 = "{hash_key(ADMIN_KEY)}"\nadmin = true\n\n'
        f'[[keys]]\nid = "autocomplete"\nsha256 = "{hash_key(CLIENT_KEY)}"\n'
    )
    sim_port = free_port()
    proc, url = spawn_server(
        ["serve", "--demo", "--port", "0", "--sim-port", str(sim_port), "--config", str(config)],
        {"MODEL_ROUTER_DEMO_SCALE": "0.05", "STATE_DIRECTORY": str(tmp_path)},
    )
    try:
        yield url, f"http://127.0.0.1:{sim_port}"
    finally:
        stop_server(proc)


def test_status_page_shows_every_deployment_and_a_breaker_opening_live(
    demo: tuple[str, str], tmp_path: Path
) -> None:
    need_chromium()
    from playwright.sync_api import sync_playwright

    url, sim = demo
    status = call(f"{url}/v1/router/status", key=CLIENT_KEY)
    deployments = [row["deployment"] for row in status["deployments"]]
    assert FAILING[2] in deployments and len(deployments) > 30
    # Some traffic, so the page has requests and spend to show.
    for prefer in ("fast", "cheap", "fast"):
        answer = call(
            f"{url}/v1/chat/completions",
            {"model": f"auto:{prefer}", "messages": [{"role": "user", "content": "hi"}]},
            CLIENT_KEY,
        )
        assert answer["choices"], answer

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/status#key={ADMIN_KEY}")
            # The key leaves the address bar at once; the page never prints it.
            assert "key=" not in page.url
            page.wait_for_function(
                "n => document.querySelectorAll('#rows tr[data-deployment]').length === n",
                arg=len(deployments),
                timeout=10_000,
            )
            shown = page.eval_on_selector_all(
                "#rows tr[data-deployment]", "rows => rows.map(r => r.dataset.deployment)"
            )
            assert sorted(shown) == sorted(deployments)
            # A painted chart: a line through at least two points (history and now).
            page.wait_for_function(
                """n => [...document.querySelectorAll('svg.spark path.est')]
                    .filter(p => /^M[\\d.]+ [\\d.]+(L[\\d.]+ [\\d.]+)+$/.test(p.getAttribute('d')))
                    .length === n""",
                arg=len(deployments),
                timeout=10_000,
            )
            box = page.locator("svg.spark").first.bounding_box()
            assert box is not None and box["width"] >= 100 and box["height"] >= 20
            assert page.get_attribute(f'tr[data-deployment="{FAILING[2]}"]', "data-breaker") == (
                "closed"
            )
            page.evaluate("window.__sameDocument = true")

            fault = {"model": FAILING[1], "mode": "status", "status": 500}
            assert call(f"{sim}/_sim/fault", fault) == {"ok": True}
            body = {"model": FAILING[0], "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(10):  # five consecutive failures open it
                call(f"{url}/v1/chat/completions", body, CLIENT_KEY)
                rows = call(f"{url}/v1/router/status", key=CLIENT_KEY)["deployments"]
                if next(r for r in rows if r["deployment"] == FAILING[2])["breaker"] == "open":
                    break
            else:
                pytest.fail("the breaker never opened")
            opened = time.monotonic()
            page.wait_for_selector(
                f'tr[data-deployment="{FAILING[2]}"][data-breaker="open"]', timeout=5_000
            )
            assert time.monotonic() - opened < 5.0
            assert page.evaluate("window.__sameDocument") is True  # no reload
            row = page.inner_text(f'tr[data-deployment="{FAILING[2]}"]')
            assert "open" in row
            page.screenshot(path=str(tmp_path / "status-page.png"), full_page=False)
            assert (tmp_path / "status-page.png").stat().st_size > 10_000
            # What the page holds never includes a key or its digest.
            html = page.content()
            for secret in (ADMIN_KEY, CLIENT_KEY, hash_key(ADMIN_KEY), hash_key(CLIENT_KEY)):
                assert secret not in html
            assert errors == []
        finally:
            browser.close()


def test_status_page_asks_for_an_admin_key_when_given_none_or_a_client_key(
    demo: tuple[str, str],
) -> None:
    need_chromium()
    from playwright.sync_api import sync_playwright

    url, _ = demo
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/status")
            page.wait_for_selector("#login.shown", timeout=5_000)
            assert page.locator("#rows tr").count() == 0
            page.fill("#key", CLIENT_KEY)
            page.click("#login button")
            page.wait_for_function(
                "() => document.querySelector('#login-why').textContent.includes('not an admin key')",
                timeout=5_000,
            )
            page.fill("#key", ADMIN_KEY)
            page.click("#login button")
            page.wait_for_selector("#rows tr[data-deployment]", timeout=5_000)
            assert page.locator("#login.shown").count() == 0
        finally:
            browser.close()
