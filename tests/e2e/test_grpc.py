"""Native gRPC: direct to the API and through Envoy's single listener; typed error
details; health and reflection through the gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from imagejobs.testing import Stack
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc

from tests.conftest import status_word

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["direct", "gateway"])
def channel(request: pytest.FixtureRequest, stack: Stack) -> Iterator[grpc.Channel]:
    target = stack.grpc_direct if request.param == "direct" else stack.grpc_gateway
    with grpc.insecure_channel(target) as ch:
        yield ch


def wait_done(
    stub: jobs_pb2_grpc.ImageJobServiceStub, kind: jobs_pb2.JobKind.ValueType, job_id: str
) -> jobs_pb2.Job:
    deadline = time.monotonic() + 30
    while True:
        job = stub.GetJob(jobs_pb2.GetJobRequest(kind=kind, job_id=job_id))
        if status_word(job) in ("completed", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_submit_and_get(channel: grpc.Channel) -> None:
    stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
    job = stub.SubmitImageJob(
        jobs_pb2.SubmitImageJobRequest(
            kind=jobs_pb2.JOB_KIND_GENERATION,
            request=jobs_pb2.ImageRequest(model="mock/m", prompt="grpc fox", size="24x24", n=2),
        ),
        metadata=(("x-request-id", "grpc-1"),),
    )
    assert status_word(job) == "pending" and job.request_id == "grpc-1"
    assert not job.HasField("status_code")
    done = wait_done(stub, jobs_pb2.JOB_KIND_GENERATION, job.id)
    assert status_word(done) == "completed" and done.status_code == 200
    images = done.result.images  # typed: raw bytes, not base64 in a Struct
    assert len(images) == 2 and images[0].data.startswith(b"\x89PNG")


def test_typed_error_detail(channel: grpc.Channel) -> None:
    stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION, request=jobs_pb2.ImageRequest(model="mock/m")
            )
        )
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    assert status is not None
    detail = jobs_pb2.ErrorResponse()
    assert status.details[0].Unpack(detail)
    assert detail.status_code == 400 and detail.is_bifrost_error
    assert detail.error.message == "prompt cannot be empty" and detail.error.param == "prompt"

    with pytest.raises(grpc.RpcError) as missing:
        stub.GetJob(
            jobs_pb2.GetJobRequest(
                kind=jobs_pb2.JOB_KIND_GENERATION, job_id="00000000-0000-4000-8000-000000000000"
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_and_reflection_through_the_gateway(stack: Stack) -> None:
    with grpc.insecure_channel(stack.grpc_gateway) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="imagejobs.v1.ImageJobService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "imagejobs.v1.ImageJobService" in names


def test_edit_with_typed_image_bytes(channel: grpc.Channel) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (9, 9, 9)).save(buf, format="PNG")
    stub = jobs_pb2_grpc.ImageJobServiceStub(channel)
    job = stub.SubmitImageJob(
        jobs_pb2.SubmitImageJobRequest(
            kind=jobs_pb2.JOB_KIND_EDIT,
            request=jobs_pb2.ImageRequest(
                model="mock/m", prompt="grpc edit", images=[buf.getvalue()]
            ),
        )
    )
    done = wait_done(stub, jobs_pb2.JOB_KIND_EDIT, job.id)
    assert status_word(done) == "completed"
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitImageJob(
            jobs_pb2.SubmitImageJobRequest(
                kind=jobs_pb2.JOB_KIND_EDIT,
                request=jobs_pb2.ImageRequest(model="mock/m", prompt="x"),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one image is required" in (info.value.details() or "")
