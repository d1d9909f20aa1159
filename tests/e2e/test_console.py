"""The web console in a real headless browser (Debian's chromium, driven by playwright
with the system Chromium as its executable), against the session's stack through Envoy:
submit through the form and see the image with a non-zero natural size, edit with an
uploaded image and mask, cancel a running job, see a failed job's error body and a
refused submit's error, keep the key in the browser, load nothing from anywhere else.

A screenshot of the last state is saved as `console.png` in the test's temporary
directory (its path is printed)."""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from imagejobs.testing import Stack
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
# a closed network: nothing but the page's own origin may be reached
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # any one thing the page is waited for

if not shutil.which(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)

IMAGE_LOADED = (
    "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0 }"
)


@dataclass
class Seen:
    """What a page asked for and what went wrong in it."""

    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium with a fresh profile (playwright makes a temporary one per launch, and
    refuses a --user-data-dir of ours) and each test a fresh context."""
    assert shutil.which(CHROMIUM), "chromium is required in CI"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def page(browser: Browser, stack: Stack, seen: Seen) -> Iterator[Page]:
    """A fresh browser context on the console; every request it makes is recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("request", lambda r: seen.requested.append(r.url))
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{stack.url}/console")  # redirected to /console/
    try:
        yield page
    finally:
        context.close()


def _png(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    colour = (40, 120, 200) if mode == "RGB" else (0, 0, 0, 255)
    image = Image.new(mode, size, colour)
    if mode == "RGBA":  # transparent in the middle: the region an edit changes
        clear = Image.new("RGBA", (size[0] // 2, size[1] // 2), (0, 0, 0, 0))
        image.paste(clear, (size[0] // 4, size[1] // 4))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def _use_key(page: Page, key: str) -> None:
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-state:text('key kept in this browser')")


def _submit(page: Page, prompt: str, extra: str = "", kind: str = "generations") -> None:
    """Submit through the form; returns once the job's view shows the new job."""
    before = page.text_content("#job-id") or ""
    page.check(f"input[name=kind][value={kind}]")
    page.fill("#model", "mock/image-1")
    page.fill("#prompt", prompt)
    page.fill("#size", "128x96")
    page.fill("#extra", extra)
    page.click("#submit-button")
    page.wait_for_function(
        "before => (document.querySelector('#job-id').textContent || '') !== before", arg=before
    )


def _request(page: Page) -> str:
    """The job view's request, once it has loaded."""
    page.wait_for_function("() => document.querySelector('#job-request').textContent !== '…'")
    return page.inner_text("#job-request")


def test_the_console_submits_shows_cancels_and_renders_errors(
    page: Page, stack: Stack, seen: Seen, tmp_path: Path
) -> None:
    key = f"sk-bf-console-{uuid.uuid4().hex}"
    _use_key(page, key)
    page.wait_for_selector("#stats:text('workers: 1')")
    assert page.is_visible("#jobs-empty")  # a new key: no jobs

    # a generation through the form: the image appears, full size and as a thumbnail
    _submit(page, "a red fox in the snow", '{"mock_cost_usd_ticks": 700000000}')
    page.wait_for_selector("#job-status[data-status=completed]")
    page.wait_for_function(IMAGE_LOADED, arg="#job-images img")
    size = page.eval_on_selector("#job-images img", "i => [i.naturalWidth, i.naturalHeight]")
    assert size == [128, 96]
    page.wait_for_function(IMAGE_LOADED, arg="#jobs td.thumbs img")
    assert '"prompt": "a red fox in the snow"' in _request(page)
    # status, model (from the job's request, fetched by the row), provider, and the cost
    # the provider reported (7 * 10^8 ticks)
    first = "#jobs tbody tr:first-child"
    page.wait_for_selector(f"{first}:has-text('mock/image-1'):has-text('$0.0700')")
    assert page.get_attribute(first, "data-status") == "completed"

    # an edit: an uploaded image and a mask
    page.check("input[name=kind][value=edits]")
    page.set_input_files("#image", str(_png(tmp_path / "photo.png", (64, 48))))
    page.set_input_files("#mask", str(_png(tmp_path / "mask.png", (64, 48), "RGBA")))
    _submit(page, "add a sun", kind="edits")
    page.wait_for_selector("#job-status[data-status=completed]")
    page.wait_for_function(IMAGE_LOADED, arg="#job-images img")
    request = _request(page)
    assert '"kind": "edits"' in request and '"filename": "mask.png"' in request

    # a running job, cancelled from its view; live updates move it on
    _submit(page, "a slow heron", '{"mock_latency_ms": 30000}')
    page.wait_for_selector("#job-status[data-status=processing]")
    page.click("#cancel-job")
    page.wait_for_selector("#job-status[data-status=cancelled]")
    assert "499 cancelled" in page.inner_text("#job-error-summary")

    # a job the provider fails: its error body is rendered
    _submit(page, "a failing owl", '{"mock_fail_status": 400}')
    page.wait_for_selector("#job-status[data-status=failed]")
    summary = page.inner_text("#job-error-summary")
    assert summary.startswith("400 mock_failure: mock upstream error")
    assert '"is_bifrost_error": true' in page.inner_text("#job-error-body")

    # a submit the API refuses: the error body shows under the form
    page.check("input[name=kind][value=generations]")
    page.fill("#prompt", "")
    page.fill("#extra", "")
    page.click("#submit-button")
    page.wait_for_selector("#submit-error:not([hidden])")
    assert page.inner_text("#submit-error").startswith("400 ")

    statuses = page.eval_on_selector_all(
        "#jobs tbody tr", "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses == ["failed", "cancelled", "completed", "completed"]
    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"console screenshot: {shot}")

    # the key is kept in the browser: a reload shows the same jobs
    page.reload()
    assert page.input_value("#key") == key
    page.wait_for_selector("#jobs tbody tr:nth-child(4)")
    assert seen.errors == []
    foreign = [u for u in seen.requested if not u.startswith((stack.url, "blob:"))]
    assert foreign == []


def test_another_key_sees_none_of_those_jobs(page: Page) -> None:
    _use_key(page, f"sk-bf-other-{uuid.uuid4().hex}")
    page.wait_for_selector("#jobs-empty:not([hidden])")
    assert page.eval_on_selector_all("#jobs tbody tr", "rows => rows.length") == 0
