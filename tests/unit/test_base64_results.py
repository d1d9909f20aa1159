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
from imagejobs.providers.base import b64

from tests.unit.test_typed_wire import completed  # a completed b64_json job of given sizes

# 0, every remainder mod 3, around the 16/32/48/64-byte SIMD lanes, and a few random sizes
SIZES = [0, 1, 2, 3, 4, 5, 11, 12, 13, 47, 48, 49, 63, 64, 65, 191, 1000, 4097, 65_537]
SIZES += random.Random(18).sample(range(1, 300_000), 6)


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("size", SIZES)
def test_the_providers_helper_prints_the_stdlibs_text(size: int) -> None:
    data = data_of(size)
    assert b64(data) == base64.b64encode(data).decode("ascii")


def test_a_rest_poll_inlines_each_image_as_the_stdlib_encodes_it() -> None:
    images = [data_of(n) for n in SIZES]
    body = json.loads(job_json(completed(SIZES), images))
    got = [item["b64_json"] for item in body["result"]["data"]]
    assert got == [base64.b64encode(i).decode() for i in images]


def test_the_contracts_result_carries_the_stdlibs_text() -> None:
    images = [data_of(n) for n in SIZES]
    data = result_dict(completed(SIZES), images, "")["data"]
    assert [item["b64_json"] for item in data] == [base64.b64encode(i).decode() for i in images]
