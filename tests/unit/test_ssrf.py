"""The SSRF guard on caller-given input image URLs (`imagejobs.safefetch`).

No test here may send a packet to a non-loopback address, even with a broken guard:

- the guard's decision (`check_address`) is tested on its own, without any I/O;
- every fetch goes through `GuardTransport`, which answers a few "public" addresses from
  canned responses in memory, passes 127.0.0.1 to a real transport, and fails the test
  for any other target instead of connecting;
- names are resolved by an injected table resolver; the `no_escape` fixture (autouse)
  also fails the test on any real DNS lookup other than `localhost` (answered from
  /etc/hosts) and on any socket connect to an address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imagejobs import safefetch
from imagejobs.config import Settings
from imagejobs.domain.errors import FetchError
from imagejobs.domain.kinds import Kind
from imagejobs.providers import gemini
from imagejobs.providers.base import ProviderConfig, ProviderError, ProviderRequest, WeightedKey
from imagejobs.safefetch import FetchPolicy, check_address
from pydantic import ValidationError

from tests.fakes.gemini import FakeGemini, png_bytes
from tests.fakes.upstream import FakeRequest, FakeResponse, FakeUpstream

PUBLIC_IP = "93.184.216.34"  # answered in memory by GuardTransport, never contacted
PUBLIC_IP_2 = "198.145.29.83"
IMAGE = png_bytes(7)
ALLOW_127_0_0_1 = ("127.0.0.1/32",)


# --- the guard's decision, no I/O ---------------------------------------------------------

REFUSED = [
    # IPv4
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "protocol-assignment"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    # IPv6
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fd00:ec2::254", "metadata"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "protocol-assignment"),  # Teredo
    ("100::1", "discard-only"),
    ("64:ff9b:1::1", "NAT64"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("4000::1", "reserved"),  # outside global unicast 2000::/3
    # IPv4-mapped IPv6 forms are judged as the IPv4 address
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:10.0.0.5", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:a9fe:a9fe", "metadata"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"),
    ("::ffff:0.0.0.0", "unspecified"),
    # NAT64 and 6to4 addresses embedding a refused IPv4 address
    ("64:ff9b::7f00:1", "embedding a loopback"),
    ("64:ff9b::a9fe:a9fe", "embedding the cloud metadata"),
    ("64:ff9b::10.0.0.5", "embedding a private"),
    ("2002:7f00:1::1", "embedding a loopback"),
    ("2002:c0a8:101::1", "embedding a private"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_IP,
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.15.255.255",
    "172.32.0.0",
    "11.0.0.1",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused_addresses(address: str, why: str) -> None:
    reason = check_address(address)
    assert reason is not None, address
    assert why in reason
    assert check_address(address, FetchPolicy()) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert check_address(address) is None
    assert check_address(ipaddress.ip_address(address)) is None


def test_allow_networks_override_the_refusal() -> None:
    policy = FetchPolicy.build(["127.0.0.0/8", "10.1.0.0/16", "fd00::/8", "169.254.169.254/32"])
    for address in ("127.0.0.1", "127.9.9.9", "10.1.2.3", "fd00::5", "169.254.169.254"):
        assert check_address(address, policy) is None, address
    assert check_address("::ffff:127.0.0.1", policy) is None  # the mapped form too
    for address in ("10.2.0.1", "192.168.1.1", "::1", "fc00::1", "169.254.169.253"):
        assert check_address(address, policy) is not None, address


def test_allow_networks_ignore_host_bits_and_reject_garbage() -> None:
    assert FetchPolicy.build(["10.1.2.3/8"]).allow_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match="not-a-network"):
        FetchPolicy.build(["not-a-network"])


def test_fetch_settings_reach_every_provider_config() -> None:
    settings = Settings.model_validate(
        {
            "providers": {"mock": {}, "gemini": {}},
            "fetch": {"allow_networks": ["10.0.0.0/8"], "max_bytes": 1234, "max_redirects": 1},
        }
    )
    for name in ("mock", "gemini"):
        config = settings.provider_config(name)
        assert config is not None
        assert config.fetch.allow_networks == (ipaddress.ip_network("10.0.0.0/8"),)
        assert (config.fetch.max_bytes, config.fetch.max_redirects) == (1234, 1)
    default = Settings().provider_config("mock")
    assert default is not None
    assert default.fetch == FetchPolicy()  # nothing private allowed by default
    with pytest.raises(ValidationError, match="allow_networks"):
        Settings.model_validate({"fetch": {"allow_networks": ["10.0.0.0/33"]}})


# --- no packet leaves loopback ------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_escape(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail on any real DNS lookup but `localhost`/IP literals, and on any socket
    connect to an address other than 127.0.0.1 — whatever the guard does."""
    escapes: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name != "localhost":
                escapes.append(f"DNS lookup of {name}")
                pytest.fail(f"test tried a real DNS lookup of {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if host != "127.0.0.1":
            escapes.append(f"connect to {address}")
            pytest.fail(f"test tried to connect to {address}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield escapes
    assert escapes == []


Canned = Callable[[httpx.Request], httpx.Response]


class GuardTransport(httpx.AsyncBaseTransport):
    """Canned answers for `public` addresses (in memory), the real network for 127.0.0.1
    only, and a test failure for anything else. Records every request it is given."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.public: dict[str, Canned] = {}
        self.seen: list[httpx.Request] = []
        self.violations: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        host = request.url.host
        if host in self.public:
            return self.public[host](request)
        if host != "127.0.0.1":
            self.violations.append(str(request.url))
            pytest.fail(f"the fetch tried to connect to {request.url} (not 127.0.0.1)")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def transport() -> AsyncIterator[GuardTransport]:
    guard = GuardTransport()
    yield guard
    assert guard.violations == []


@pytest.fixture
async def client(transport: GuardTransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
        yield http


def table_resolver(
    table: dict[str, Sequence[str]],
) -> Callable[[str, int], Awaitable[list[safefetch.IPAddress]]]:
    """A resolver answering from `table`; an unknown name is NXDOMAIN (OSError)."""

    async def resolve(host: str, port: int) -> list[safefetch.IPAddress]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown test host {host}")
        return [ipaddress.ip_address(a) for a in table[host]]

    return resolve


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A real HTTP server on 127.0.0.1: /img, /hop/<n> (n relative redirects, then /img),
    /redirect?to=<url>, /big (2000 bytes), /missing (404)."""
    with FakeUpstream() as up:
        up.route("GET", "/img", lambda _: FakeResponse(200, IMAGE, {"Content-Type": "image/png"}))
        up.route("GET", r"/hop/(?P<n>\d+)", _hop)
        up.route(
            "GET", "/redirect", lambda r: FakeResponse(302, b"", {"Location": r.query["to"][0]})
        )
        up.route("GET", "/big", lambda _: FakeResponse(200, b"x" * 2000))
        up.route("GET", "/missing", lambda _: FakeResponse(404, b"no"))
        yield up


def _hop(req: FakeRequest) -> FakeResponse:
    n = int(req.match.group("n")) if req.match else 0
    return FakeResponse(302, b"", {"Location": f"/hop/{n - 1}" if n > 1 else "/img"})


def port_of(up: FakeUpstream) -> int:
    return int(up.url.rsplit(":", 1)[1])


def redirect_to(location: str, status: int = 302) -> Canned:
    return lambda request: httpx.Response(status, headers={"Location": location})


async def refused(http: httpx.AsyncClient, url: str, policy: FetchPolicy, **kw: Any) -> str:
    """The message of the FetchError `fetch` must raise with code input_url_forbidden."""
    with pytest.raises(FetchError) as info:
        await safefetch.fetch(http, url, policy, **kw)
    assert info.value.code == safefetch.FORBIDDEN, info.value.message
    return info.value.message


# --- the SSRF attempts: all refused, nothing connected ---------------------------


async def test_loopback_literal_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    message = await refused(client, f"{upstream.url}/img", FetchPolicy())
    assert "loopback" in message
    for url in (
        f"http://[::1]:{port_of(upstream)}/img",
        f"http://[::ffff:127.0.0.1]:{port_of(upstream)}/img",
        "http://0.0.0.0/",
    ):
        await refused(client, url, FetchPolicy())
    assert transport.seen == []
    assert upstream.requests == []


async def test_private_range_address_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport
) -> None:
    resolver = table_resolver({"private.test": ["10.0.0.5"], "cgnat.test": ["100.64.1.1"]})
    for url in ("http://10.0.0.5/a.png", "http://192.168.0.1/", "http://[fd00::1]/"):
        assert "private" in await refused(client, url, FetchPolicy())
    assert "private" in await refused(
        client, "https://private.test/a.png", FetchPolicy(), resolver=resolver
    )
    assert "carrier-grade" in await refused(
        client, "http://cgnat.test/", FetchPolicy(), resolver=resolver
    )
    assert transport.seen == []


async def test_link_local_metadata_address_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport
) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/computeMetadata/v1/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ):
        assert "metadata" in await refused(client, url, FetchPolicy())
    resolver = table_resolver({"metadata.google.internal": ["169.254.169.254"]})
    message = await refused(
        client,
        "http://metadata.google.internal/computeMetadata/v1/",
        FetchPolicy(),
        resolver=resolver,
    )
    assert "metadata" in message
    assert "169.254" not in message  # the resolved address is not echoed to the caller
    assert transport.seen == []


