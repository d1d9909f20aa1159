"""The typed gRPC contract's pure parts, on both sides: the enum mapping, records -> the
typed `Job` (inlining up to 3 MiB, typed usage), the SDK's messages -> its own values,
its error translation and retry decisions, its request building, and the CLI's
`--param` reading."""

from __future__ import annotations

import click
import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2
from imagejobs.api.messages import MAX_INLINE_RESULT_BYTES, inlines, job_message, usage_message
from imagejobs.client import (
    AuthenticationError,
    ClientError,
    InvalidArgument,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerUnavailable,
)
from imagejobs.client.errors import from_rpc_error
from imagejobs.client.options import retryable
from imagejobs.client.requests import image_request
from imagejobs.client.types import Image, job_of
from imagejobs.domain.errors import ErrorBody
from imagejobs.domain.jobs import Job, ObjectRef, ResultImage, Status, StoredRequest, StoredResult
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.domain.wire import kind_enum, kind_of, status_enum, status_of
from imagejobs.runtime.client_commands import parse_params
from imagejobs.v1 import jobs_pb2

JOB_ID = "00000000-0000-4000-8000-000000000009"


def completed(sizes: list[int], response_format: str = "b64_json") -> Job:
    result = StoredResult(
        created=1_700_000_000,
        images=tuple(
            ResultImage(
                ref=ObjectRef(object_id=f"o{i}", content_type="image/webp", size=size),
                revised_prompt="better" if i == 0 else None,
            )
            for i, size in enumerate(sizes)
        ),
        fields={"output_format": "webp", "size": "8x8", "quality": None},
        usage={
            "input_tokens": 7,
            "total_tokens": 9,
            "input_tokens_details": {"text_tokens": 5, "image_tokens": 2, "cached": 1},
            "cost_in_usd_ticks": 123,
            "note": "not a counter",
            "flag": True,
        },
        provider="mock",
        model="m2",
        latency_ms=42,
    )
    job = Job(
        id=JOB_ID,
        kind=Kind.EDIT,
        request_id="r",
        created_at=1_700_000_000.5,
        ttl_s=60,
        request=StoredRequest(
            model=ModelRef.parse("mock/m"), params={"response_format": response_format}
        ),
    )
    return job.claim("w", 1_700_000_001.0).complete(result, 1_700_000_002.25)


# --- the enums ---------------------------------------------------------------------------


def test_every_status_and_kind_maps_to_its_enum_and_back_by_name() -> None:
    for status in Status:
        assert status_of(status_enum(status)) is status
        assert jobs_pb2.JobStatus.Name(status_enum(status)) == f"JOB_STATUS_{status.name}"
    for kind in Kind:
        assert kind_of(kind_enum(kind)) is kind
    assert status_of(jobs_pb2.JOB_STATUS_UNSPECIFIED) is None
    assert kind_of(jobs_pb2.JOB_KIND_UNSPECIFIED) is None
    with pytest.raises(ValueError, match="99"):
        kind_of(99)  # a newer peer's value


# --- records -> the typed Job ------------------------------------------------------------


def test_a_small_b64_json_result_is_inlined_as_raw_bytes_with_typed_fields() -> None:
    job = completed([3, 4])
    assert inlines(job)
    msg = job_message(job, [b"abc", b"defg"], "http://gw")
    assert msg.status == jobs_pb2.JOB_STATUS_COMPLETED and msg.kind == jobs_pb2.JOB_KIND_EDIT
    assert msg.created_at.ToMilliseconds() == 1_700_000_000_500
    [first, second] = msg.result.images
    assert (first.index, first.data, first.mime_type, first.size_bytes) == (
        0,
        b"abc",
        "image/webp",
        3,
    )
    assert first.url == f"http://gw/v1/async/images/edits/{JOB_ID}/images/0"
    assert first.revised_prompt == "better" and second.revised_prompt == ""
    assert (msg.result.output_format, msg.result.size, msg.result.quality) == ("webp", "8x8", "")
    extra = msg.result.extra_fields
    assert (extra.request_type, extra.provider, extra.model_requested) == (
        "image_edit",
        "mock",
        "m",
    )
    assert (extra.model_used, extra.latency_ms) == ("m2", 42)
    assert msg.status_code == 200 and not msg.HasField("error")


def test_results_above_the_inline_total_or_asked_as_url_carry_no_bytes() -> None:
    half = MAX_INLINE_RESULT_BYTES // 2
    assert inlines(completed([half, half]))
    assert not inlines(completed([half, half + 1]))
    assert not inlines(completed([3], response_format="url"))
    msg = job_message(completed([half, half + 1]), None, "http://gw")
    assert [i.data for i in msg.result.images] == [b"", b""]
    assert [i.size_bytes for i in msg.result.images] == [half, half + 1]


def test_usage_is_typed_and_other_whole_number_counters_are_kept_by_name() -> None:
    usage = usage_message(completed([1]).result.usage or {})  # type: ignore[union-attr]
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (7, 0, 9)
    details = usage.input_tokens_details
    assert (details.text_tokens, details.image_tokens) == (5, 2)
    assert not usage.HasField("output_tokens_details")
    assert dict(usage.other) == {"cost_in_usd_ticks": 123}  # not the text, not the bool


