"""Fetching an image by URL, off by default (MEMEFLY_URL_FETCH_ENABLED), and hardened against SSRF.

- https only, no credentials in the URL, no proxy from the environment;
- the host is resolved once, every address it resolves to must be public (not private, loopback,
  link-local, shared, reserved, multicast, or one of those inside an IPv6 wrapper), and the connection
  goes to that checked address: TLS still verifies the certificate against the host name (SNI) and
  `Host` names it, so a second DNS answer (DNS rebinding) is never asked for;
- redirects are followed by hand, at most `max_redirects`, each hop checked the same way;
- the body is read raw (no gzip expansion) and cut off past `max_bytes`; the whole fetch, redirects
  included, has one time limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from gateway.errors import ApiError

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return ip.is_global and not ip.is_multicast


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_image_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise ApiError(422, "invalid_image_url", f"image_url is not a valid URL: {error}") from error
    if parsed.scheme != "https":
        raise ApiError(422, "invalid_image_url", "image_url must be an https:// URL")
    if not parsed.host:
        raise ApiError(422, "invalid_image_url", "image_url has no host")
    if parsed.userinfo:
        raise ApiError(422, "invalid_image_url", "image_url must not carry credentials")
    return parsed


def _unreachable(message: str) -> ApiError:
    return ApiError(400, "image_url_unreachable", message)


@dataclass
class UrlFetcher:
    max_bytes: int
    timeout_seconds: float = 5.0
    max_redirects: int = 3
    resolver: Resolver = system_resolver
    address_allowed: Callable[[str], bool] = is_public_address
    ssl_context: ssl.SSLContext | None = None
    """None: httpx's default verification (certifi's CA bundle)."""

    async def fetch(self, url: str) -> bytes:
        """The image's bytes, or a 4xx `ApiError` saying why not."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._fetch(url)
        except TimeoutError as error:
            raise _unreachable(f"the image URL did not answer within {self.timeout_seconds} s") from error

    async def _fetch(self, url: str) -> bytes:
        async with httpx.AsyncClient(
            verify=self.ssl_context or True, trust_env=False, follow_redirects=False, timeout=self.timeout_seconds
        ) as client:
            for _ in range(self.max_redirects + 1):
                target = parse_image_url(url)
                address = await self._checked_address(target)
                body, redirect = await self._get(client, target, address)
                if redirect is None:
                    return body
                url = redirect
        raise _unreachable(f"the image URL redirected more than {self.max_redirects} times")

    async def _checked_address(self, url: httpx.URL) -> str:
        host = url.host
        if _is_ip_literal(host):
            addresses = [host]
        else:
            try:
                addresses = await self.resolver(host, url.port or 443)
            except (OSError, UnicodeError) as error:
                raise _unreachable(f"could not resolve {host}") from error
        if not addresses:
            raise _unreachable(f"could not resolve {host}")
        refused = [address for address in addresses if not self.address_allowed(address)]
        if refused:
            logger.warning("refused image URL on host %s: resolves to a non-public address", host)
            raise ApiError(
                403,
                "image_url_forbidden",
                f"{host} resolves to a private, loopback, link-local or reserved address",
            )
        return addresses[0]

    async def _get(self, client: httpx.AsyncClient, url: httpx.URL, address: str) -> tuple[bytes, str | None]:
        """The body, or the next URL if this one redirects."""
        extensions = {} if _is_ip_literal(url.host) else {"sni_hostname": url.host}
        request = client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={"Host": url.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity"},
            extensions=extensions,
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise _unreachable(f"could not fetch the image URL ({type(error).__name__})") from error
        try:
            if response.is_redirect:
                try:
                    return b"", str(url.join(response.headers["location"]))
                except httpx.InvalidURL as error:
                    raise _unreachable("the image URL redirected to an invalid URL") from error
            if response.status_code != 200:
                raise _unreachable(f"the image URL answered HTTP {response.status_code}")
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise _unreachable("the image URL answered with a compressed body")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise ApiError(413, "image_too_large", f"the image at the URL exceeds {self.max_bytes} bytes")
            chunks, received = [], 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > self.max_bytes:
                    raise ApiError(413, "image_too_large", f"the image at the URL exceeds {self.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks), None
        except httpx.HTTPError as error:
            raise _unreachable(f"could not read the image URL ({type(error).__name__})") from error
        finally:
            await response.aclose()
