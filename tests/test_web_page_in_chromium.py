"""The web page in real headless Chromium: pick a template, get memes, edit the text, re-render."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from tests.support import embedded_settings, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these Chromium reaches for Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def base_url(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = embedded_settings(
        model_base_path,
        tmp_path_factory.mktemp("memes"),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it, and in CI this test never skips)",
)
def test_page_makes_a_meme_and_re_renders_edited_text(base_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            expect(page.locator("#template option")).to_have_count(201, timeout=20_000)
            page.select_option("#template", "buzz")
            page.fill("#n", "2")
            # The style picker lists the model's styles; the topic box sends free text.
            expect(page.locator("#style option").nth(1)).to_be_attached(timeout=20_000)
            style = page.locator("#style option").nth(1).get_attribute("value")
            page.select_option("#style", style)
            page.fill("#topic", "mondays")
            page.click("#generate")
            expect(page.locator("#captions li").first).to_be_visible(timeout=30_000)
            expect(page.locator("#captions li").first).to_contain_text(f"voice: {style}")
            expect(page.locator("#concepts")).to_contain_text("The model sees:")
            meme = page.locator("#meme")
            page.wait_for_function("document.getElementById('meme').naturalWidth > 0", timeout=30_000)
            first_src = meme.get_attribute("src")
            assert first_src and "/v1/memes/" in first_src
            assert page.locator("#error").inner_text() == ""

            page.fill("#text", "edited top\nedited bottom")
            page.click("#render")
            page.wait_for_function(
                f"document.getElementById('meme').getAttribute('src') !== {first_src!r}"
                " && document.getElementById('meme').naturalWidth > 0",
                timeout=30_000,
            )
            assert page.locator("#download").get_attribute("href") == meme.get_attribute("src")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            rendered = httpx.get(meme.get_attribute("src"))
            assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
        finally:
            browser.close()
