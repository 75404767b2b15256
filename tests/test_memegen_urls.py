"""memegen-compatible URLs: the text encoding both ways, and /images and /templates on the real app."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.api.memegen import MAX_PIXELS, output_size
from gateway.app import create_app
from gateway.memegen_text import MAX_SEGMENT_LENGTH, decode_segment, encode_text
from tests.support import embedded_settings

# From memegen's README, "Special Characters", and the example URLs there.
DOCUMENTED_DECODINGS = [
    ("memes_everywhere", "memes everywhere"),
    ("memes-everywhere", "memes everywhere"),
    ("memes everywhere", "memes everywhere"),
    ("snake__case", "snake_case"),
    ("kebab--case", "kebab-case"),
    ("one~ntwo", "one\ntwo"),
    ("~q", "?"),
    ("~a", "&"),
    ("~p", "%"),
    ("~h", "#"),
    ("~s", "/"),
    ("~b", "\\"),
    ("~l", "<"),
    ("~g", ">"),
    ("''quoted''", '"quoted"'),
    ("_", ""),
    ("why_not_both~q", "why not both?"),
    ("~hspecial_characters~q", "#special characters?"),
    ("underscore__-dash--", "underscore_ dash-"),
    ("template__rating:_9~s10", "template_rating: 9/10"),
    ("100~p_~hthese--memes", "100% #these-memes"),
]
DOCUMENTED_ENCODINGS = [
    ("memes everywhere", "memes_everywhere"),
    ("snake_case", "snake__case"),
    ("kebab-case", "kebab--case"),
    ("one\ntwo", "one~ntwo"),
    ("? & % # / \\ < >", "~q_~a_~p_~h_~s_~b_~l_~g"),
    ('say "hi"', "say_''hi''"),
    ("", "_"),
    ("why not both?", "why_not_both~q"),
    ("100% #these-memes", "100~p_~hthese--memes"),
]
TRICKY_TEXTS = [
    "_",
    "__",
    " ",
    "  ",
    "-",
    "_ ",
    " _",
    "_-_ - _",
    "a - b _ c",
    "~",
    "~~",
    "~n",
    "~q is a question mark",
    "tilde at the end~",
    "'",
    "''",
    "'''",
    "it's",
    "'\"'",
    '"\'"',
    "~'",
    '~"',
    "a/b\\c",
    "why?/how?",
    "what's in the box!?",
    "50% off & <free> #stuff",
    "first line\nsecond line",
    "\n",
    "\n\n",
    "emoji 👍 and ünïcödé",
]
TRICKY_CHARACTERS = "_- ~'\"?&%#/\\<>\nnqaphsblgx👍"


@pytest.mark.parametrize(("segment", "text"), DOCUMENTED_DECODINGS)
def test_documented_segments_decode_to_their_text(segment: str, text: str) -> None:
    assert decode_segment(segment) == text


@pytest.mark.parametrize(("text", "segment"), DOCUMENTED_ENCODINGS)
def test_text_encodes_to_the_documented_segment(text: str, segment: str) -> None:
    assert encode_text(text) == segment


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tricky_text_survives_encoding_and_decoding(text: str) -> None:
    assert decode_segment(encode_text(text)) == text


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(alphabet=TRICKY_CHARACTERS, max_size=12))
def test_any_text_survives_encoding_and_decoding(text: str) -> None:
    assert decode_segment(encode_text(text)) == text


@pytest.mark.parametrize("text", ["a_b", "a-b", "a?b", "a/b", 'a"b', "a\nb", "a b c"])
def test_encoded_text_needs_no_reserved_url_characters(text: str) -> None:
    assert not set(encode_text(text)) & set('/?#%&\\\n "')


def test_only_a_lone_underscore_is_an_empty_line() -> None:
    assert decode_segment("_") == ""
    assert decode_segment("-") == " "
    assert decode_segment("__") == "_"
    assert encode_text(" ") == "-"


def test_the_segment_limit_is_memegens_200() -> None:
    assert MAX_SEGMENT_LENGTH == 200


def test_one_side_keeps_the_aspect_ratio_and_two_sides_fit_and_pad() -> None:
    assert output_size((500, 380), 250, None) == ((250, 190), (250, 190))
    assert output_size((500, 380), None, 190) == ((250, 190), (250, 190))
    assert output_size((500, 380), 300, 300) == ((300, 228), (300, 300))
    assert output_size((500, 380), 800, 200) == ((263, 200), (800, 200))
    assert output_size((500, 380), None, None) == ((500, 380), (500, 380))


def test_sizes_past_memegens_pixel_cap_shrink_by_quarters() -> None:
    assert output_size((500, 380), 2000, 2000) == ((1125, 855), (1125, 1125))
    picture, canvas = output_size((200, 800), 2000, None)
    assert canvas == picture and picture[0] * picture[1] <= MAX_PIXELS


# Real requests, on the embedded backend.


@pytest.fixture(scope="module")
def client(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(
        embedded_settings(
            model_base_path,
            tmp_path_factory.mktemp("memes"),
            beam_width=2,
            n_best=1,
        )
    )
    with TestClient(app) as client:
        yield client


def _image(response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


def _assert_json_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


def test_text_url_draws_the_text_on_the_template_as_png(client: TestClient) -> None:
    template = client.get("/v1/templates/buzz").json()
    response = client.get("/images/buzz/memes/memes_everywhere.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    meme = _image(response)
    assert meme.format == "PNG"
    assert meme.size == (template["width"], template["height"])
    blank = _image(client.get(template["image_url"]))
    changed = np.abs(_pixels(meme) - _pixels(blank)).max(axis=-1) > 48
    height = changed.shape[0]
    assert changed[: height // 5].mean() > 0.01, "top text drawn"
    assert changed[height * 4 // 5 :].mean() > 0.01, "bottom text drawn"


@pytest.mark.parametrize(
    ("extension", "media_type", "pillow_format"),
    [("jpg", "image/jpeg", "JPEG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_extension_picks_the_image_format(
    client: TestClient, extension: str, media_type: str, pillow_format: str
) -> None:
    response = client.get(f"/images/buzz/memes/memes_everywhere.{extension}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert _image(response).format == pillow_format


def test_width_or_height_alone_scales_keeping_the_aspect_ratio(client: TestClient) -> None:
    assert _image(client.get("/images/buzz/memes/memes_everywhere.png?width=250")).size == (250, 190)
    assert _image(client.get("/images/buzz/memes/memes_everywhere.png?height=190")).size == (250, 190)


def test_width_and_height_pad_to_exactly_that_size_with_the_text_on_the_picture(client: TestClient) -> None:
    response = client.get("/images/buzz/memes/memes_everywhere.png?width=300&height=300")
    assert response.status_code == 200, response.text
    pixels = _pixels(_image(response))
    assert pixels.shape[:2] == (300, 300)
    # The 300×228 picture is centred: 36 rows of darkened padding above it and below it.
    assert pixels[:30].max() < 128 and pixels[-30:].max() < 128
    blank = _pixels(_image(client.get("/images/buzz/_.png?width=300&height=300")))
    changed = np.abs(pixels - blank).max(axis=-1) > 48
    assert changed[36:90].mean() > 0.01, "top text drawn at the top of the picture"


@pytest.mark.parametrize("query", ["width=9", "height=2001", "width=abc"])
def test_sizes_out_of_bounds_are_422_json(client: TestClient, query: str) -> None:
    _assert_json_error(client.get(f"/images/buzz/memes.png?{query}"), 422, "invalid_request")


def test_segment_over_memegens_limit_is_414_json(client: TestClient) -> None:
    _assert_json_error(client.get(f"/images/buzz/{'test-' * 50}.png"), 414, "text_too_long")
    _assert_json_error(client.get(f"/images/buzz/ok/{'a' * 201}.png"), 414, "text_too_long")
    _assert_json_error(client.get(f"/images/buzz/{'é' * 101}.png"), 414, "text_too_long")  # 202 bytes
    assert client.get(f"/images/buzz/{'a' * 200}.png").status_code == 200


def test_unknown_template_is_404_json(client: TestClient) -> None:
    _assert_json_error(client.get("/images/no-such-template/hello.png"), 404, "template_not_found")
    _assert_json_error(client.get("/images/no-such-template.png"), 404, "template_not_found")
    _assert_json_error(client.get("/templates/no-such-template"), 404, "template_not_found")


@pytest.mark.parametrize(
    "path", ["/images/buzz/memes.gif", "/images/buzz/memes.bmp", "/images/buzz/memes", "/images/buzz.tiff"]
)
def test_unknown_extension_is_415_json(client: TestClient, path: str) -> None:
    _assert_json_error(client.get(path), 415, "unsupported_image_format")


def test_segments_past_the_templates_boxes_are_ignored_as_memegen_does(client: TestClient) -> None:
    two = client.get("/images/buzz/memes/memes_everywhere.png")
    three = client.get("/images/buzz/memes/memes_everywhere/and_more.png")
    assert three.status_code == 200
    assert np.array_equal(_pixels(_image(three)), _pixels(_image(two)))


def test_an_underscore_segment_is_an_empty_box(client: TestClient) -> None:
    top_only = _pixels(_image(client.get("/images/buzz/memes/_.png")))
    blank = _pixels(_image(client.get("/images/buzz/_/_.png")))
    changed = np.abs(top_only - blank).max(axis=-1) > 48
    height = changed.shape[0]
    assert changed[: height // 5].mean() > 0.01
    assert not changed[height * 4 // 5 :].any()


def test_template_url_without_text_gets_the_models_caption(client: TestClient) -> None:
    response = client.get("/images/buzz.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert _image(response).size == (500, 380)
    assert int(response.headers["x-memefly-model-version"]) == 1
    assert response.headers["x-memefly-caption"]
    assert _image(client.get("/images/buzz.webp?width=250")).size == (250, 190)


def test_templates_list_every_template_in_memegens_shape(client: TestClient) -> None:
    listing = client.get("/templates")
    assert listing.status_code == 200
    templates = listing.json()
    assert [t["id"] for t in templates] == [t["id"] for t in client.get("/v1/templates").json()]
    keys = {"id", "name", "lines", "overlays", "styles", "blank", "example", "source", "keywords", "_self"}
    for template in templates:
        assert set(template) == keys
        assert set(template["example"]) == {"text", "url"}
        assert template["lines"] >= 1
        assert client.get(urlsplit(template["_self"]).path).json() == template
    buzz = next(t for t in templates if t["id"] == "buzz")
    assert buzz["example"] == {
        "text": ["memes", "memes everywhere"],
        "url": "http://testserver/images/buzz/memes/memes_everywhere.png",
    }
    assert buzz["blank"] == "http://testserver/images/buzz/_.png"


def test_every_example_url_answers_its_meme(client: TestClient) -> None:
    for template in client.get("/templates").json():
        response = client.get(template["example"]["url"])
        assert response.status_code == 200, (template["example"]["url"], response.text)
        assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "path",
    [
        "/images/buzz/%00.png",
        "/images/buzz/%F0%9F.png",
        "/images/buzz/a%2Fb.png",
        "/images/buzz//.png",
        "/images/buzz/.png",
    ],
)
def test_odd_segments_are_answered_without_a_server_error(client: TestClient, path: str) -> None:
    assert client.get(path).status_code < 500


def test_openapi_documents_the_memegen_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/images/{template_id}/{text_path}",
        "/images/{template_file}",
        "/templates",
        "/templates/{template_id}",
    ):
        assert "get" in paths[path]
    assert set(paths["/images/{template_id}/{text_path}"]["get"]["responses"]["200"]["content"]) == {
        "image/jpeg",
        "image/png",
        "image/webp",
    }
