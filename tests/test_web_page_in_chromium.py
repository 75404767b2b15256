"""The web page in real headless Chromium: pick a template, get memes, edit the text, re-render."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import TRANSFORMER_MODEL_NAME, embedded_settings, free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it, and in CI this test never skips)",
)
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


@contextlib.contextmanager
def serving_page(settings: Settings) -> Iterator[str]:
    """The gateway on a free port in a uvicorn thread, ready; its base URL."""
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
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def base_url(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory):
    with serving_page(embedded_settings(model_base_path, tmp_path_factory.mktemp("memes"))) as url:
        yield url


@pytest.fixture
def browser():
    """Headless Chromium (Debian's), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def photo(tmp_path: Path, chelsea_jpeg: bytes) -> Path:
    """A real photo file, to upload through the page's file input."""
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(chelsea_jpeg)
    return path


GOLDEN = Path(__file__).parent / "golden"
GOLDEN_TOLERANCE = 0.03
"""The share of pixels that may differ by more than `PIXEL_TOLERANCE` on a channel: anti-aliasing and
font hinting move a few edge pixels between machines; a layout change moves far more."""
PIXEL_TOLERANCE = 48
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 390, "height": 844}


def assert_matches_golden(screenshot: bytes, name: str, tmp_path: Path) -> None:
    """Compare with tests/golden/<name>.png; MEMEFLY_UPDATE_GOLDEN=1 writes it anew instead."""
    from PIL import Image, ImageChops

    golden = GOLDEN / f"{name}.png"
    if os.environ.get("MEMEFLY_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_bytes(screenshot)
        return
    actual_path = tmp_path / f"{name}.png"
    actual_path.write_bytes(screenshot)
    actual = Image.open(actual_path).convert("RGB")
    expected = Image.open(golden).convert("RGB")
    assert actual.size == expected.size, f"{name}: {actual.size} against the golden {expected.size}; see {actual_path}"
    difference = ImageChops.difference(actual, expected).convert("L").point(lambda v: 255 if v > PIXEL_TOLERANCE else 0)
    changed = difference.histogram()[255] / (actual.width * actual.height)
    assert changed <= GOLDEN_TOLERANCE, f"{name}: {changed:.1%} of pixels changed (see {actual_path} against {golden})"


def _wait_for_gallery_thumbnails(page) -> None:
    """Every thumbnail the gallery shows has loaded (the lazy ones below its fold need not)."""
    page.wait_for_function(
        """() => {
            const gallery = document.getElementById("gallery").getBoundingClientRect();
            const shown = [...document.querySelectorAll("#gallery img")].filter((img) => {
                const box = img.getBoundingClientRect();
                return box.bottom > gallery.top && box.top < gallery.bottom;
            });
            return shown.length > 0 && shown.every((img) => img.complete && img.naturalWidth > 0);
        }""",
        timeout=30_000,
    )


def _wait_for_candidates(page, count: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator(".candidate")).to_have_count(count, timeout=60_000)
    page.wait_for_function(
        "document.getElementById('error').textContent !== '' ||"
        " [...document.querySelectorAll('.candidate img')].every((img) => img.complete && img.naturalWidth > 0)",
        timeout=120_000,
    )
    assert page.locator("#error").inner_text() == "", page.locator("#error").inner_text()
    expect(page.locator("#progress-box")).to_be_hidden(timeout=30_000)


MODEL_WRITTEN = ["#candidates img", ".candidate .caption", ".candidate .used", ".candidate textarea", "#concepts"]
"""What the model writes differs with its training; the golden images mask it and keep the layout."""


@needs_chromium
def test_page_gallery_upload_candidates_edit_and_more_like_this(
    base_url: str, browser, photo: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    templates = httpx.get(base_url + "/v1/templates").json()
    page = browser.new_page(viewport=DESKTOP)
    page.goto(base_url + "/")
    # The gallery: every template with its thumbnail, and a search that narrows it.
    expect(page.locator("#gallery button")).to_have_count(len(templates), timeout=20_000)
    _wait_for_gallery_thumbnails(page)
    expect(page.locator("#style option").nth(1)).to_be_attached(timeout=20_000)
    masks = [page.locator(selector) for selector in MODEL_WRITTEN]
    assert_matches_golden(page.screenshot(mask=masks), "page-gallery", tmp_path)
    page.fill("#search", "drake")
    expected = [t for t in templates if "drake" in " ".join([t["id"], t["name"], *t["aliases"]]).lower()]
    expect(page.locator("#gallery button")).to_have_count(len(expected))
    page.fill("#search", "")

    # A real upload, then n candidates side by side, with progress shown while they are made.
    page.set_input_files("#file", str(photo))
    expect(page.locator("#preview")).to_be_visible()
    page.evaluate(
        """() => {
            const status = document.getElementById("status");
            window.progressSeen = [];
            new MutationObserver(() => window.progressSeen.push(status.textContent))
                .observe(status, { childList: true, characterData: true, subtree: true });
        }"""
    )
    style = page.locator("#style option").nth(1).get_attribute("value")
    page.select_option("#style", style)
    page.fill("#topic", "mondays")
    page.fill("#n", "3")
    page.click("#generate")
    _wait_for_candidates(page, 3)
    seen = page.evaluate("window.progressSeen")
    assert "Writing captions…" in seen and "Drawing memes… 3 of 3" in seen, seen
    assert page.locator("#error").inner_text() == ""
    expect(page.locator(".candidate .used").first).to_contain_text(f"voice: {style}")
    expect(page.locator("#concepts")).to_contain_text("The model sees:")
    sources = [img.get_attribute("src") for img in page.locator(".candidate img").all()]
    assert len(sources) == 3 and all("/v1/memes/" in src for src in sources)
    for card in page.locator(".candidate").all():
        src = card.locator("img").get_attribute("src")
        assert card.locator(".download").get_attribute("href") == src
        assert card.locator(".permalink").get_attribute("href") == src
    page.evaluate("document.getElementById('concepts').scrollIntoView()")
    assert_matches_golden(page.screenshot(mask=masks), "page-candidates", tmp_path)

    # Edit one candidate's text and re-render just that one.
    second = page.locator(".candidate").nth(1)
    second.locator("textarea").fill("edited top\nedited bottom")
    second.locator(".rerender").click()
    page.wait_for_function(
        f"document.querySelectorAll('.candidate img')[1].getAttribute('src') !== {sources[1]!r}"
        " && document.querySelectorAll('.candidate img')[1].naturalWidth > 0",
        timeout=30_000,
    )
    expect(second.locator(".caption")).to_have_text("edited top / edited bottom")
    assert page.locator(".candidate img").first.get_attribute("src") == sources[0]
    rendered = httpx.get(second.locator("img").get_attribute("src"))
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"

    # More like this: a new seed, the same style.
    used = page.locator(".candidate .used").first.inner_text()
    topic = used.split("about: ")[-1] if "about: " in used else page.input_value("#topic")
    with page.expect_request(lambda r: r.url.endswith("/v1/memes") and '"seed"' in (r.post_data or "")) as asked:
        page.locator(".candidate .more").first.click()
    more = json.loads(asked.value.post_data)
    assert more["decoding"] == "sample" and more["style"] == style and more["topic"] == topic, more
    expect(page.locator("#progress-box")).to_be_hidden(timeout=60_000)
    assert page.locator(".candidate").count() >= 1
    expect(page.locator(".candidate .used").first).to_contain_text(f"voice: {style}")

    # At phone width the same page still works: one column, the gallery and the candidates fit.
    phone = browser.new_page(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True)
    phone.goto(base_url + "/")
    expect(phone.locator("#gallery button")).to_have_count(len(templates), timeout=20_000)
    _wait_for_gallery_thumbnails(phone)
    phone.locator("#gallery button", has_text="Drake").first.click()
    phone.fill("#n", "2")
    expect(phone.locator("#style option").nth(1)).to_be_attached(timeout=20_000)
    phone.select_option("#style", style)
    phone.click("#generate")
    _wait_for_candidates(phone, 2)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at phone width ({width} px)"
    boxes = [card.bounding_box() for card in phone.locator(".candidate").all()]
    assert boxes[1]["y"] > boxes[0]["y"], "at phone width the candidates stack"
    phone.evaluate("document.getElementById('candidates').scrollIntoView()")
    phone_masks = [phone.locator(selector) for selector in MODEL_WRITTEN]
    assert_matches_golden(phone.screenshot(mask=phone_masks), "page-phone", tmp_path)


@pytest.fixture(scope="module")
def two_models_url(two_models: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = embedded_settings(two_models, tmp_path_factory.mktemp("memes"), models=[TRANSFORMER_MODEL_NAME])
    with serving_page(settings) as url:
        yield url


@needs_chromium
def test_page_picks_the_transformer_and_shows_where_it_looked_word_by_word(
    two_models_url: str, browser, photo: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport=DESKTOP)
    page.goto(two_models_url + "/")
    expect(page.locator("#model option")).to_have_count(2, timeout=20_000)
    expect(page.locator("#model-box")).to_be_visible()
    expect(page.locator("#explain-box")).to_be_hidden()  # the default GRU cannot explain
    page.select_option("#model", TRANSFORMER_MODEL_NAME)
    expect(page.locator("#explain-box")).to_be_visible()
    page.check("#explain")
    page.set_input_files("#file", str(photo))
    page.fill("#n", "1")
    page.click("#generate")
    _wait_for_candidates(page, 1)
    words = page.locator(".candidate .words button")
    expect(words.first).to_be_visible()
    words.first.click()
    expect(words.first).to_have_attribute("aria-pressed", "true")
    shaded = page.evaluate(
        """() => {
            const canvas = document.querySelector(".candidate canvas");
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let shaded = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) shaded += 1;
            return { shaded, total: pixels.length / 4, width: canvas.width };
        }"""
    )
    # The heat map darkens where the model looked least: some of the photo, never all of it.
    assert shaded["width"] > 0 and 0 < shaded["shaded"] < shaded["total"], shaded
    words.first.click()
    expect(words.first).to_have_attribute("aria-pressed", "false")
