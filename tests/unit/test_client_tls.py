"""The SDK's `tls=` and `timeout_s=`: against an in-process gRPC server with a self-signed
certificate (the stack itself serves plaintext; TLS is the ingress's in a deployment)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from imagejobs.client import AsyncClient, DeadlineExceeded, RetryPolicy, ServerUnavailable
from imagejobs.testing import free_port
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

NO_RETRY = RetryPolicy(attempts=1)


def self_signed(host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for `host`, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Lists(jobs_pb2_grpc.ImageJobServiceServicer):
    """Answers ListJobs with an empty page, and remembers the metadata it got; GetJob
    never answers (for deadlines)."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    async def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        return jobs_pb2.ListJobsResponse()

    async def GetJob(self, request: jobs_pb2.GetJobRequest, context: Any) -> Any:
        await asyncio.sleep(30)
        return jobs_pb2.Job()


@pytest.fixture
async def tls_server() -> AsyncIterator[tuple[int, bytes, Lists]]:
    cert, key = self_signed("localhost")
    servicer = Lists()  # type: ignore[abstract]
    server = grpc.aio.server()
    jobs_pb2_grpc.add_ImageJobServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        yield port, cert, servicer
    finally:
        await server.stop(0)


async def test_tls_with_the_servers_roots_works_and_sends_the_key_and_metadata(
    tls_server: tuple[int, bytes, Lists],
) -> None:
    port, cert, servicer = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    async with AsyncClient(
        f"localhost:{port}", key="sk-bf-k", tls=credentials, metadata=[("x-request-id", "r-1")]
    ) as client:
        assert [j async for j in client.list()] == []
    assert servicer.metadata[0]["x-bf-vk"] == "sk-bf-k"
    assert servicer.metadata[0]["x-request-id"] == "r-1"


async def test_plaintext_or_untrusted_tls_to_a_tls_server_is_unavailable(
    tls_server: tuple[int, bytes, Lists],
) -> None:
    port, _, _ = tls_server
    for tls in (False, True):  # True: the system's roots, which do not hold this cert
        async with AsyncClient(f"localhost:{port}", tls=tls, retry=NO_RETRY) as client:
            with pytest.raises(ServerUnavailable):
                [j async for j in client.list()]


async def test_a_call_past_its_timeout_is_deadline_exceeded(
    tls_server: tuple[int, bytes, Lists],
) -> None:
    port, cert, _ = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    async with AsyncClient(f"localhost:{port}", tls=credentials, timeout_s=0.3) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(DeadlineExceeded) as info:
            await client.get("00000000-0000-4000-8000-000000000000")
    assert info.value.status_code == 504
    assert asyncio.get_running_loop().time() - started < 5  # not retried
