"""Input hardening (issue #6, item 5), end to end through Envoy, the API and the worker:
every limit answers with the contract's error body and a clear status (400, 413 for sizes,
431 for headers), and malformed input that used to reach a 500 is a 400."""

from __future__ import annotations

import base64
import http.client
import io
import os
import socket
import struct
import zlib
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2
from imagejobs import gateway
from imagejobs.api.requests import Limits, from_proto
from imagejobs.domain import constants
from imagejobs.domain.errors import InvalidRequest
from imagejobs.domain.kinds import Kind
from imagejobs.testing import Stack
from imagejobs.v1 import jobs_pb2
from PIL import Image

from tests.conftest import assert_error_body, png, submit, wait_terminal

pytestmark = pytest.mark.e2e

GEN = {"model": "mock/m", "prompt": "a lighthouse", "size": "16x16"}


def bomb_png(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares `width` x `height` (a decompression
    bomb's shape: decoding it would need width * height * 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def png_b64() -> str:
    return base64.b64encode(png(8, 8)).decode()


def edit(client: httpx.Client, files: list[Any], **data: str) -> httpx.Response:
    return client.post(
        "/v1/async/images/edits", data={"model": "mock/m", "prompt": "x", **data}, files=files
    )


def api_peak_rss_kb(stack: Stack) -> int:
    """The API process's peak resident memory so far (VmHWM)."""
    pid = stack.procs[f"api-{stack.api_ports[0]}"].pid
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def raw_request(stack: Stack, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send bytes a well-behaved client library refuses to (bad header characters, huge
    header blocks) and read the HTTP/1.1 answer: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", stack.gateway_port), timeout=30) as sock:
        sock.sendall(head + b"\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        assert response.getheader("content-type", "").startswith("application/json"), data
        return response.status, httpx.Response(response.status, content=data).json()


def assert_raw_error_body(status: int, body: dict[str, Any], expected: int) -> None:
    assert status == expected, body
    assert body["is_bifrost_error"] is True and body["status_code"] == expected
    assert body["event_id"] and body["error"]["event_id"] == body["event_id"]
    assert body["error"]["message"] and body["type"] == body["error"]["type"]


# --- prompt length, n --------------------------------------------------------------------


def test_prompt_at_the_limit_is_accepted_one_more_is_400(client: httpx.Client) -> None:
    limit = constants.DEFAULT_MAX_PROMPT_CHARS
    ok = submit(client, {**GEN, "prompt": "p" * limit})
    assert ok.status_code == 202, ok.text
    body = assert_error_body(
        submit(client, {**GEN, "prompt": "p" * (limit + 1)}),
        400,
        f"prompt is longer than {limit} characters",
    )
    assert body["error"]["param"] == "prompt"
    body = assert_error_body(
        submit(client, {**GEN, "negative_prompt": "n" * (limit + 1)}),
        400,
        f"negative_prompt is longer than {limit} characters",
    )
    assert body["error"]["param"] == "negative_prompt"


def test_a_multipart_prompt_has_the_same_limit(client: httpx.Client) -> None:
    limit = constants.DEFAULT_MAX_PROMPT_CHARS
    r = edit(client, [("image", ("a.png", png(8, 8), "image/png"))], prompt="p" * (limit + 1))
    assert_error_body(r, 400, f"prompt is longer than {limit} characters")


@pytest.mark.parametrize("n", [0, -1, constants.MAX_N + 1, 10**6])
def test_n_outside_1_to_10_is_400(client: httpx.Client, n: int) -> None:
    body = assert_error_body(
        submit(client, {**GEN, "n": n}), 400, f"n must be between 1 and {constants.MAX_N}"
    )
    assert body["error"]["param"] == "n"


def test_n_at_the_limit_is_served(client: httpx.Client) -> None:
    r = submit(client, {**GEN, "n": constants.MAX_N})
    assert r.status_code == 202, r.text
    job = wait_terminal(client, r.json()["id"]).json()
    assert job["status"] == "completed" and len(job["result"]["data"]) == constants.MAX_N


def test_multipart_n_limit(client: httpx.Client) -> None:
    r = edit(client, [("image", ("a.png", png(8, 8), "image/png"))], n=str(constants.MAX_N + 1))
    assert_error_body(r, 400, f"n must be between 1 and {constants.MAX_N}")


# --- image dimensions --------------------------------------------------------------------


def test_decompression_bomb_png_is_400_without_decoding_it(
    client: httpx.Client, stack: Stack
) -> None:
    bomb = bomb_png(20_000, 20_000)  # 400 Mpixels declared, 1.2 GB decoded; ~100 bytes sent
    assert len(bomb) < 200
    before = api_peak_rss_kb(stack)
    r = edit(client, [("image", ("bomb.png", bomb, "image/png"))])
    body = assert_error_body(r, 400, "image[0]: image dimensions")
    assert body["error"]["param"] == "image[0]"
    # the same as base64 in JSON, and as a variation
    b64 = base64.b64encode(bomb).decode()
    r = submit(client, {"model": "mock/m", "image": b64}, kind="variations")
    assert_error_body(r, 400, "image[0]: image dimensions")
    # and as a mask: the mask is checked like any image
    r = edit(
        client,
        [("image", ("a.png", png(8, 8), "image/png")), ("mask", ("m.png", bomb, "image/png"))],
    )
    assert_error_body(r, 400, "mask: image dimensions")
    # nothing was decoded: the API's peak memory grew by far less than one decoded bomb
    assert api_peak_rss_kb(stack) - before < 200 * 1024


@pytest.mark.parametrize("form", ["data-url", "base64", "grpc"])
def test_an_input_images_bomb_is_400_like_an_upload(client: httpx.Client, form: str) -> None:
    """`input_images` entries given inline (Gemini/Vertex take them) get the same image
    checks as uploads: a 74-byte PNG declaring 50000 x 50000 is refused at submit."""
    bomb = bomb_png(50_000, 50_000)
    assert len(bomb) < 100
    b64 = base64.b64encode(bomb).decode()
    entry = f"data:image/png;base64,{b64}" if form == "data-url" else b64
    if form == "grpc":
        request = jobs_pb2.ImageRequest(
            model="gemini/gemini-3.1-flash-image", prompt="p", input_images=[entry]
        )
        with pytest.raises(InvalidRequest, match=r"input_images\[0\]: image dimensions"):
            from_proto(Kind.GENERATION, request, Limits())
        return
    body = {**GEN, "model": "gemini/gemini-3.1-flash-image", "input_images": [png_b64(), entry]}
    r = submit(client, body)
    error = assert_error_body(r, 400, "input_images[1]: image dimensions")
    assert error["error"]["param"] == "input_images[1]"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("bm90IGFuIGltYWdl", "input_images[0] is not a valid image"),
        ("%%%", "input_images[0] is not valid base64"),
    ],
    ids=["not-an-image", "not-base64"],
)
def test_an_inline_input_image_that_is_no_image_is_400(
    client: httpx.Client, entry: str, message: str
) -> None:
    assert_error_body(submit(client, {**GEN, "input_images": [entry]}), 400, message)
    r = submit(client, {**GEN, "input_images": ["https://example.invalid/a.png", png_b64()]})
    assert r.status_code == 202, r.text  # URLs are the worker's to fetch and check


def test_dimensions_just_over_the_pixel_limit_are_400_with_the_size(client: httpx.Client) -> None:
    side = 8192
    assert side * side == constants.MAX_IMAGE_PIXELS
    r = edit(client, [("image[]", ("wide.png", bomb_png(side + 1, side), "image/png"))])
    body = assert_error_body(
        r, 400, f"image[0]: image dimensions ({side + 1}x{side}) are too large"
    )
    assert str(constants.MAX_IMAGE_PIXELS) in body["error"]["message"]


def test_an_image_format_outside_png_jpeg_webp_is_400(client: httpx.Client) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    r = edit(client, [("image", ("a.gif", gif.getvalue(), "image/gif"))])
    assert_error_body(r, 400, "image[0]: image format must be png, jpeg or webp")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    r = edit(client, [("image", ("a.tif", tiff.getvalue(), "image/tiff"))])
    assert_error_body(r, 400, "image[0] is not a valid image")


# --- number of images --------------------------------------------------------------------


def test_more_than_16_images_is_400(client: httpx.Client) -> None:
    limit = constants.MAX_IMAGES
    image = png(8, 8)
    files = [("image[]", (f"{i}.png", image, "image/png")) for i in range(limit + 1)]
    body = assert_error_body(edit(client, files), 400, f"at most {limit} images are allowed")
    assert body["error"]["param"] == "image"
    r = edit(client, files[:limit])
    assert r.status_code == 202, r.text


def test_more_than_16_input_images_is_400(client: httpx.Client) -> None:
    limit = constants.MAX_IMAGES
    urls = [f"https://example.invalid/{i}.png" for i in range(limit + 1)]
    body = assert_error_body(
        submit(client, {**GEN, "input_images": urls}),
        400,
        f"at most {limit} input_images are allowed",
    )
    assert body["error"]["param"] == "input_images"


def test_more_than_10_fallbacks_is_400(client: httpx.Client) -> None:
    limit = constants.MAX_FALLBACKS
    body = assert_error_body(
        submit(client, {**GEN, "fallbacks": ["mock/f"] * (limit + 1)}),
        400,
        f"at most {limit} fallbacks are allowed",
    )
    assert body["error"]["param"] == "fallbacks"
    assert submit(client, {**GEN, "fallbacks": ["mock/f"] * limit}).status_code == 202


# --- body size ---------------------------------------------------------------------------


def test_a_body_over_max_body_bytes_is_413_from_envoy(client: httpx.Client, stack: Stack) -> None:
    prompt = "p" * (stack.settings.max_body_bytes + 1)
    r = client.post(
        "/v1/async/images/generations",
        content=b'{"model":"mock/m","prompt":"' + prompt.encode() + b'"}',
        headers={"content-type": "application/json"},
    )
    body = assert_error_body(r, 413)
    assert body["error"]["code"] == "request_too_large"


def test_one_file_over_max_file_bytes_is_413_from_the_api(
    client: httpx.Client, stack: Stack
) -> None:
    settings = stack.settings
    size = settings.max_file_bytes + 1024
    assert size + 4096 < settings.max_body_bytes  # the body itself is within its limit
    r = edit(client, [("image", ("big.png", os.urandom(size), "image/png"))])
    body = assert_error_body(r, 413, f"image[0] is larger than {settings.max_file_bytes} bytes")
    assert body["error"]["code"] == "request_too_large"


# --- JSON shape --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [constants.MAX_JSON_DEPTH, 100_000])
def test_deeply_nested_json_is_400(client: httpx.Client, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    r = client.post(
        "/v1/async/images/generations",
        content=b'{"model":"mock/m","prompt":"p","extra":' + nested + b"}",
        headers={"content-type": "application/json"},
    )
    assert_error_body(r, 400, "invalid request format: the JSON is nested")


def test_json_nested_within_the_limit_passes_through(client: httpx.Client) -> None:
    depth = constants.MAX_JSON_DEPTH - 1  # the body object is level 1
    nested: Any = 1
    for _ in range(depth):
        nested = [nested]
    r = submit(client, {**GEN, "extra": nested})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"mock/m","prompt":"\\ud800"}',
        b'{"model":"mock/m","prompt":"p","output_format":"\\udfff"}',
        b'{"model":"mock/m","prompt":"p","\\ud800":1}',
    ],
)
def test_a_lone_surrogate_is_400(client: httpx.Client, body: bytes) -> None:
    r = client.post(
        "/v1/async/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert_error_body(r, 400, "invalid request format: a string holds an unpaired UTF-16 surrogate")


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_int64_are_400(client: httpx.Client, seed: int) -> None:
    r = client.post(
        "/v1/async/images/generations",
        content=b'{"model":"mock/m","prompt":"p","seed":%d}' % seed,
        headers={"content-type": "application/json"},
    )
    body = assert_error_body(r, 400, "invalid seed value: ")
    assert body["error"]["param"] == "seed"


def test_an_echoed_invalid_value_is_cut_short(client: httpx.Client) -> None:
    r = submit(client, {**GEN, "output_format": "x" * 100_000})
    body = assert_error_body(r, 400, "invalid output_format value: xxx")
    assert len(body["error"]["message"]) < 200


# --- headers -----------------------------------------------------------------------------


def test_headers_within_the_limits_pass(client: httpx.Client) -> None:
    many = {f"x-h{i}": "v" for i in range(gateway.MAX_REQUEST_HEADERS - 20)}
    assert submit(client, GEN, **many).status_code == 202
    assert submit(client, GEN, **{"x-long": "a" * 5000}).status_code == 202


def test_too_many_headers_is_431(client: httpx.Client) -> None:
    many = {f"x-h{i}": "v" for i in range(gateway.MAX_REQUEST_HEADERS + 1)}
    body = assert_error_body(submit(client, GEN, **many), 431, "request headers too large")
    assert body["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize("size", [gateway.MAX_REQUEST_HEADER_BYTES, 12_000, 40_000])
def test_too_large_headers_are_431(client: httpx.Client, size: int) -> None:
    # between 8 and 16 KiB grpcio used to refuse at random (as a 429), above 16 KiB always
    r = submit(client, GEN, **{"x-long": "a" * size})
    assert_error_body(r, 431, "request headers too large")
    r = client.get("/v1/async/images/jobs", headers={"x-long": "a" * size})
    assert_error_body(r, 431, "request headers too large")


def test_headers_beyond_envoys_own_limits_still_get_the_error_body(stack: Stack) -> None:
    # Envoy's HTTP/1 codec refuses these before any filter runs
    big = b"x-huge: " + b"a" * 70_000 + b"\r\n"
    status, body = raw_request(stack, b"GET /v1/async/images/jobs HTTP/1.1\r\nhost: t\r\n" + big)
    assert_raw_error_body(status, body, 431)
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(250))
    status, body = raw_request(stack, b"GET /v1/async/images/jobs HTTP/1.1\r\nhost: t\r\n" + many)
    assert_raw_error_body(status, body, 431)


def test_a_malformed_header_is_400_with_the_error_body(stack: Stack) -> None:
    head = b"GET /v1/async/images/jobs HTTP/1.1\r\nhost: t\r\nx-request-id: a\x01b\r\n"
    status, body = raw_request(stack, head)
    assert_raw_error_body(status, body, 400)


def test_header_names_grpc_cannot_carry_are_dropped_not_a_500(client: httpx.Client) -> None:
    r = submit(client, GEN, **{"x-odd&name": "1", "x-odd'name": "2", "x-dollar$": "3"})
    assert r.status_code == 202, r.text


# --- path and query ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/async/images/generations/%ff",
        "/v1/async/images/generations/%c0%80/events",
        "/v1/async/images/edits/%ed%a0%80/images/0",
        "/v1/async/images/jobs?page_token=%ff%fe",
        "/v1/async/images/jobs?status=%C0%80",
        "/v1/async/images/generations/abc?wait=%ff",
    ],
)
def test_invalid_utf8_in_the_path_or_query_is_400(client: httpx.Client, path: str) -> None:
    assert_error_body(client.get(path), 400, "invalid request format")