async def test_redirect_to_loopback_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    """A public host (answered in memory) redirects to the loopback server: the guard must
    refuse the second hop, so the loopback server never sees a request."""
    transport.public[PUBLIC_IP] = redirect_to(f"{upstream.url}/img")
    resolver = table_resolver({"public.test": [PUBLIC_IP], "evil.test": ["127.0.0.1"]})
    message = await refused(client, "http://public.test/start", FetchPolicy(), resolver=resolver)
    assert "loopback" in message
    for location in (
        f"http://evil.test:{port_of(upstream)}/img",  # a name resolving to loopback
        f"http://[::1]:{port_of(upstream)}/img",
        "http://169.254.169.254/latest/meta-data/",
    ):
        transport.public[PUBLIC_IP] = redirect_to(location, status=307)
        await refused(client, "http://public.test/start", FetchPolicy(), resolver=resolver)
    assert [r.url.host for r in transport.seen] == [PUBLIC_IP] * 4
    assert upstream.requests == []


async def test_redirect_out_of_the_allowed_networks_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    """A loopback server that is allowed redirects to another loopback address that is
    not: the first hop is served, the second refused (127.0.0.2 is never connected)."""
    port = port_of(upstream)
    url = f"{upstream.url}/redirect?to=http://127.0.0.2:{port}/img"
    message = await refused(client, url, FetchPolicy.build(ALLOW_127_0_0_1))
    assert "loopback" in message
    assert [r.path for r in upstream.requests] == ["/redirect"]


