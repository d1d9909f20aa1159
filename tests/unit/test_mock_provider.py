"""The mock provider: real, deterministic images for all three kinds, offline, plus the
latency and failure drills the worker's retry tests script through request params."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from imagejobs.domain.kinds import Kind
from imagejobs.providers import mock
from imagejobs.providers.base import (
    ImageInput,
    Provider,
    ProviderConfig,
    ProviderError,
    ProviderRequest,
    ProviderResult,
)
from imagejobs.providers.registry import build_provider
from PIL import Image, ImageChops, ImageOps, ImageStat

PROMPT = "a lighthouse on a cliff at sunset"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"the mock provider made a network call: {request.url}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        yield mock.build(ProviderConfig(name="mock"), http)


def gen(prompt: str | None = PROMPT, **params: Any) -> ProviderRequest:
    return ProviderRequest(Kind.GENERATION, "mock-image-1", prompt, params)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def picture(size: tuple[int, int] = (256, 192)) -> Image.Image:
    """A colourful opaque test input (no mid-grey pixels, so inverting always shows)."""
    ramp = Image.linear_gradient("L").resize(size)
    return ImageOps.colorize(ramp, (200, 20, 40), (20, 60, 220))


def mask_with_hole(size: tuple[int, int], hole: tuple[int, int, int, int]) -> Image.Image:
    """An opaque RGBA mask, transparent (= edit here) inside `hole`."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    return mask


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


async def fails(provider: Provider, request: ProviderRequest) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.run(request)
    return info.value


# --- the seam ------------------------------------------------------------------------------


async def test_is_built_by_the_registry_with_all_operations() -> None:
    async with httpx.AsyncClient() as http:
        built = build_provider(ProviderConfig(name="mock"), http)
    assert built.name == "mock"
    assert built.operations == frozenset(Kind)


# --- generation ----------------------------------------------------------------------------


async def test_generation_defaults_to_one_1024_png(provider: Provider) -> None:
    result = await provider.run(gen())
    assert len(result.images) == 1
    out = result.images[0]
    assert out.content_type == "image/png"
    assert out.revised_prompt is None
    img = opened(out.data)
    assert (img.format, img.size, img.mode) == ("PNG", (1024, 1024), "RGB")
    assert result.fields == {
        "output_format": "png",
        "size": "1024x1024",
        "quality": "auto",
        "background": "opaque",
    }
    usage = result.usage
    assert usage is not None
    assert usage["input_tokens_details"] == {"text_tokens": 7, "image_tokens": 0}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 7


async def test_generation_honours_size_aspect_ratio_and_n(provider: Provider) -> None:
    result = await provider.run(gen(size="320x200", n=3, quality="high"))
    assert [opened(i.data).size for i in result.images] == [(320, 200)] * 3
    assert len({i.data for i in result.images}) == 3  # each index is its own picture
    assert result.fields["size"] == "320x200"
    assert result.fields["quality"] == "high"
    wide = await provider.run(gen(aspect_ratio="16:9", resolution="1K"))
    assert opened(wide.images[0].data).size == (1024, 576)


async def test_generation_is_deterministic_and_derived_from_prompt_and_seed(
    provider: Provider,
) -> None:
    first = await provider.run(gen(seed=7, size="256x256"))
    mock._rendered.clear()  # rendered afresh, not answered from the cache
    again = await provider.run(gen(seed=7, size="256x256"))
    other_seed = await provider.run(gen(seed=8, size="256x256"))
    other_prompt = await provider.run(gen("a bowl of ramen", seed=7, size="256x256"))
    assert first.images[0].data == again.images[0].data
    assert first.images[0].data != other_seed.images[0].data
    assert first.images[0].data != other_prompt.images[0].data
    means = [
        ImageStat.Stat(opened(r.images[0].data)).mean for r in (first, other_seed, other_prompt)
    ]
    assert means[0] != means[2]
    assert means[0] != means[1]