# --- the SDK's side ----------------------------------------------------------------------


def test_the_sdk_reads_the_typed_job_into_its_own_values() -> None:
    job = job_of(job_message(completed([3]), [b"abc"], "http://gw"))
    assert job.status is Status.COMPLETED and job.kind is Kind.EDIT and job.terminal
    assert job.created_at.timestamp() == 1_700_000_000.5
    assert job.completed_at is not None and job.completed_at.timestamp() == 1_700_000_002.25
    assert job.result is not None and job.result.images[0].data == b"abc"
    assert job.result.usage is not None and job.result.usage.other == {"cost_in_usd_ticks": 123}
    assert job.result.latency_ms == 42 and job.result.quality is None
    doc = job.to_dict()
    assert doc["status"] == "completed" and doc["kind"] == "edits"
    assert doc["completed_at"] == "2023-11-14T22:13:22.250Z"
    assert doc["result"]["data"] == [
        {
            "index": 0,
            "url": f"http://gw/v1/async/images/edits/{JOB_ID}/images/0",
            "mime_type": "image/webp",
            "size_bytes": 3,
            "revised_prompt": "better",
        }
    ]
    assert doc["result"]["extra_fields"]["latency"] == 42


def test_an_image_without_its_bytes_refuses_to_save() -> None:
    image = Image(index=0, data=b"", mime_type="image/png", size_bytes=10)
    with pytest.raises(ValueError, match="no bytes"):
        image.save("unused.png")
    assert image.extension == "png"


def test_params_go_to_their_fields_or_to_extra() -> None:
    msg = image_request(
        "mock/m",
        "p",
        images=[b"img"],
        params={"n": 2, "size": "8x8", "fallbacks": "mock/b", "seed": 7, "mock_latency_ms": 5},
    )
    assert (msg.n, msg.size, list(msg.fallbacks), msg.seed) == (2, "8x8", ["mock/b"], 7)
    assert dict(msg.extra) == {"mock_latency_ms": 5}
    assert list(msg.images) == [b"img"]
    with pytest.raises(ValueError, match="parameter n"):
        image_request("mock/m", "p", params={"n": "two"})
    with pytest.raises(ValueError, match="own argument"):
        image_request("mock/m", "p", params={"images": []})


def test_the_cli_reads_param_values_as_json_except_for_text_fields() -> None:
    assert parse_params(("n=2", "seed=42", "user=123", "mock_fail_status=500", "tag=a=b")) == {
        "n": 2,
        "seed": 42,
        "user": "123",  # a text field stays text
        "mock_fail_status": 500,
        "tag": "a=b",
    }
    with pytest.raises(click.BadParameter):
        parse_params(("novalue",))


def rpc_error(
    code: grpc.StatusCode, body: ErrorBody | None = None, retry_after: str | None = None
) -> grpc.aio.AioRpcError:
    trailing: list[tuple[str, str | bytes]] = []
    if body is not None:
        from imagejobs.api.render import error_proto

        detail = any_pb2.Any()
        detail.Pack(error_proto(body))
        status = status_pb2.Status(code=code.value[0], message=body.message, details=[detail])
        trailing.append(("grpc-status-details-bin", status.SerializeToString()))
    if retry_after is not None:
        trailing.append(("retry-after", retry_after))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="from the test"
    )


def test_errors_carry_the_servers_body_and_map_to_their_class() -> None:
    body = ErrorBody(400, "invalid_request_error", "invalid_request", "bad n", param="n")
    error = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, body))
    assert isinstance(error, InvalidArgument)
    assert (error.status_code, error.type, error.code, error.message, error.param) == (
        400,
        "invalid_request_error",
        "invalid_request",
        "bad n",
        "n",
    )
    refused = ErrorBody(400, "invalid_request_error", "invalid_virtual_key", "invalid key")
    assert isinstance(
        from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, refused)), AuthenticationError
    )
    assert isinstance(from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND)), NotFound)
    limited = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after="2"))
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 2.0
    down = from_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert isinstance(down, ServerUnavailable) and down.status_code == 503
    assert down.message == "from the test"
    other = from_rpc_error(rpc_error(grpc.StatusCode.DATA_LOSS))
    assert type(other) is ClientError and other.status_code == 500


def test_only_unavailable_and_bodiless_transport_failures_are_retried() -> None:
    assert retryable(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert retryable(rpc_error(grpc.StatusCode.INTERNAL))  # e.g. a reset stream
    ours = ErrorBody(500, "api_error", "internal_error", "internal server error")
    assert not retryable(rpc_error(grpc.StatusCode.INTERNAL, ours))  # our server's answer
    assert not retryable(rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    assert not retryable(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not retryable(ValueError("not a call"))


def test_backoff_doubles_up_to_its_cap_jittered_down_to_half() -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=3.0)
    for retry, full in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        waits = [policy.backoff_s(retry) for _ in range(50)]
        assert all(full / 2 <= w <= full for w in waits), (retry, waits)
