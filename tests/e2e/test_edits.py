"""Edits and variations: multipart (and JSON) uploads through Envoy, validated, kept in
the object store, arriving byte-identical at the fake OpenAI upstream."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import httpx
import pytest
from PIL import Image

from tests.conftest import OPENAI_TEST_KEY, assert_error_body, decode_image, png, wait_terminal
from tests.fakes.openai import FakeOpenAI

pytestmark = pytest.mark.e2e


def noise_png(width: int, height: int) -> bytes:
    """An incompressible PNG (several MB at ~1000x1000)."""
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mask_png(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), box)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_multipart_edit_arrives_byte_identical_upstream(
    client: httpx.Client, fake_openai: FakeOpenAI
) -> None:
    first, second = noise_png(1000, 1000), noise_png(1000, 1000)
    mask = mask_png(1000, 1000, (100, 100, 400, 400))
    assert len(first) > 2_000_000
    before = len(fake_openai.requests_to("/v1/images/edits"))
    r = client.post(
        "/v1/async/images/edits",
        data={
            "model": "openai/gpt-image-2.6-sunburst",
            "prompt": "add a moon",
            "n": "1",
            "custom": "x",
        },
        files=[
            ("image[]", ("a.png", first, "image/png")),
            ("image[]", ("b.png", second, "image/png")),
            ("mask", ("mask.png", mask, "image/png")),
        ],
    )
    assert r.status_code == 202, r.text
    job = wait_terminal(client, r.json()["id"], kind="edits").json()
    assert job["status"] == "completed", job
    sent = fake_openai.requests_to("/v1/images/edits")[before:]
    assert len(sent) == 1
    assert sent[0].headers["authorization"] == f"Bearer {OPENAI_TEST_KEY}"
    fields, files = sent[0].multipart()
    assert fields["prompt"] == ["add a moon"] and fields["model"] == ["gpt-image-2.6-sunburst"]
    assert fields["custom"] == ["x"]
    assert [sha(f[2]) for f in files["image[]"]] == [sha(first), sha(second)]
    assert sha(files["mask"][0][2]) == sha(mask)
    assert job["result"]["extra_fields"]["request_type"] == "image_edit"


def test_mock_edit_changes_only_the_masked_region(client: httpx.Client) -> None:
    base = Image.new("RGB", (200, 120), (20, 160, 60))
    buf = io.BytesIO()
    base.save(buf, format="PNG")
    mask = mask_png(200, 120, (0, 0, 100, 120))
    r = client.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "prompt": "paint it"},
        files=[
            ("image", ("in.png", buf.getvalue(), "image/png")),
            ("mask", ("m.png", mask, "image/png")),
        ],
    )
    job = wait_terminal(client, r.json()["id"], kind="edits").json()
    out = decode_image(job["result"]["data"][0]["b64_json"]).convert("RGB")
    assert out.size == (200, 120)
    assert out.getpixel((190, 60)) == (20, 160, 60)  # outside the mask: untouched
    assert out.getpixel((10, 60)) != (20, 160, 60)  # inside: changed


def test_json_edit_with_base64_and_data_url(client: httpx.Client) -> None:
    img = Image.new("RGB", (64, 64), (200, 10, 10))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    for image in (b64, f"data:image/png;base64,{b64}"):
        r = client.post(
            "/v1/async/images/edits", json={"model": "mock/m", "prompt": "x", "image": [image]}
        )
        assert r.status_code == 202, r.text
        job = wait_terminal(client, r.json()["id"], kind="edits").json()
        assert decode_image(job["result"]["data"][0]["b64_json"]).size == (64, 64)


def test_variation_uses_only_the_first_image(client: httpx.Client, fake_openai: FakeOpenAI) -> None:
    first, second = noise_png(50, 50), noise_png(60, 60)
    before = len(fake_openai.requests_to("/v1/images/variations"))
    r = client.post(
        "/v1/async/images/variations",
        # OpenAI's only model with variations (dall-e-2) is retired: an OpenAI-compatible
        # server still takes them, over the same adapter code
        data={"model": "openai-compatible/local-variations", "n": "2"},
        files=[
            ("image[]", ("a.png", first, "image/png")),
            ("image[]", ("b.png", second, "image/png")),
        ],
    )
    job = wait_terminal(client, r.json()["id"], kind="variations").json()
    assert job["status"] == "completed", job
    sent = fake_openai.requests_to("/v1/images/variations")[before:]
    _, files = sent[0].multipart()
    assert [sha(f[2]) for f in files["image"]] == [sha(first)]
    assert len(job["result"]["data"]) == 2


@pytest.mark.parametrize(
    ("data", "files", "message"),
    [
        ({"model": "mock/m", "prompt": "x"}, [], "at least one image is required"),
        (
            {"model": "mock/m"},
            [("image", ("a.png", png(8, 8), "image/png"))],
            "prompt cannot be empty",
        ),
        (
            {"model": "mock/m", "prompt": "x", "n": "two"},
            [("image", ("a.png", png(8, 8), "image/png"))],
            "invalid n value: two",
        ),
        (
            {"model": "mock/m", "prompt": "x"},
            [("image", ("a.txt", b"hello, not an image", "text/plain"))],
            "image[0] is not a valid image",
        ),
        (
            {"model": "mock/m", "prompt": "x"},
            [
                ("image", ("a.png", png(8, 8), "image/png")),
                ("mask", ("m.png", png(9, 8), "image/png")),
            ],
            "mask must have the same dimensions",
        ),
        (
            {"model": "mock/m", "prompt": "x", "stream": "true"},
            [("image", ("a.png", png(8, 8), "image/png"))],
            "stream is not supported",
        ),
    ],
)
def test_edit_400s(
    client: httpx.Client,
    data: dict[str, str],
    files: list[tuple[str, tuple[str, bytes, str]]],
    message: str,
) -> None:
    r = client.post("/v1/async/images/edits", data=data, files=files or {"dummy": ("", b"")})
    if not files:  # httpx needs a file to send multipart; send an empty unrelated part
        pass
    assert_error_body(r, 400, message)


def test_background_removal_needs_no_prompt(client: httpx.Client) -> None:
    r = client.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "type": "background_removal"},
        files=[("image", ("a.png", png(16, 16), "image/png"))],
    )
    assert r.status_code == 202, r.text


def test_bad_multipart_is_400(client: httpx.Client) -> None:
    r = client.post(
        "/v1/async/images/edits",
        content=b"--zzz\r\nnonsense",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert_error_body(r, 400, "failed to parse multipart form: ")


def test_60_mb_upload_is_413_with_the_error_body(client: httpx.Client) -> None:
    big = os.urandom(60 * 1024 * 1024)
    r = client.post(
        "/v1/async/images/edits",
        data={"model": "mock/m", "prompt": "x"},
        files=[("image", ("big.png", big, "image/png"))],
    )
    assert_error_body(r, 413)