async def test_dns_name_resolving_to_loopback_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    resolver = table_resolver(
        {"evil.test": ["127.0.0.1"], "evil6.test": ["::1"], "mixed.test": [PUBLIC_IP, "127.0.0.1"]}
    )
    port = port_of(upstream)
    for host in ("evil.test", "evil6.test", "mixed.test"):  # one bad answer is enough
        message = await refused(
            client, f"http://{host}:{port}/img", FetchPolicy(), resolver=resolver
        )
        assert f"host {host} resolves to a loopback address" in message
    assert transport.seen == []
    assert upstream.requests == []


def _localhost_in_hosts_file() -> bool:
    try:
        return any(
            "localhost" in line.split()[1:]
            for line in Path("/etc/hosts").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        )
    except OSError:
        return False


@pytest.mark.skipif(not _localhost_in_hosts_file(), reason="localhost not in /etc/hosts")
async def test_localhost_through_the_system_resolver_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    found = await safefetch.system_resolver("localhost", 80)
    assert found
    assert all(ip.is_loopback for ip in found)
    await refused(client, f"http://localhost:{port_of(upstream)}/img", FetchPolicy())
    assert transport.seen == []
    assert upstream.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://127.0.0.1:6379/_INFO",
        "dict://127.0.0.1:11211/stat",
        "data:image/png;base64,AAAA",
        "//example.com/a.png",
    ],
)
async def test_only_http_and_https(
    client: httpx.AsyncClient, transport: GuardTransport, url: str
) -> None:
    message = await refused(client, url, FetchPolicy())
    assert "scheme" in message
    assert transport.seen == []


async def test_redirect_to_another_scheme_is_refused(
    client: httpx.AsyncClient, transport: GuardTransport
) -> None:
    transport.public[PUBLIC_IP] = redirect_to("file:///etc/passwd")
    await refused(client, f"http://{PUBLIC_IP}/", FetchPolicy())


# --- allowed fetches: pinned to the checked address --------------------------------------


