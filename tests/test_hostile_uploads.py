"""Hostile and awkward uploads get the right status and a JSON error, never a 500; the odd but valid
ones are decoded correctly; the body limit holds without reading unbounded bodies."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.limits import max_body_bytes
from gateway.settings import Settings
from memefly.paths import REPO_ROOT
from tests import bad_images
from tests.live_gateway import read_http_response, running_gateway
from tests.support import embedded_settings

MAX_UPLOAD_BYTES = 2 * 1024 * 1024


def _settings(model_base_path: Path, meme_dir: Path) -> Settings:
    return embedded_settings(
        model_base_path,
        meme_dir,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        beam_width=2,
        n_best=1,
    )


@pytest.fixture(scope="module")
def settings(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _settings(model_base_path, tmp_path_factory.mktemp("memes"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _upload(client: TestClient, data: bytes, name: str = "upload.bin", **fields: str):
    return client.post(
        "/v1/memes",
        files={"image": (name, data, "application/octet-stream")},
        data=fields,
        headers={"Accept": "application/json"},
    )


def _rendered_without_text(client: TestClient, data: bytes) -> np.ndarray:
    """The gateway's decoded image, as it renders it with one empty text box (nothing drawn)."""
    response = _upload(client, data, text="")
    assert response.status_code == 200, response.text
    meme = client.get(response.json()["permalink"])
    return np.asarray(Image.open(io.BytesIO(meme.content)).convert("RGB")).astype(int)


@pytest.mark.parametrize("name", list(bad_images.CORPUS))
def test_each_corpus_upload_gets_its_status_and_json_error_never_500(client: TestClient, name: str) -> None:
    make, status, code = bad_images.CORPUS[name]
    response = _upload(client, make(), name=f"{name}.png")
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if code is None:
        assert response.json()["captions"], "the model captioned it"
    else:
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]


def test_unsupported_format_error_lists_the_accepted_formats(client: TestClient) -> None:
    message = _upload(client, bad_images.svg()).json()["error"]["message"]
    assert all(kind in message for kind in ("JPEG", "PNG", "WEBP", "GIF", "BMP"))


def test_exif_orientation_is_applied_before_the_model_and_the_renderer(client: TestClient) -> None:
    body = _upload(client, bad_images.exif_rotated_jpeg()).json()
    assert (body["width"], body["height"]) == (60, 120), "stored 120×60 with orientation 6: upright is 60×120"
    pixels = _rendered_without_text(client, bad_images.exif_rotated_jpeg())
    assert pixels.shape[:2] == (120, 60)
    assert pixels[10, 30, 0] > 200 and pixels[10, 30, 2] < 60, "the stored left (red) half is on top"
    assert pixels[110, 30, 2] > 200 and pixels[110, 30, 0] < 60, "the stored right (blue) half is below"


def test_cmyk_jpeg_comes_out_in_its_colours(client: TestClient) -> None:
    pixels = _rendered_without_text(client, bad_images.cmyk_jpeg())
    np.testing.assert_allclose(pixels[24, 32], [255, 0, 0], atol=12)


def test_sixteen_bit_png_is_scaled_not_clipped(client: TestClient) -> None:
    pixels = _rendered_without_text(client, bad_images.sixteen_bit_png())
    row = pixels[16, :, 0]
    expected = (np.linspace(0, 65535, 256).astype(np.uint16) >> 8).astype(int)
    assert np.abs(row - expected).max() <= 2, "a ramp, as Pillow's clipping convert would give white from x=1"


def test_animated_gif_uses_its_first_frame(client: TestClient) -> None:
    pixels = _rendered_without_text(client, bad_images.animated_gif())
    np.testing.assert_allclose(pixels[15, 20], [255, 0, 0], atol=12)


