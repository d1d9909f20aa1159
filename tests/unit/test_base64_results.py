"""The SIMD base64 (pybase64) behind `b64_json` results and providers' JSON bodies prints
exactly what the standard library prints, at every length: empty, each remainder of 3
(the padding cases) and sizes past the SIMD block widths."""

from __future__ import annotations

import base64
import json
import random

import pytest
from imagejobs.api.render import job_json
from imagejobs.domain.contract import result_dict
from imagejobs.domain.jobs import Job, ObjectRef, ResultImage, StoredRequest, StoredResult
from imagejobs.domain.kinds import Kind
from imagejobs.domain.models import ModelRef
from imagejobs.providers.base import b64

# 0, every remainder mod 3, around the 16/32/48/64-byte SIMD lanes, and a few random sizes
SIZES = [0, 1, 2, 3, 4, 5, 11, 12, 13, 47, 48, 49, 63, 64, 65, 191, 1000, 4097, 65_537]
SIZES += random.Random(18).sample(range(1, 300_000), 6)


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def job_with(sizes: list[int]) -> Job:
    result = StoredResult(
        created=1_700_000_000,
        images=tuple(
            ResultImage(ref=ObjectRef(object_id=f"o{i}", content_type="image/png", size=n))
            for i, n in enumerate(sizes)
        ),
        fields={},
        usage={},
        provider="mock",
        model="m",
        latency_ms=1,
    )
    job = Job(
        id="00000000-0000-4000-8000-000000000018",
        kind=Kind.GENERATION,
        request_id="r",
        created_at=1_700_000_000.0,
        ttl_s=60,
        request=StoredRequest(
            model=ModelRef.parse("mock/m"), params={"response_format": "b64_json"}
        ),
    )
    return job.claim("w", 1_700_000_001.0).complete(result, 1_700_000_002.0)


@pytest.mark.parametrize("size", SIZES)
def test_the_providers_helper_prints_the_stdlibs_text(size: int) -> None:
    data = data_of(size)
    assert b64(data) == base64.b64encode(data).decode("ascii")


def test_a_rest_poll_inlines_each_image_as_the_stdlib_encodes_it() -> None:
    images = [data_of(n) for n in SIZES]
    body = json.loads(job_json(job_with(SIZES), images))
    got = [item["b64_json"] for item in body["result"]["data"]]
    assert got == [base64.b64encode(i).decode() for i in images]


def test_the_contracts_result_carries_the_stdlibs_text() -> None:
    images = [data_of(n) for n in SIZES]
    data = result_dict(job_with(SIZES), images, "")["data"]
    assert [item["b64_json"] for item in data] == [base64.b64encode(i).decode() for i in images]