def test_invalid_utf8_in_delete_is_400(client: httpx.Client) -> None:
    assert_error_body(client.delete("/v1/async/images/variations/%ff"), 400)


def test_undocumented_query_parameters_are_ignored(client: httpx.Client) -> None:
    # the transcoder would bind them to request fields: `kind` would turn this into an edit
    r = client.post(
        "/v1/async/images/generations?kind=edits&request.model=%ff&http_body.content_type=x",
        json=GEN,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # and a GET's `kind` cannot move the job to another kind's path
    assert client.get(f"/v1/async/images/generations/{job_id}?kind=edits").status_code in (200, 202)
    assert_error_body(client.get(f"/v1/async/images/edits/{job_id}?kind=generations"), 404)
    # invalid UTF-8 in an ignored parameter does not matter
    r = client.get("/v1/async/images/jobs?foo=%ff&limit=1")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "ctype",
    ["application/grpcx", "application/grpc-web", "application/grpc;x=1", "application/json"],
)
def test_rest_content_types_near_grpc_are_rest(client: httpx.Client, ctype: str) -> None:
    r = client.post(
        "/v1/async/images/generations",
        content=b'{"model":"mock/m","prompt":"p","size":"16x16"}',
        headers={"content-type": ctype},
    )
    assert r.status_code == 202, r.text  # the servicer's 202 reached :status
    r = client.post("/v1/async/images/generations", content=b"{", headers={"content-type": ctype})
    assert_error_body(r, 400, "invalid request format")


