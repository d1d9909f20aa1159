"""The typed gRPC contract against the session stack, with raw stubs on channels that
keep gRPC's default 4 MiB receive limit: enums, a typed result with raw image bytes,
reads by job id alone (a wrong kind stays NOT_FOUND), and a result too large to inline
fetched with StreamJobImage, through Envoy and directly."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from imagejobs.api.messages import IMAGE_CHUNK_BYTES, MAX_INLINE_RESULT_BYTES
from imagejobs.testing import Stack, wait_until
from imagejobs.v1 import jobs_pb2, jobs_pb2_grpc
from PIL import Image

from tests.e2e.test_edits import noise_png

pytestmark = pytest.mark.e2e

GEN = jobs_pb2.JOB_KIND_GENERATION
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024  # gRPC's, which these channels keep
TERMINAL = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


@pytest.fixture(params=["direct", "gateway"])
def stub(
    request: pytest.FixtureRequest, stack: Stack
) -> Iterator[jobs_pb2_grpc.ImageJobServiceStub]:
    target = stack.grpc_direct if request.param == "direct" else stack.grpc_gateway
    with grpc.insecure_channel(target) as channel:  # default options: a 4 MiB receive limit
        yield jobs_pb2_grpc.ImageJobServiceStub(channel)


def submit(
    stub: jobs_pb2_grpc.ImageJobServiceStub,
    kind: jobs_pb2.JobKind.ValueType = GEN,
    extra: dict[str, Any] | None = None,
    **fields: Any,
) -> jobs_pb2.Job:
    request = jobs_pb2.ImageRequest(model="mock/m", **fields)
    if extra is not None:
        request.extra.CopyFrom(json_format.ParseDict(extra, Struct()))
    return stub.SubmitImageJob(jobs_pb2.SubmitImageJobRequest(kind=kind, request=request))


def done(stub: jobs_pb2_grpc.ImageJobServiceStub, job_id: str) -> jobs_pb2.Job:
    """The job once terminal, by long-polls with the id alone."""

    def ended() -> jobs_pb2.Job | None:
        job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id, wait=5), timeout=15)
        return job if job.status in TERMINAL else None

    return wait_until(ended, 60, f"job {job_id} terminal")


def test_a_completed_job_is_typed_with_raw_image_bytes(
    stub: jobs_pb2_grpc.ImageJobServiceStub,
) -> None:
    job = submit(stub, prompt="typed fox", size="24x16", n=2)
    assert job.status == jobs_pb2.JOB_STATUS_PENDING and job.kind == GEN
    assert not job.HasField("result") and not job.HasField("status_code")
    job = done(stub, job.id)
    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED and job.status_code == 200
    result = job.result
    assert [i.index for i in result.images] == [0, 1]
    for image in result.images:
        assert image.mime_type == "image/png" and image.size_bytes == len(image.data)
        assert Image.open(io.BytesIO(image.data)).size == (24, 16)
        assert image.url.endswith(f"/v1/async/images/generations/{job.id}/images/{image.index}")
    assert (result.output_format, result.size, result.background) == ("png", "24x16", "opaque")
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    assert result.usage.input_tokens_details.text_tokens == 2
    extra = result.extra_fields
    assert (extra.request_type, extra.provider, extra.model_requested, extra.model_used) == (
        "image_generation",
        "mock",
        "m",
        "m",
    )
    assert result.created > 0 and extra.latency_ms >= 0


def test_reads_cancel_watch_and_images_work_with_the_job_id_alone(
    stub: jobs_pb2_grpc.ImageJobServiceStub,
) -> None:
    slow = submit(stub, prompt="slow", size="16x16", extra={"mock_latency_ms": 30_000})
    watch = stub.WatchJob(jobs_pb2.WatchJobRequest(job_id=slow.id), timeout=30)
    assert next(watch).id == slow.id
    cancelled = stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=slow.id))
    assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLED and cancelled.kind == GEN
    assert cancelled.status_code == 499 and cancelled.error.error.code == "cancelled"
    assert [j.status for j in watch][-1] == jobs_pb2.JOB_STATUS_CANCELLED

    edit = submit(stub, jobs_pb2.JOB_KIND_EDIT, prompt="tint", images=[noise_png(8, 8)])
    edit = done(stub, edit.id)
    assert edit.kind == jobs_pb2.JOB_KIND_EDIT and edit.result.images[0].data
    image = stub.GetJobImage(jobs_pb2.GetJobImageRequest(job_id=edit.id, index=0))
    assert image.image.data == edit.result.images[0].data
    chunks = list(stub.StreamJobImage(jobs_pb2.StreamJobImageRequest(job_id=edit.id, index=0)))
    assert b"".join(c.data for c in chunks) == edit.result.images[0].data


@pytest.mark.parametrize(
    "call",
    [
        lambda s, i: s.GetJob(jobs_pb2.GetJobRequest(job_id=i, kind=jobs_pb2.JOB_KIND_EDIT)),
        lambda s, i: s.CancelJob(
            jobs_pb2.CancelJobRequest(job_id=i, kind=jobs_pb2.JOB_KIND_VARIATION)
        ),
        lambda s, i: next(
            s.WatchJob(jobs_pb2.WatchJobRequest(job_id=i, kind=jobs_pb2.JOB_KIND_EDIT))
        ),
        lambda s, i: s.GetJobImage(jobs_pb2.GetJobImageRequest(job_id=i, kind="edits")),
        lambda s, i: next(
            s.StreamJobImage(jobs_pb2.StreamJobImageRequest(job_id=i, kind=jobs_pb2.JOB_KIND_EDIT))
        ),
        lambda s, i: s.GetJob(
            jobs_pb2.GetJobRequest(job_id=i, kind=jobs_pb2.JobKind.ValueType(42))
        ),  # not a kind
    ],
    ids=["get", "cancel", "watch", "image", "stream-image", "unknown-kind"],
)
def test_a_wrong_kind_given_is_still_not_found(
    stub: jobs_pb2_grpc.ImageJobServiceStub,
    call: Callable[[jobs_pb2_grpc.ImageJobServiceStub, str], object],
) -> None:
    job = done(stub, submit(stub, prompt="kind check", size="8x8").id)
    with pytest.raises(grpc.RpcError) as info:
        call(stub, job.id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.id, kind=GEN)).id == job.id


def test_a_submit_without_a_kind_is_invalid(stub: jobs_pb2_grpc.ImageJobServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        submit(stub, jobs_pb2.JOB_KIND_UNSPECIFIED, prompt="p")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_result_above_the_inline_limit_is_streamed_within_the_default_limit(
    stub: jobs_pb2_grpc.ImageJobServiceStub, client: httpx.Client
) -> None:
    """A variation of a noise picture: one image of ~5 MB, above both the 3 MiB inline
    total and the 4 MiB default receive limit."""
    source = noise_png(1300, 1300)
    assert len(source) > DEFAULT_RECEIVE_LIMIT
    job = done(stub, submit(stub, jobs_pb2.JOB_KIND_VARIATION, images=[source]).id)
    assert job.status == jobs_pb2.JOB_STATUS_COMPLETED, job.error
    [image] = job.result.images
    assert image.data == b"" and image.size_bytes > DEFAULT_RECEIVE_LIMIT > MAX_INLINE_RESULT_BYTES
    with pytest.raises(grpc.RpcError) as info:  # the one-message route cannot carry it
        stub.GetJobImage(jobs_pb2.GetJobImageRequest(job_id=job.id, index=0))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    chunks = list(stub.StreamJobImage(jobs_pb2.StreamJobImageRequest(job_id=job.id, index=0)))
    assert len(chunks) > 1 and all(len(c.data) <= IMAGE_CHUNK_BYTES for c in chunks)
    assert [c.offset for c in chunks] == [i * IMAGE_CHUNK_BYTES for i in range(len(chunks))]
    assert {(c.content_type, c.size_bytes) for c in chunks} == {("image/png", image.size_bytes)}
    streamed = b"".join(c.data for c in chunks)
    rest = client.get(f"/v1/async/images/variations/{job.id}/images/0")
    assert rest.status_code == 200 and rest.content == streamed
    assert len(streamed) == image.size_bytes


def test_url_results_and_list_entries_link_images_without_bytes(
    stub: jobs_pb2_grpc.ImageJobServiceStub,
) -> None:
    job = done(stub, submit(stub, prompt="linked", size="8x8", response_format="url").id)
    [image] = job.result.images
    assert image.data == b"" and image.size_bytes > 0 and image.url
    page = stub.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JOB_STATUS_COMPLETED, limit=5))
    assert page.jobs and all(j.status == jobs_pb2.JOB_STATUS_COMPLETED for j in page.jobs)
    assert all(not i.data and i.size_bytes for j in page.jobs for i in j.result.images)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListJobs(jobs_pb2.ListJobsRequest(status=jobs_pb2.JobStatus.ValueType(77)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_consoles_reads_typed(stub: jobs_pb2_grpc.ImageJobServiceStub) -> None:
    job = submit(stub, jobs_pb2.JOB_KIND_EDIT, prompt="add a sun", images=[noise_png(32, 32)])
    typed = stub.GetSubmission(jobs_pb2.GetSubmissionRequest(job_id=job.id))
    assert typed.kind == jobs_pb2.JOB_KIND_EDIT and typed.model == "mock/m"
    assert typed.prompt == "add a sun" and typed.images[0].size_bytes > 0
    assert not typed.HasField("mask")
    with pytest.raises(grpc.RpcError) as wrong:
        stub.GetSubmission(jobs_pb2.GetSubmissionRequest(job_id=job.id, kind=GEN))
    assert wrong.value.code() == grpc.StatusCode.NOT_FOUND
    stats = stub.GetStats(jobs_pb2.GetStatsRequest())
    assert stats.queue.max_jobs > 0 and len(stats.workers) >= 1
    assert stats.workers[0].concurrency > 0 and stats.workers[0].seen_at.seconds > 0