async def test_allowed_fetch_from_a_real_loopback_server(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    got = await safefetch.fetch(client, f"{upstream.url}/img", FetchPolicy.build(["127.0.0.0/8"]))
    assert (got.data, got.content_type) == (IMAGE, "image/png")
    sent = upstream.requests[0]
    assert sent.headers["host"] == f"127.0.0.1:{port_of(upstream)}"
    assert sent.headers["accept-encoding"] == "identity"


async def test_connection_goes_to_the_checked_address_with_the_original_host(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    """Resolved once, connected to the IP (no second lookup for rebinding to exploit),
    the name kept in Host; relative redirects keep the name, each hop resolved again."""
    lookups: list[str] = []
    table = table_resolver({"images.test": ["127.0.0.1"]})

    async def resolver(host: str, port: int) -> list[safefetch.IPAddress]:
        lookups.append(host)
        return await table(host, port)

    port = port_of(upstream)
    policy = FetchPolicy.build(ALLOW_127_0_0_1)
    got = await safefetch.fetch(
        client, f"http://images.test:{port}/hop/2", policy, resolver=resolver
    )
    assert got.data == IMAGE
    assert got.url == f"http://images.test:{port}/img"
    assert lookups == ["images.test"] * 3
    assert [str(r.url) for r in transport.seen] == [
        f"http://127.0.0.1:{port}/hop/2",
        f"http://127.0.0.1:{port}/hop/1",
        f"http://127.0.0.1:{port}/img",
    ]
    assert [r.headers["host"] for r in upstream.requests] == [f"images.test:{port}"] * 3


async def test_https_keeps_the_name_for_sni(
    client: httpx.AsyncClient, transport: GuardTransport
) -> None:
    transport.public[PUBLIC_IP] = lambda request: httpx.Response(
        200, content=IMAGE, headers={"Content-Type": "image/png; charset=binary"}
    )
    transport.public["2606:4700::1111"] = transport.public[PUBLIC_IP]
    resolver = table_resolver({"cdn.test": [PUBLIC_IP], "cdn6.test": ["2606:4700::1111"]})
    got = await safefetch.fetch(
        client, "https://user:pw@cdn.test/a.png?sig=1#x", FetchPolicy(), resolver=resolver
    )
    assert (got.data, got.content_type) == (IMAGE, "image/png")
    await safefetch.fetch(client, "https://cdn6.test:8443/b.png", FetchPolicy(), resolver=resolver)
    await safefetch.fetch(client, f"https://{PUBLIC_IP}/c.png", FetchPolicy())
    first, second, third = transport.seen
    assert str(first.url) == f"https://{PUBLIC_IP}/a.png?sig=1"  # no userinfo, no fragment
    assert "authorization" not in first.headers
    assert (first.headers["host"], first.extensions["sni_hostname"]) == ("cdn.test", "cdn.test")
    assert str(second.url) == "https://[2606:4700::1111]:8443/b.png"
    assert (second.headers["host"], second.extensions["sni_hostname"]) == (
        "cdn6.test:8443",
        "cdn6.test",
    )
    assert "sni_hostname" not in third.extensions  # an IP literal has no name to send


def _tls_pair(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for `name` only, client context trusting its CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagejobs test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(leaf.public_bytes(pem))
        key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


async def _serve_once_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n"
            + f"Content-Length: {len(IMAGE)}\r\n\r\n".encode()
            + IMAGE
        )
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def test_https_verifies_the_name_while_connecting_to_the_ip() -> None:
    """A real TLS server on 127.0.0.1 with a certificate for `secure.test` only: fetching
    https://secure.test/ (resolved to 127.0.0.1) sends SNI secure.test and verifies the
    certificate against that name; a name the certificate lacks fails verification."""
    server_ctx, client_ctx = _tls_pair("secure.test")
    names: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_ctx.sni_callback = record_sni
    server = await asyncio.start_server(_serve_once_per_connection, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    transport = GuardTransport(httpx.AsyncHTTPTransport(verify=client_ctx))
    resolver = table_resolver({"secure.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = FetchPolicy.build(ALLOW_127_0_0_1, timeout_s=10)
    try:
        async with httpx.AsyncClient(transport=transport, trust_env=False) as http:
            got = await safefetch.fetch(
                http, f"https://secure.test:{port}/a.png", policy, resolver=resolver
            )
            assert got.data == IMAGE
            assert names == ["secure.test"]
            with pytest.raises(FetchError) as info:
                await safefetch.fetch(
                    http, f"https://other.test:{port}/a.png", policy, resolver=resolver
                )
            assert info.value.code == safefetch.UNREACHABLE
            assert names[-1] == "other.test"
    finally:
        server.close()
        await server.wait_closed()
    assert transport.violations == []


# --- limits ------------------------------------------------------------------------------


async def test_declared_size_over_the_limit(
    client: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    policy = FetchPolicy.build(ALLOW_127_0_0_1, max_bytes=1000)
    with pytest.raises(FetchError) as info:
        await safefetch.fetch(client, f"{upstream.url}/big", policy)
    assert info.value.code == safefetch.TOO_LARGE
    exact = FetchPolicy.build(ALLOW_127_0_0_1, max_bytes=2000)
    assert len((await safefetch.fetch(client, f"{upstream.url}/big", exact)).data) == 2000


class RawServer:
    """An asyncio HTTP server on 127.0.0.1 for bodies FakeUpstream cannot send:
    /endless streams chunks forever (counting bytes sent), /stall sends headers and no
    body."""

    def __init__(self) -> None:
        self.sent = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            await writer.drain()
            if path == b"/stall":
                await asyncio.sleep(30)
            chunk = b"x" * 65536
            while path == b"/endless" and self.sent < 64 * 1024 * 1024:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                self.sent += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def test_streamed_body_is_abandoned_over_the_limit(client: httpx.AsyncClient) -> None:
    async with RawServer() as raw:
        policy = FetchPolicy.build(ALLOW_127_0_0_1, max_bytes=256 * 1024)
        with pytest.raises(FetchError) as info:
            await safefetch.fetch(client, f"http://127.0.0.1:{raw.port}/endless", policy)
        assert info.value.code == safefetch.TOO_LARGE
        await asyncio.sleep(0.05)
        assert raw.sent < 16 * 1024 * 1024  # stopped reading long before the server gave up


async def test_total_time_limit(client: httpx.AsyncClient) -> None:
    async with RawServer() as raw:
        policy = FetchPolicy.build(ALLOW_127_0_0_1, timeout_s=0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(FetchError) as info:
            await safefetch.fetch(client, f"http://127.0.0.1:{raw.port}/stall", policy)
        assert info.value.code == safefetch.TIMEOUT
        assert loop.time() - started < 5

    async def slow_resolver(host: str, port: int) -> list[safefetch.IPAddress]:
        await asyncio.sleep(30)
        return []

    with pytest.raises(FetchError) as info:  # resolution counts against the limit too
        await safefetch.fetch(client, "http://slow.test/", policy, resolver=slow_resolver)
    assert info.value.code == safefetch.TIMEOUT


async def test_too_many_redirects(client: httpx.AsyncClient, upstream: FakeUpstream) -> None:
    policy = FetchPolicy.build(ALLOW_127_0_0_1, max_redirects=3)
    assert (await safefetch.fetch(client, f"{upstream.url}/hop/3", policy)).data == IMAGE
    upstream.requests.clear()
    with pytest.raises(FetchError) as info:
        await safefetch.fetch(client, f"{upstream.url}/hop/4", policy)
    assert info.value.code == safefetch.TOO_MANY_REDIRECTS
    assert len(upstream.requests) == 4  # the fifth hop was never requested
    none = FetchPolicy.build(ALLOW_127_0_0_1, max_redirects=0)
    with pytest.raises(FetchError, match="more than 0"):
        await safefetch.fetch(client, f"{upstream.url}/hop/1", none)


async def test_other_failures_have_codes(
    client: httpx.AsyncClient, transport: GuardTransport, upstream: FakeUpstream
) -> None:
    policy = FetchPolicy.build(ALLOW_127_0_0_1)
    cases = [
        (f"{upstream.url}/missing", safefetch.BAD_STATUS),
        ("http://nowhere.test/", safefetch.UNREACHABLE),  # NXDOMAIN from the table
        ("http:///no-host", safefetch.INVALID),
        ("http://bad-port.test:99999/", safefetch.INVALID),
        ("http://[::1/", safefetch.INVALID),
    ]
    for url, code in cases:
        with pytest.raises(FetchError) as info:
            await safefetch.fetch(client, url, policy, resolver=table_resolver({}))
        assert info.value.code == code, (url, info.value.message)
    transport.public[PUBLIC_IP] = lambda request: httpx.Response(302)  # no Location
    with pytest.raises(FetchError) as info:
        await safefetch.fetch(client, f"http://{PUBLIC_IP}/", policy)
    assert info.value.code == safefetch.BAD_STATUS


async def test_cookies_set_by_fetched_hosts_are_forgotten(
    client: httpx.AsyncClient, transport: GuardTransport
) -> None:
    transport.public[PUBLIC_IP] = lambda request: httpx.Response(
        200, content=IMAGE, headers={"Set-Cookie": "track=1; Path=/"}
    )
    resolver = table_resolver({"cdn.test": [PUBLIC_IP]})
    await safefetch.fetch(client, "http://cdn.test/a.png", FetchPolicy(), resolver=resolver)
    await safefetch.fetch(client, f"http://{PUBLIC_IP}/a.png", FetchPolicy())
    assert list(client.cookies.jar) == []


# --- through the Gemini adapter ----------------------------------------------------------


@pytest.fixture
def gemini_fake() -> Iterator[FakeGemini]:
    with FakeGemini(api_key="gk-test") as fake:
        yield fake


def gemini_with(fake: FakeGemini, http: httpx.AsyncClient, policy: FetchPolicy) -> Any:
    config = ProviderConfig(
        name="gemini", base_url=fake.url, keys=(WeightedKey("gk-test"),), fetch=policy
    )
    return gemini.build(config, http)


def with_input_url(url: str) -> ProviderRequest:
    return ProviderRequest(
        kind=Kind.GENERATION,
        model="gemini-3.1-flash-image",
        prompt="a cat like this one",
        params={"input_images": [url]},
    )


async def test_gemini_refuses_an_input_url_resolving_to_loopback(
    client: httpx.AsyncClient,
    transport: GuardTransport,
    upstream: FakeUpstream,
    gemini_fake: FakeGemini,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's error: 400 invalid_request_error input_url_forbidden on input_images,
    not retryable; neither the URL's server nor Gemini is called."""
    monkeypatch.setattr(safefetch, "system_resolver", table_resolver({"evil.test": ["127.0.0.1"]}))
    provider = gemini_with(gemini_fake, client, FetchPolicy())
    for url in (
        f"http://evil.test:{port_of(upstream)}/img",
        "http://169.254.169.254/latest/meta-data/",
        f"HTTP://127.0.0.1:{port_of(upstream)}/img",
    ):
        with pytest.raises(ProviderError) as info:
            await provider.run(with_input_url(url))
        err = info.value
        assert (err.status_code, err.type, err.code, err.param) == (
            400,
            "invalid_request_error",
            "input_url_forbidden",
            "input_images",
        )
        assert not err.retryable
    assert upstream.requests == []
    assert gemini_fake.requests == []


async def test_gemini_fetches_an_allowed_input_url(
    client: httpx.AsyncClient, upstream: FakeUpstream, gemini_fake: FakeGemini
) -> None:
    provider = gemini_with(gemini_fake, client, FetchPolicy.build(ALLOW_127_0_0_1))
    await provider.run(with_input_url(f"{upstream.url}/img"))
    parts = gemini_fake.requests[0].json()["contents"][0]["parts"]
    assert parts[1]["inlineData"]["mimeType"] == "image/png"
    assert parts[1]["inlineData"]["data"] == base64.b64encode(IMAGE).decode()


async def test_an_input_url_that_serves_a_decompression_bomb_is_refused(
    client: httpx.AsyncClient, upstream: FakeUpstream, gemini_fake: FakeGemini
) -> None:
    """A URL-fetched input image gets the same image checks as an upload: a 74-byte PNG
    declaring 50000 x 50000 fails the job with 400 before Gemini is called."""
    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    upstream.route("GET", "/bomb", lambda _: FakeResponse(200, bomb, {"Content-Type": "image/png"}))
    provider = gemini_with(gemini_fake, client, FetchPolicy.build(ALLOW_127_0_0_1))
    with pytest.raises(ProviderError) as info:
        await provider.run(with_input_url(f"{upstream.url}/bomb"))
    err = info.value
    assert (err.status_code, err.code, err.param) == (400, "invalid_input_image", "input_images")
    assert "input_images[0]: image dimensions" in err.message
    assert gemini_fake.requests == []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