@pytest.mark.parametrize(
    ("maker", "transparent_at", "opaque_at", "opaque_colour"),
    [
        (bad_images.transparent_png, (16, 16), None, None),
        (bad_images.palette_png_with_transparency, (16, 4), (16, 28), (0, 200, 0)),
    ],
)
def test_transparency_is_laid_on_white(client: TestClient, maker, transparent_at, opaque_at, opaque_colour) -> None:
    pixels = _rendered_without_text(client, maker())
    np.testing.assert_array_equal(pixels[transparent_at], [255, 255, 255])
    if opaque_at is not None:
        np.testing.assert_allclose(pixels[opaque_at], opaque_colour, atol=2)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_a_setting_and_also_pillows_own(settings: Settings, tmp_path: Path) -> None:
    from PIL import Image as PillowImage

    small = settings.model_copy(update={"max_image_pixels": 100 * 100, "meme_store_dir": tmp_path})
    before = PillowImage.MAX_IMAGE_PIXELS
    with TestClient(create_app(small)) as client:
        assert PillowImage.MAX_IMAGE_PIXELS == 100 * 100
        buffer = io.BytesIO()
        Image.new("RGB", (101, 100)).save(buffer, format="PNG")
        response = _upload(client, buffer.getvalue())
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_many_pixels"
        assert _upload(client, bad_images.one_pixel_png(), text="").status_code == 200
    assert PillowImage.MAX_IMAGE_PIXELS == before, "restored when the app stops"


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from gateway.errors import ApiError
    from gateway.images import open_upload
    from tests.bad_images import png_bomb

    def peak_rss_kib():
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, with TensorFlow).
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    data = png_bomb(int(sys.argv[1]))
    before = peak_rss_kib()
    try:
        open_upload(data, max_pixels=int(sys.argv[2]))
        outcome = "decoded"
    except ApiError as error:
        outcome = f"{error.status} {error.code}"
    print(outcome, (peak_rss_kib() - before) // 1024)
    """
)


def _peak_memory_growth_mib(side: int, max_pixels: int) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(side), str(max_pixels)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    outcome, growth = result.stdout.rsplit(maxsplit=1)
    return outcome, int(growth)


def test_png_bomb_is_refused_from_its_header_with_bounded_memory() -> None:
    outcome, growth = _peak_memory_growth_mib(30000, 40_000_000)
    assert outcome == "413 too_many_pixels"
    assert growth < 30, f"peak memory grew {growth} MiB for a refused 30000×30000 bomb"
    # The same probe sees a decode: an 8000×8000 bomb under a higher limit is decoded and costs ≥ 64 MB.
    outcome, growth = _peak_memory_growth_mib(8000, 100_000_000)
    assert outcome == "decoded"
    assert growth >= 60, f"decoding an 8000×8000 bomb grew peak memory by only {growth} MiB"


def test_base64_json_over_the_body_cap_gets_413(client: TestClient) -> None:
    image = os.urandom(MAX_UPLOAD_BYTES + 1024)
    response = client.post("/v1/memes", json={"image": base64.b64encode(image * 2).decode()})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_base64_image_under_the_body_cap_but_over_the_upload_limit_gets_413(client: TestClient) -> None:
    image = os.urandom(MAX_UPLOAD_BYTES + 1)
    assert len(base64.b64encode(image)) + 100 < max_body_bytes(MAX_UPLOAD_BYTES)
    response = client.post("/v1/memes", json={"image": base64.b64encode(image).decode()})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "image_too_large"


def test_multipart_over_the_body_cap_gets_413(client: TestClient) -> None:
    response = _upload(client, os.urandom(max_body_bytes(MAX_UPLOAD_BYTES) + 1))
    assert response.status_code == 413


def test_data_url_and_wrapped_base64_are_accepted(client: TestClient) -> None:
    encoded = base64.encodebytes(bad_images.one_pixel_png()).decode()  # wrapped with newlines
    for image in (encoded, "data:image/png;base64," + encoded):
        response = client.post("/v1/memes", json={"image": image, "text": ["hi"]})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"json": {"image": "AAAA", "template_id": "drake"}}, 422, "invalid_request"),
        ({"json": {"template_id": "drake", "text": ["x" * 501]}}, 422, "invalid_request"),
        ({"json": {"image": "data:image/png,AAAA"}}, 422, "invalid_request"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
        ({"json": ["a list"]}, 422, "invalid_request"),
        ({"files": [("image", ("a.png", b"x", "image/png")), ("image", ("b.png", b"y", "image/png"))]}, 400, None),
        ({"data": {"image": "not a file"}, "files": {"other": ("a", b"", "text/plain")}}, 422, "invalid_request"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422, None),
        ({"content": b"{}", "headers": {"content-type": "application/json", "content-length": "abc"}}, 400, None),
    ],
)
def test_malformed_bodies_get_4xx_json_errors(client: TestClient, request_kwargs: dict, status: int, code) -> None:
    response = client.post("/v1/memes", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == (code or response.json()["error"]["code"])


@pytest.fixture(scope="module")
def live_port(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    app = create_app(settings.model_copy(update={"meme_store_dir": tmp_path_factory.mktemp("live-memes")}))
    with running_gateway(app) as (_, port):
        yield port


def test_declared_content_length_over_the_cap_is_refused_before_the_body_is_sent(live_port: int) -> None:
    with socket.create_connection(("127.0.0.1", live_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/memes HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        started = time.monotonic()
        status, headers, body = read_http_response(sock, timeout=10)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert time.monotonic() - started < 5


def test_chunked_body_is_cut_off_at_the_cap_not_read_to_the_end(live_port: int) -> None:
    cap = max_body_bytes(MAX_UPLOAD_BYTES)
    chunk = b"A" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", live_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/memes HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answered = False
        try:
            while sent < 20 * cap:
                readable, _, _ = select.select([sock], [], [], 0.005)
                if readable:
                    answered = True
                    break
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            answered = True
        assert answered, f"no answer after {sent} bytes of a body capped at {cap}"
        status, _, body = read_http_response(sock, timeout=10)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"
    assert sent < 4 * cap, "the gateway stopped reading soon after the cap"