async def test_a_repeated_generation_is_answered_from_the_last_ones_rendered(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    mock._rendered.clear()
    renders: list[ProviderRequest] = []
    render = mock._render

    def counted(request: ProviderRequest, out: Any) -> Any:
        renders.append(request)
        return render(request, out)

    monkeypatch.setattr(mock, "_render", counted)
    first = await provider.run(gen(seed=1, size="64x64"))
    again = await provider.run(gen(seed=1, size="64x64"))
    assert again.images[0].data == first.images[0].data and len(renders) == 1
    for seed in range(2, mock.RENDER_CACHE_SIZE + 2):  # the first one falls out
        await provider.run(gen(seed=seed, size="16x16"))
    assert len(mock._rendered) == mock.RENDER_CACHE_SIZE
    before = len(renders)
    await provider.run(gen(seed=1, size="64x64"))
    assert len(renders) == before + 1
    await provider.run(gen(seed=[1, 2], size="16x16"))  # an unhashable seed is fine too
    before = len(renders)
    together = await asyncio.gather(*(provider.run(gen(seed=99, size="16x16")) for _ in range(50)))
    assert len(renders) == before + 1  # 50 at once: rendered once
    assert len({r.images[0].data for r in together}) == 1


@pytest.mark.parametrize(
    ("fmt", "pil_format", "content_type"),
    [("jpeg", "JPEG", "image/jpeg"), ("jpg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
async def test_generation_formats(
    provider: Provider, fmt: str, pil_format: str, content_type: str
) -> None:
    result = await provider.run(gen(output_format=fmt, size="256x128"))
    img = opened(result.images[0].data)
    assert (img.format, img.size) == (pil_format, (256, 128))
    assert result.images[0].content_type == content_type
    assert result.fields["output_format"] == pil_format.lower()


async def test_output_compression_sets_lossy_quality(provider: Provider) -> None:
    low = await provider.run(gen(output_format="jpeg", output_compression=5, size="256x256"))
    high = await provider.run(gen(output_format="jpeg", output_compression=95, size="256x256"))
    assert len(low.images[0].data) < len(high.images[0].data)


@pytest.mark.parametrize("fmt", ["png", "webp"])
async def test_transparent_background(provider: Provider, fmt: str) -> None:
    result = await provider.run(gen(background="transparent", output_format=fmt, size="256x256"))
    img = opened(result.images[0].data)
    assert img.mode == "RGBA"
    low, high = img.getchannel("A").getextrema()
    assert (low, high) == (0, 255)  # a see-through background behind opaque shapes
    assert result.fields["background"] == "transparent"


# --- edits ---------------------------------------------------------------------------------


async def test_edit_changes_only_the_masked_region(provider: Provider) -> None:
    base = picture()
    hole = (64, 48, 192, 144)
    request = ProviderRequest(
        Kind.EDIT,
        "mock-image-1",
        "add a red balloon",
        {},
        images=(ImageInput(png(base)),),
        mask=ImageInput(png(mask_with_hole(base.size, hole))),
    )
    result = await provider.run(request)
    out = opened(result.images[0].data)
    assert (out.format, out.size) == ("PNG", base.size)
    diff = ImageChops.difference(out.convert("RGB"), base)
    assert mean_abs_diff(out.crop(hole), base.crop(hole)) > 40
    diff.paste((0, 0, 0), hole)
    assert diff.getbbox() is None  # nothing outside the hole moved
    usage = result.usage
    assert usage is not None
    assert usage["input_tokens_details"]["image_tokens"] > 0
    assert (await provider.run(request)).images[0].data == result.images[0].data


async def test_edit_without_mask_changes_everything_and_varies_by_index(
    provider: Provider,
) -> None:
    base = picture()
    request = ProviderRequest(
        Kind.EDIT,
        "mock-image-1",
        "make it winter",
        {"n": 2, "output_format": "webp"},
        images=(ImageInput(png(base)),),
    )
    result = await provider.run(request)
    first, second = (opened(i.data) for i in result.images)
    assert first.format == "WEBP"
    assert first.size == base.size
    assert mean_abs_diff(first, base) > 40
    assert result.images[0].data != result.images[1].data
    assert second.size == base.size


async def test_edit_size_param_resizes_the_output(provider: Provider) -> None:
    request = ProviderRequest(
        Kind.EDIT,
        "mock-image-1",
        "add a hat",
        {"size": "128x128"},
        images=(ImageInput(png(picture())),),
    )
    result = await provider.run(request)
    assert opened(result.images[0].data).size == (128, 128)
    assert result.fields["size"] == "128x128"


async def test_background_removal_makes_the_flat_background_transparent(
    provider: Provider,
) -> None:
    shot = Image.new("RGB", (200, 150), (245, 245, 245))
    shot.paste((30, 120, 60), (60, 40, 140, 110))
    request = ProviderRequest(
        Kind.EDIT,
        "mock-image-1",
        None,
        {"type": "background_removal", "output_format": "jpeg"},
        images=(ImageInput(png(shot)),),
    )
    result = await provider.run(request)
    out = opened(result.images[0].data)
    assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (200, 150))
    assert out.getpixel((5, 5)) == (245, 245, 245, 0)
    assert out.getpixel((100, 75)) == (30, 120, 60, 255)
    assert result.fields["background"] == "transparent"


# --- variations ----------------------------------------------------------------------------


async def test_variation_is_a_deterministic_perturbed_copy(provider: Provider) -> None:
    base = picture()
    request = ProviderRequest(
        Kind.VARIATION, "mock-image-1", None, {"n": 2}, images=(ImageInput(png(base)),)
    )
    result = await provider.run(request)
    outs = [opened(i.data) for i in result.images]
    assert [o.size for o in outs] == [base.size] * 2
    assert all(mean_abs_diff(o, base) > 10 for o in outs)
    assert result.images[0].data != result.images[1].data
    assert (await provider.run(request)).images == result.images
    resized = await provider.run(dataclasses.replace(request, params={"size": "64x64"}))
    assert opened(resized.images[0].data).size == (64, 64)


async def test_rendering_does_not_block_the_event_loop(provider: Provider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await provider.run(gen(n=4, size="1024x1024"))
    finally:
        task.cancel()
    assert ticks >= 5


# --- behaviour controls --------------------------------------------------------------------


async def test_latency_is_applied(provider: Provider) -> None:
    started = time.monotonic()
    await provider.run(gen(size="64x64", mock_latency_ms=80))
    assert 0.08 <= time.monotonic() - started < 0.6


async def test_latency_is_cancellable(provider: Provider) -> None:
    task = asyncio.create_task(provider.run(gen(mock_latency_ms=30_000)))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.2


async def test_fail_status_fails_every_attempt_without_fail_times(provider: Provider) -> None:
    request = gen(mock_fail_status=503)
    for attempt in (1, 5):
        error = await fails(provider, dataclasses.replace(request, attempt=attempt))
        assert error.status_code == 503
        assert error.type == "server_error"
        assert error.code == "mock_failure"
        assert error.retryable is True
        assert error.retry_after is None
        assert "HTTP 503" in error.message


async def test_fail_times_fails_then_succeeds(provider: Provider) -> None:
    request = gen(size="64x64", mock_fail_status=429, mock_fail_times=2, mock_latency_ms=20)
    for attempt in (1, 2):
        started = time.monotonic()
        error = await fails(provider, dataclasses.replace(request, attempt=attempt))
        assert time.monotonic() - started >= 0.02  # latency comes before the failure
        assert (error.status_code, error.type, error.retryable) == (429, "rate_limit_error", True)
        assert "attempt" in error.message
    result: ProviderResult = await provider.run(dataclasses.replace(request, attempt=3))
    assert len(result.images) == 1


async def test_client_error_status_is_not_retryable(provider: Provider) -> None:
    error = await fails(provider, gen(mock_fail_status=400))
    assert (error.status_code, error.type, error.retryable) == (400, "invalid_request_error", False)


# --- invalid requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"output_format": "gif"}, "output_format"),
        ({"size": "abc"}, "size"),
        ({"size": "5000x5000"}, "size"),
        ({"size": 1024}, "size"),
        ({"aspect_ratio": "wide"}, "aspect_ratio"),
        ({"output_compression": 101}, "output_compression"),
        ({"background": "plaid"}, "background"),
        ({"background": "transparent", "output_format": "jpeg"}, "background"),
        ({"n": 11}, "n"),
        ({"mock_fail_status": 200}, "mock_fail_status"),
    ],
)
async def test_invalid_params_are_rejected_with_400(
    provider: Provider, params: dict[str, Any], param: str
) -> None:
    error = await fails(provider, gen(**params))
    assert (error.status_code, error.type, error.param) == (400, "invalid_request_error", param)
    assert error.retryable is False
    assert error.code


async def test_missing_prompt_is_rejected(provider: Provider) -> None:
    error = await fails(provider, gen(None))
    assert (error.status_code, error.param) == (400, "prompt")


@pytest.mark.parametrize(
    ("images", "mask", "param"),
    [
        ((), None, "image"),
        ((ImageInput(b"not an image"),), None, "image"),
        ((ImageInput(b"\x89PNG\r\n\x1a\n" + b"\0" * 40),), None, "image"),
        ((ImageInput(png(picture())),), ImageInput(b"garbage"), "mask"),
        ((ImageInput(png(picture())),), ImageInput(png(picture((64, 64)))), "mask"),
    ],
)
async def test_bad_input_images_are_rejected_with_400(
    provider: Provider, images: tuple[ImageInput, ...], mask: ImageInput | None, param: str
) -> None:
    request = ProviderRequest(Kind.EDIT, "mock-image-1", "edit", {}, images=images, mask=mask)
    error = await fails(provider, request)
    assert (error.status_code, error.type, error.param) == (400, "invalid_request_error", param)
    assert error.retryable is False


async def test_undecodable_variation_input_is_rejected(provider: Provider) -> None:
    request = ProviderRequest(
        Kind.VARIATION, "mock-image-1", None, {}, images=(ImageInput(b"GIF89a..."),)
    )
    error = await fails(provider, request)
    assert (error.status_code, error.code) == (400, "invalid_image")


async def test_edit_without_mask_fills_the_images_own_transparent_pixels(
    provider: Provider,
) -> None:
    base = picture().convert("RGBA")
    hole = (32, 32, 96, 96)
    base.paste((0, 0, 0, 0), hole)
    request = ProviderRequest(
        Kind.EDIT, "mock-image-1", "fill the hole", {}, images=(ImageInput(png(base)),)
    )
    out = opened((await provider.run(request)).images[0].data).convert("RGBA")
    assert out.crop(hole).getchannel("A").getextrema() == (255, 255)
    diff = ImageChops.difference(out, base)
    diff.paste((0, 0, 0, 0), hole)
    assert diff.getbbox() is None


async def test_drill_params_may_arrive_as_form_strings(provider: Provider) -> None:
    request = gen(mock_fail_status="502", mock_fail_times="1")
    error = await fails(provider, request)
    assert (error.status_code, error.retryable) == (502, True)
    assert await provider.run(dataclasses.replace(request, attempt=2, params={"size": "8x8"}))


async def test_mock_cost_usd_ticks_is_reported_as_usage_and_absent_otherwise(
    provider: Provider,
) -> None:
    costed = await provider.run(gen(size="16x16", mock_cost_usd_ticks=700_000_000))
    assert costed.usage is not None and costed.usage["cost_in_usd_ticks"] == 700_000_000
    plain = await provider.run(gen(size="16x16"))
    assert plain.usage is not None and "cost_in_usd_ticks" not in plain.usage
