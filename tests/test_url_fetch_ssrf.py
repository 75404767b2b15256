"""Fetching images by URL: off by default; https only; loopback, private, link-local and reserved
addresses refused after DNS resolution; the connection goes to the checked address, with TLS verified
for the host name; size, time and redirect limits hold."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.errors import ApiError
from gateway.settings import Settings
from gateway.url_fetch import UrlFetcher, is_public_address
from tests.support import MODEL_NAME, photo_jpeg

HOST_NAME = "images.test"
"""Resolves nowhere in real DNS: a fetch that reaches the test server went to the pinned address."""


def _certificate(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `host` and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


class _ImageHost(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]  # (path, Host header)
    image: bytes

    def log_message(self, *_) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append((self.path, self.headers.get("Host", "")))
        if self.path == "/cat.jpg":
            self._send(200, self.image, {"Content-Type": "image/jpeg"})
        elif self.path.startswith("/redirect?to="):
            self._send(302, b"", {"Location": self.path.split("=", 1)[1]})
        elif self.path == "/big":
            self._send(200, b"\xff" * (3 * 1024 * 1024), {"Content-Type": "image/jpeg"})
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff" * 65536
            try:
                for _ in range(64):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/slow":
            time.sleep(3)
            self._send(200, self.image, {})
        else:
            self._send(404, b"", {})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bytes, list, list]]:
    """An HTTPS server on 127.0.0.1 with a certificate for HOST_NAME: (port, its certificate, requests seen,
    SNI names seen)."""
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = _certificate(HOST_NAME)
    (folder / "cert.pem").write_bytes(certificate)
    (folder / "key.pem").write_bytes(key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    sni_seen: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni_seen.append(name)
    handler = type("Handler", (_ImageHost,), {"seen": [], "image": photo_jpeg("chelsea")})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], certificate, handler.seen, sni_seen
    finally:
        server.shutdown()
        server.server_close()


def _fetcher(certificate: bytes, resolved: dict[str, list[str]], lookups: list[str], **limits) -> UrlFetcher:
    async def resolver(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return resolved[host]

    return UrlFetcher(
        max_bytes=limits.get("max_bytes", 1024 * 1024),
        timeout_seconds=limits.get("timeout_seconds", 5.0),
        resolver=resolver,
        address_allowed=lambda address: address == "127.0.0.1",  # the test server stands in for a public host
        ssl_context=ssl.create_default_context(cadata=certificate.decode()),
    )


def _fetch(fetcher: UrlFetcher, url: str) -> bytes:
    return asyncio.run(fetcher.fetch(url))


def test_connection_goes_to_the_checked_address_with_tls_verified_for_the_host_name(image_host) -> None:
    port, certificate, seen, sni_seen = image_host
    lookups: list[str] = []
    fetcher = _fetcher(certificate, {HOST_NAME: ["127.0.0.1"]}, lookups)
    assert _fetch(fetcher, f"https://{HOST_NAME}:{port}/cat.jpg") == photo_jpeg("chelsea")
    assert lookups == [HOST_NAME], "resolved once, by the gateway: nothing else asked DNS again"
    assert seen[-1] == ("/cat.jpg", f"{HOST_NAME}:{port}")
    assert sni_seen[-1] == HOST_NAME


def test_a_certificate_for_another_name_is_refused(image_host) -> None:
    port, certificate, *_ = image_host
    fetcher = _fetcher(certificate, {"other.test": ["127.0.0.1"]}, [])
    with pytest.raises(ApiError) as refused:
        _fetch(fetcher, f"https://other.test:{port}/cat.jpg")
    assert (refused.value.status, refused.value.code) == (400, "image_url_unreachable")


def test_every_redirect_hop_is_checked_again(image_host) -> None:
    port, certificate, *_ = image_host
    lookups: list[str] = []
    fetcher = _fetcher(certificate, {HOST_NAME: ["127.0.0.1"], "internal.test": ["10.1.2.3"]}, lookups)
    to_self = f"https://{HOST_NAME}:{port}/cat.jpg"
    assert _fetch(fetcher, f"https://{HOST_NAME}:{port}/redirect?to={to_self}") == photo_jpeg("chelsea")
    with pytest.raises(ApiError) as refused:
        _fetch(fetcher, f"https://{HOST_NAME}:{port}/redirect?to=https://internal.test/secret")
    assert (refused.value.status, refused.value.code) == (403, "image_url_forbidden")
    with pytest.raises(ApiError) as refused:
        _fetch(fetcher, f"https://{HOST_NAME}:{port}/redirect?to=http://{HOST_NAME}:{port}/cat.jpg")
    assert (refused.value.status, refused.value.code) == (422, "invalid_image_url")


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_bodies_over_the_limit_are_cut_off(image_host, path: str) -> None:
    port, certificate, *_ = image_host
    with pytest.raises(ApiError) as refused:
        _fetch(_fetcher(certificate, {HOST_NAME: ["127.0.0.1"]}, []), f"https://{HOST_NAME}:{port}{path}")
    assert (refused.value.status, refused.value.code) == (413, "image_too_large")


def test_a_slow_host_hits_the_time_limit(image_host) -> None:
    port, certificate, *_ = image_host
    fetcher = _fetcher(certificate, {HOST_NAME: ["127.0.0.1"]}, [], timeout_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(ApiError) as refused:
        _fetch(fetcher, f"https://{HOST_NAME}:{port}/slow")
    assert (refused.value.status, refused.value.code) == (400, "image_url_unreachable")
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.1.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::1", False),
        ("64:ff9b::a00:1", False),
    ],
)
def test_which_addresses_count_as_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.fixture(scope="module")
def clients(model_base_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    common = {
        "backend": "embedded",
        "model_name": MODEL_NAME,
        "model_base_path": model_base_path,
        "meme_store_dir": tmp_path_factory.mktemp("memes"),
    }
    with (
        TestClient(create_app(Settings(**common))) as disabled,
        TestClient(create_app(Settings(**common, url_fetch_enabled=True, url_fetch_timeout_seconds=3))) as enabled,
    ):
        yield {"disabled": disabled, "enabled": enabled}


def test_url_fetching_is_refused_when_disabled(clients: dict[str, TestClient]) -> None:
    response = clients["disabled"].post("/v1/memes", json={"image_url": "https://example.com/cat.jpg"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_fetch_disabled"


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("http://example.com/cat.jpg", 422, "invalid_image_url"),
        ("ftp://example.com/cat.jpg", 422, "invalid_image_url"),
        ("https://user:secret@example.com/cat.jpg", 422, "invalid_image_url"),
        ("https:///cat.jpg", 422, "invalid_image_url"),
        ("https://localhost/cat.jpg", 403, "image_url_forbidden"),
        ("https://localhost:{port}/cat.jpg", 403, "image_url_forbidden"),
        ("https://0x7f000001/cat.jpg", 403, "image_url_forbidden"),
        ("https://127.0.0.1/cat.jpg", 403, "image_url_forbidden"),
        ("https://[::1]/cat.jpg", 403, "image_url_forbidden"),
        ("https://169.254.169.254/latest/meta-data/", 403, "image_url_forbidden"),
        ("https://10.0.0.1/cat.jpg", 403, "image_url_forbidden"),
        ("https://name.invalid/cat.jpg", 400, "image_url_unreachable"),
    ],
)
def test_urls_refused_before_any_connection(
    clients: dict[str, TestClient], image_host, url: str, status: int, code: str
) -> None:
    port, _, seen, sni_seen = image_host
    handshakes_before = len(sni_seen)
    response = clients["enabled"].post("/v1/memes", json={"image_url": url.format(port=port)})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert len(sni_seen) == handshakes_before, "no TLS handshake reached the local server"


def test_an_image_url_is_one_source_among_image_and_template(clients: dict[str, TestClient]) -> None:
    response = clients["enabled"].post(
        "/v1/memes", json={"image_url": "https://example.com/cat.jpg", "template_id": "drake"}
    )
    assert response.status_code == 422


def test_a_fetched_image_becomes_a_meme(clients: dict[str, TestClient], image_host) -> None:
    port, certificate, *_ = image_host
    app = clients["enabled"].app
    configured = app.state.memes.url_fetcher
    # The configured fetcher allows public addresses only; the local server needs the test's allow-list.
    app.state.memes.url_fetcher = _fetcher(certificate, {HOST_NAME: ["127.0.0.1"]}, [])
    try:
        response = clients["enabled"].post(
            "/v1/memes",
            json={"image_url": f"https://{HOST_NAME}:{port}/cat.jpg", "text": ["top", "bottom"]},
            headers={"Accept": "application/json"},
        )
    finally:
        app.state.memes.url_fetcher = configured
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (451, 300)
