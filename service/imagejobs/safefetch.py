"""Fetching a URL a caller gave us (`input_images`), guarded against server-side request
forgery.

- Only `http` and `https`. The host is resolved once; every address it resolves to must
  pass `check_address` (no loopback, private, link-local, metadata, CGNAT, multicast,
  reserved, documentation, ... addresses, nor IPv4-mapped / NAT64 / 6to4 forms of them)
  unless it lies in the policy's `allow_networks`. One refused address refuses the URL.
- The connection goes to the checked address itself (the URL's host is replaced by the IP;
  the original `Host` header and TLS SNI / certificate name are kept), so a second DNS
  answer (rebinding) can never change where we connect.
- Redirects are followed here, never by httpx, at most `max_redirects` times; every hop
  is resolved and checked again, and may only go to http/https.
- The body is streamed and abandoned as soon as it exceeds `max_bytes`; the whole fetch
  (resolution, every hop, the body) has `timeout_s`.

Every failure is a `FetchError` with a `code` (`input_url_forbidden` for refusals); the
caller turns it into its own error. Of imagejobs it imports only the error tree and the
defaults (domain/).

`send_pinned` is the guarded single request underneath (any method, no redirects); webhook
deliveries POST through it, checked and pinned on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx

from imagejobs.domain import constants
from imagejobs.domain.errors import ErrorCode, FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""`resolver(host, port)` -> the addresses `host` resolves to; raises OSError on failure."""

SCHEMES = frozenset({"http", "https"})
INPUT_URL = "input URL"  # how messages name the URL fetched (webhooks name theirs)
GET_HEADERS = {
    "Accept": "image/*,*/*;q=0.8",
    "Accept-Encoding": "identity",  # no decompression bombs
}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# FetchError codes
FORBIDDEN = ErrorCode.INPUT_URL_FORBIDDEN  # the policy refuses the URL (scheme or address)
INVALID = ErrorCode.INPUT_URL_INVALID  # not a usable URL
UNREACHABLE = ErrorCode.INPUT_URL_UNREACHABLE  # no DNS answer, no connection, broken transfer
TIMEOUT = ErrorCode.INPUT_URL_TIMEOUT
TOO_LARGE = ErrorCode.INPUT_URL_TOO_LARGE
TOO_MANY_REDIRECTS = ErrorCode.INPUT_URL_TOO_MANY_REDIRECTS
BAD_STATUS = ErrorCode.INPUT_URL_BAD_STATUS  # an HTTP error status (or a redirect without Location)


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in rows)


# First match wins, so the more specific networks come first.
_V4_REFUSED = _table(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.169.254/32", "the cloud metadata address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol-assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_V6_REFUSED = _table(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("fd00:ec2::254/128", "the cloud metadata address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "an IETF protocol-assignment address (Teredo, benchmarking, ORCHID)"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


# --- the decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchPolicy:
    """What may be fetched. `allow_networks` are CIDRs whose addresses are fetched even
    though `check_address` would refuse them (an internal image host, a test server)."""

    allow_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = constants.FETCH_MAX_BYTES
    timeout_s: float = constants.FETCH_TIMEOUT_S  # the whole fetch, all redirects included
    max_redirects: int = constants.FETCH_MAX_REDIRECTS

    @classmethod
    def build(
        cls,
        allow_networks: Iterable[str] = (),
        *,
        max_bytes: int = constants.FETCH_MAX_BYTES,
        timeout_s: float = constants.FETCH_TIMEOUT_S,
        max_redirects: int = constants.FETCH_MAX_REDIRECTS,
    ) -> FetchPolicy:
        """A policy from CIDR strings (`10.1.0.0/16`, `fd00::/8`; host bits are ignored).
        Raises ValueError for a string that is not a network."""
        return cls(
            allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks),
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            max_redirects=max_redirects,
        )


def _refused_by_table(ip: IPAddress) -> str | None:
    table = _V4_REFUSED if ip.version == 4 else _V6_REFUSED
    for net, why in table:
        if ip in net:
            return why
    return None


def check_address(ip: IPAddress | str, policy: FetchPolicy | None = None) -> str | None:
    """None when we may connect to `ip`, else why not ("a loopback address", ...).

    An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is judged as the IPv4 address it
    stands for. A NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address is refused when
    the IPv4 address embedded in it would be. Any other IPv6 address outside global
    unicast (`2000::/3`) is refused as reserved. `policy.allow_networks` wins over all.
    """
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if policy is not None and any(addr in net for net in policy.allow_networks):
        return None
    why = _refused_by_table(addr)
    if why is not None or isinstance(addr, ipaddress.IPv4Address):
        return why
    embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF) if addr in _NAT64 else addr.sixtofour
    if embedded is not None:
        inner = _refused_by_table(embedded)
        return f"an IPv6 address embedding {inner}" if inner else None
    if addr not in _V6_GLOBAL_UNICAST:
        return "a reserved address"
    return None


# --- resolving -----------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The event loop's getaddrinfo (the system resolver), deduplicated, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 scope
        if ip not in found:
            found.append(ip)
    return found


# --- fetching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str  # the media type without parameters; '' when none was sent
    url: str  # the URL the body came from, after redirects


async def fetch(
    http: httpx.AsyncClient,
    url: str,
    policy: FetchPolicy,
    *,
    resolver: Resolver | None = None,
) -> Fetched:
    """GET `url` under `policy` (see the module docstring); raises FetchError."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(http, url, policy, resolver or system_resolver)
    except TimeoutError as exc:
        raise FetchError(
            f"input URL did not answer within {policy.timeout_s:g} s", TIMEOUT
        ) from exc


async def _fetch(
    http: httpx.AsyncClient, url: str, policy: FetchPolicy, resolver: Resolver
) -> Fetched:
    current = _parse(url)
    for _hop in range(policy.max_redirects + 1):
        hop = current
        response = await send_pinned(
            http, "GET", hop, policy, headers=GET_HEADERS, resolver=resolver
        )
        try:
            status = response.status_code
            if status in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise FetchError(
                        f"input URL answered HTTP {status} without Location", BAD_STATUS
                    )
                try:
                    target = hop.join(location)
                except httpx.InvalidURL as exc:
                    raise FetchError("input URL redirects to an invalid URL", INVALID) from exc
                current = _parse(target)
                continue
            if not 200 <= status < 300:
                raise FetchError(f"input URL answered HTTP {status}", BAD_STATUS)
            data = await _read(response, policy.max_bytes)
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return Fetched(data=data, content_type=ctype, url=str(hop))
        finally:
            await response.aclose()
            _forget_cookies(http, hop)
    raise FetchError(
        f"input URL redirects more than {policy.max_redirects} times", TOO_MANY_REDIRECTS
    )


def _parse(url: str | httpx.URL, label: str = INPUT_URL) -> httpx.URL:
    """`url` if it is an absolute http(s) URL with a host, else FetchError."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchError(f"{label} is not a valid URL", INVALID) from exc
    if parsed.scheme not in SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise FetchError(f"{label} scheme {scheme} is not allowed; use http or https", FORBIDDEN)
    if not parsed.raw_host:
        raise FetchError(f"{label} has no host", INVALID)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise FetchError(f"{label} has an invalid port", INVALID)
    return parsed


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _addresses(
    url: httpx.URL, policy: FetchPolicy, resolver: Resolver, label: str
) -> list[IPAddress]:
    """Where `url`'s host may be reached: every address checked, none refused."""
    host = url.raw_host.decode("ascii")
    literal = _literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = list(await resolver(host, port))
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"{label} host {host} cannot be resolved", UNREACHABLE) from exc
        if not addresses:
            raise FetchError(f"{label} host {host} cannot be resolved", UNREACHABLE)
    for ip in addresses:
        why = check_address(ip, policy)
        if why is not None:
            raise FetchError(
                f"{label} host {host} is {why}; fetching it is not allowed"
                if literal is not None
                else f"{label} host {host} resolves to {why}; fetching it is not allowed",
                FORBIDDEN,
            )
    return addresses