# --- the same rules for typed gRPC requests ----------------------------------------------


def test_grpc_requests_meet_the_same_limits() -> None:
    def refused(message: str, **fields: Any) -> None:
        request = jobs_pb2.ImageRequest(**{"model": "mock/m", "prompt": "p", **fields})
        with pytest.raises(InvalidRequest, match=message):
            from_proto(Kind.GENERATION, request, Limits())

    refused("prompt is longer than", prompt="p" * (constants.DEFAULT_MAX_PROMPT_CHARS + 1))
    refused("n must be between", n=constants.MAX_N + 1)
    refused("at most 16 input_images", input_images=["u"] * (constants.MAX_IMAGES + 1))
    refused("at most 10 fallbacks", fallbacks=["mock/f"] * (constants.MAX_FALLBACKS + 1))
    nested: Any = 1
    for _ in range(constants.MAX_JSON_DEPTH + 1):
        nested = [nested]
    extra = struct_pb2.Struct()
    extra.update({"deep": nested})
    refused("nested more than", extra=extra)
    bomb = jobs_pb2.ImageRequest(model="mock/m", prompt="p", images=[bomb_png(20_000, 20_000)])
    with pytest.raises(InvalidRequest, match="image dimensions"):
        from_proto(Kind.EDIT, bomb, Limits())


def test_too_long_request_id_is_400(client: httpx.Client) -> None:
    assert submit(client, GEN, **{"x-request-id": "r" * 256}).status_code == 202
    r = submit(client, GEN, **{"x-request-id": "r" * 257})
    assert assert_error_body(r, 400)["error"]["param"] == "request_id"
