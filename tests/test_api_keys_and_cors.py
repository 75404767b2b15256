"""Optional API keys on the POST routes (GETs stay public), CORS from settings, and no key or image
bytes in the logs."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.security import key_is_valid
from gateway.settings import Settings
from tests.bad_images import one_pixel_png
from tests.support import embedded_settings

KEYS = ["key-one-7f3a9c", "key-two-b81e44"]
ORIGIN = "https://memes.example"


@pytest.fixture(scope="module")
def client(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = embedded_settings(
        model_base_path,
        tmp_path_factory.mktemp("memes"),
        api_keys=",".join(KEYS),
        cors_allow_origins=ORIGIN,
        log_json=False,
    )
    with TestClient(create_app(settings)) as client:
        yield client


TEXT_MEME = {"template_id": "drake", "text": ["no keys", "keys"]}


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/memes", TEXT_MEME), ("/v1/templates/drake/memes", {"text": ["a", "b"]})]
)
def test_post_routes_need_a_valid_key(client: TestClient, path: str, body: dict) -> None:
    missing = client.post(path, json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "ApiKey"
    wrong = client.post(path, json=body, headers={"X-API-Key": "key-one-7f3a9d"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    for key in KEYS:
        assert client.post(path, json=body, headers={"X-API-Key": key}).status_code == 200


def test_get_routes_stay_public(client: TestClient) -> None:
    made = client.post("/v1/memes", json=TEXT_MEME, headers={"X-API-Key": KEYS[0], "Accept": "application/json"})
    for path in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json", "/v1/templates", made.json()["permalink"]):
        assert client.get(path).status_code == 200, path


def test_openapi_documents_the_api_key_header(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert any((s["type"], s.get("in"), s.get("name")) == ("apiKey", "header", "X-API-Key") for s in schemes.values())
    assert schema["paths"]["/v1/memes"]["post"]["security"]


def test_keys_and_origins_come_from_comma_separated_or_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMEFLY_API_KEYS", " k1, k2 ,")
    monkeypatch.setenv("MEMEFLY_CORS_ALLOW_ORIGINS", '["https://a.example", "https://b.example"]')
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_keys] == ["k1", "k2"]
    assert settings.cors_allow_origins == ["https://a.example", "https://b.example"]
    assert "k1" not in repr(settings) and "k1" not in str(settings.model_dump())


def test_keys_are_compared_whole() -> None:
    assert key_is_valid("abc", ["x", "abc"])
    assert not key_is_valid("ab", ["abc"])
    assert not key_is_valid("abcd", ["abc"])
    assert not key_is_valid("é", ["e"])


def test_without_keys_configured_no_key_is_needed(model_base_path: Path, tmp_path: Path) -> None:
    settings = embedded_settings(model_base_path, tmp_path)
    with TestClient(create_app(settings)) as open_client:
        assert open_client.post("/v1/memes", json=TEXT_MEME).status_code == 200
        preflight = open_client.options(
            "/v1/memes", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers, "no CORS unless origins are configured"


def test_cors_preflight_and_responses_for_the_allowed_origin_only(client: TestClient) -> None:
    preflight = client.options(
        "/v1/memes",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()

    response = client.post("/v1/memes", json=TEXT_MEME, headers={"Origin": ORIGIN, "X-API-Key": KEYS[0]})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-memefly-caption" in response.headers["access-control-expose-headers"].lower()
    refused = client.post("/v1/memes", json=TEXT_MEME, headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN, "errors readable by the allowed page too"

    other = client.options(
        "/v1/memes", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


def test_keys_and_image_bytes_never_reach_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    image = one_pixel_png()
    encoded = base64.b64encode(image).decode()
    gateway_logger = logging.getLogger("gateway")
    gateway_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            client.post("/v1/memes", json={"image": encoded, "text": ["x"]}, headers={"X-API-Key": KEYS[1]})
            client.post("/v1/memes", json={"image": encoded[:-4], "text": ["x"]}, headers={"X-API-Key": KEYS[1]})
            client.post("/v1/memes", json={"image": encoded}, headers={"X-API-Key": "not-a-key-5150"})
    finally:
        gateway_logger.removeHandler(caplog.handler)
    logged = caplog.text
    assert "request" in logged, "the access lines were captured"
    for secret in (KEYS[1], "not-a-key-5150", encoded[:16], repr(image[:8])[2:-1]):
        assert secret not in logged
    assert KEYS[0] not in repr(client.app.state.settings)