async def send_pinned(
    http: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    policy: FetchPolicy,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
    resolver: Resolver | None = None,
    label: str = INPUT_URL,
) -> httpx.Response:
    """One request to `url` (http or https) under `policy`'s address rules, connecting
    to a checked address of its host (the `Host` header and TLS name kept), redirects
    NOT followed: a streamed response, which the caller closes. Raises FetchError, its
    message starting with `label` and naming the host, never the address."""
    url = _parse(url, label)
    addresses = await _addresses(url, policy, resolver or system_resolver, label)
    host = url.raw_host.decode("ascii")
    sent = {
        **headers,
        "Host": url.netloc.decode("ascii"),
        "Connection": "close",  # never pool a connection pinned to an IP + SNI
    }
    extensions = {"sni_hostname": host} if url.scheme == "https" and not _literal(host) else {}
    failure: Exception | None = None
    for ip in addresses:
        pinned = url.copy_with(host=str(ip), username=None, password=None, fragment=None)
        request = http.build_request(
            method,
            pinned,
            headers=sent,
            content=content,
            extensions=extensions,
            timeout=policy.timeout_s,
        )
        try:
            return await http.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:  # try the next address
            failure = exc
        except httpx.TimeoutException as exc:
            raise FetchError(f"{label} host {host} did not answer in time", TIMEOUT) from exc
        except httpx.HTTPError as exc:
            raise FetchError(
                f"{label} host {host} could not be fetched: {type(exc).__name__}", UNREACHABLE
            ) from exc
    raise FetchError(
        f"{label} host {host} could not be reached: {type(failure).__name__}", UNREACHABLE
    ) from failure


async def _read(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, abandoned as soon as it is longer than `max_bytes`."""
    too_large = FetchError(f"input URL body is larger than {max_bytes} bytes", TOO_LARGE)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise FetchError("input URL body did not arrive in time", TIMEOUT) from exc
    except httpx.HTTPError as exc:
        raise FetchError(
            f"input URL body could not be read: {type(exc).__name__}", UNREACHABLE
        ) from exc
    return b"".join(chunks)


def _forget_cookies(http: httpx.AsyncClient, url: httpx.URL) -> None:
    """Drop cookies a fetched host set in the (shared) client's jar: callers' URLs must not
    grow it or leave state for the next caller's fetch of the same host."""
    host = url.raw_host.decode("ascii").lower()
    names = {host, f".{host}", f"{host}.local"}
    jar = http.cookies.jar
    for cookie in list(jar):
        if cookie.domain.lower() in names:
            with contextlib.suppress(KeyError):
                jar.clear(cookie.domain, cookie.path, cookie.name)
