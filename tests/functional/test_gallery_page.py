"""The demo run's gallery page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

The run is examples/catalogue.jsonl (what scripts/demo runs) plus three hostile lines, through the whole
pipeline on the emulator. Never skipped: without chromium the test fails and names the package to install.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from promptdrop import gallery as promptdrop_gallery
from promptdrop.adapters.localfs import LocalBlobStore
from promptdrop.states import RunState
from promptdrop.usecases import gallery
from promptdrop.usecases.gallery import Thumbnails
from promptdrop.usecases.harvest import ImageWriter
from promptdrop.usecases.inputs import parsed_input
from tests.functional.conftest import Pipeline, jsonl, pipeline_for

REPO = Path(__file__).resolve().parents[2]

SCRIPT_PROMPT = '<script>window.__pwned = "script"; alert("script")</script> a red kite over a beach'
IMG_PROMPT = "\"><img src=x onerror=\"window.__pwned='img';alert('img')\"> a lighthouse at dusk"
HOSTILE_KEY = "xss-\"><img src=x onerror=alert('key')>"
HOSTILE = [
    {"key": HOSTILE_KEY, "prompt": SCRIPT_PROMPT},
    {"key": "xss-attribute", "prompt": IMG_PROMPT, "aspect_ratio": "16:9"},
    # Invalid (no such ratio), so the hostile prompt also goes through the reason card.
    {"key": "xss-invalid", "prompt": SCRIPT_PROMPT, "aspect_ratio": "7:3"},
]


def chromium_path() -> str:
    """Debian's chromium (PROMPTDROP_CHROMIUM overrides): Playwright cannot download its own browsers here."""
    found = os.environ.get("PROMPTDROP_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail(
            "headless Chromium not found: install Debian's `chromium` package (`apt-get install -y chromium`; "
            "scripts/test does this when it runs as root), or set PROMPTDROP_CHROMIUM to a Chromium binary"
        )
    return found


@pytest.fixture
def pipeline(tmp_path: Path, emulator_factory: Any) -> Pipeline:
    """The usual pipeline, with images at a quarter of their real size (1K: 256 px) so thumbnails shrink."""
    return pipeline_for(tmp_path / "home", emulator_factory(image_scale=0.25))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def _demo_run(pipeline: Pipeline) -> tuple[Path, list[dict[str, Any]]]:
    # What scripts/demo runs on the emulator: the catalogue plus the emulator's extra (blocked) line.
    demo = b"".join(
        (REPO / "examples" / name).read_bytes() for name in ("catalogue.jsonl", "emulator-extras.jsonl")
    )
    data = demo + jsonl(*HOSTILE)
    receipt = pipeline.drop("catalogue.jsonl", data)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.PARTIAL
    return pipeline.outputs(run), pipeline.manifest(run)


class Watched:
    """A page with every dialog and request it makes recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", self._dialog)
        page.on("request", lambda request: self.requests.append(request.url))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def _open(browser: Browser, path: Path, *, bypass_csp: bool = False) -> Watched:
    # Tall enough that every lazy image of the demo is in view and loads.
    context = browser.new_context(viewport={"width": 1280, "height": 4000}, bypass_csp=bypass_csp)
    watched = Watched(context.new_page())
    watched.page.goto(path.as_uri(), wait_until="load")
    # Polled from here: wait_for_function polls with a script of its own inside the page, which the page's
    # Content-Security-Policy (no scripts) refuses whenever the first check is not already true.
    deadline = time.monotonic() + 30
    while not watched.page.evaluate("Array.from(document.images).every(i => i.complete)"):
        assert time.monotonic() < deadline, "images still loading after 30 s"
        watched.page.wait_for_timeout(100)
    return watched


def test_demo_page_shows_every_line_and_loads_every_image(pipeline: Pipeline, browser: Browser) -> None:
    """One card per manifest line in input order, every <img> decoded, reasons on failed and invalid cards."""
    folder, entries = _demo_run(pipeline)
    watched = _open(browser, folder / "index.html")
    page = watched.page

    cards = page.locator("article.card")
    assert cards.count() == len(entries) == 16
    assert [cards.nth(i).get_attribute("id") for i in range(cards.count())] == [
        f"line-{e['line']}" for e in entries
    ]
    images = page.evaluate(
        "Array.from(document.images).map(i => ({src: i.getAttribute('src'), w: i.naturalWidth}))"
    )
    succeeded = [e for e in entries if e["status"] == "succeeded"]
    assert len(images) == len(succeeded) == 13
    assert all(image["w"] > 0 for image in images), images
    assert all(image["src"].startswith("thumbs/") and image["src"].endswith(".webp") for image in images)
    # Each thumbnail links to its full image.
    for entry in succeeded:
        link = page.locator(f"#line-{entry['line']} a.pic")
        assert (
            folder / page.evaluate("a => decodeURIComponent(a.getAttribute('href'))", link.element_handle())
        ) == (pipeline.bucket / entry["image"])
    for entry in entries:
        if entry["status"] != "succeeded":
            why = page.locator(f"#line-{entry['line']} .why").inner_text()
            assert entry["status"] in why.lower()
            assert entry["error"]["code"] in why and entry["error"]["message"] in why
    by_key = {e["key"]: e for e in entries}
    assert "safety" in page.locator(f"#line-{by_key['blocked-example']['line']} .why").inner_text()
    assert "bad_aspect_ratio" in page.locator(f"#line-{by_key['bad-ratio']['line']} .why").inner_text()
    header = page.locator("header").inner_text()
    assert "PARTIAL" in header and "16 lines" in header and "saved $" in header
    assert all(url.startswith("file://") for url in watched.requests), watched.requests

    problems = _open(browser, folder / "problems.html").page
    assert problems.locator("article.card").count() == 3  # blocked-example, bad-ratio, xss-invalid

    shot = os.environ.get("PROMPTDROP_GALLERY_SCREENSHOT")
    if shot:  # how docs/gallery.png is made: PROMPTDROP_GALLERY_SCREENSHOT=docs/gallery.png
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=shot, type="png", full_page=True)


def test_hostile_prompts_and_keys_are_shown_as_text_and_run_nothing(
    pipeline: Pipeline, browser: Browser
) -> None:
    """`<script>` and `"><img onerror=...>` in prompts and keys are text; no dialog, no flag, even without CSP."""
    folder, entries = _demo_run(pipeline)
    by_key = {e["key"]: e for e in entries}
    # bypass_csp: the page's own Content-Security-Policy must not be what saves it; the escaping must.
    for bypass in (True, False):
        watched = _open(browser, folder / "index.html", bypass_csp=bypass)
        page = watched.page
        for key, prompt in (
            (HOSTILE_KEY, SCRIPT_PROMPT),
            ("xss-attribute", IMG_PROMPT),
            ("xss-invalid", SCRIPT_PROMPT),
        ):
            card = page.locator(f"#line-{by_key[key]['line']}")
            assert card.locator(".key").inner_text() == key
            assert card.locator(".prompt").inner_text() == prompt
        page.wait_for_timeout(300)  # time for an injected onerror handler to have fired
        assert watched.dialogs == []
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("script").count() == 0
        assert page.evaluate("document.images.length") == sum(
            1 for e in entries if e["status"] == "succeeded"
        )


def test_page_series_follows_the_page_size_when_settled_again(pipeline: Pipeline) -> None:
    """Pages of at most N cards with next/previous links; a later settle removes pages it no longer uses."""
    folder, entries = _demo_run(pipeline)
    run = pipeline.ctx.store.get_run(folder.name)
    assert run is not None
    jobs = pipeline.ctx.store.list_jobs(run.run_id)

    # After a settle the staged input is gone: cards then show what the manifest alone says.
    gallery.publish(pipeline.context(gallery_page_size=5), run, jobs)
    pages = sorted(p.name for p in folder.glob("*.html"))
    assert pages == ["index.html", "page-2.html", "page-3.html", "page-4.html", "problems.html"]
    assert b'href="page-2.html"' in (folder / "index.html").read_bytes()
    last = (folder / "page-4.html").read_text()
    assert last.count('<article class="card') == len(entries) - 15 and 'href="page-3.html"' in last

    gallery.publish(pipeline.ctx, run, jobs)
    assert sorted(p.name for p in folder.glob("*.html")) == ["index.html", "problems.html"]
    assert (folder / "index.html").read_text().count('<article class="card') == len(entries)


def test_unusable_file_gets_a_page_with_its_reason(pipeline: Pipeline) -> None:
    """A run that never ran a line still ends with a page: its state, its reason, no cards."""
    ctx = pipeline.context(max_file_bytes=10)
    receipt = pipeline.drop("huge.jsonl", jsonl(*HOSTILE), ctx)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.FAILED and run.reason
    page = (pipeline.outputs(run) / "index.html").read_text()
    assert "FAILED" in page and html.escape(run.reason) in page
    assert '<article class="card' not in page and "No lines to show." in page


def test_a_thumbnail_that_cannot_be_made_never_fails_its_line(tmp_path: Path) -> None:
    """Bytes Pillow cannot read: the image is still written, no thumbnail, and the card shows the full image."""
    store = LocalBlobStore(tmp_path / "bucket")
    folder = "outputs/r-1/"
    with ImageWriter(store, 4, after_write=Thumbnails(store, folder)) as writer:
        writer.submit(folder + "images/broken.png", b"\x89PNG not really", "image/png", {})
        writer.submit(folder + "images/fine.png", _png(), "image/png", {})
    assert writer.flush() == {}  # nothing refused
    assert store.read_bytes(folder + "images/broken.png") == b"\x89PNG not really"
    thumbs = {info.name for info in store.list(folder + "thumbs/")}
    assert thumbs == {folder + "thumbs/fine.webp"}
    entry = {"line": 1, "key": "broken", "status": "succeeded", "image": folder + "images/broken.png"}
    card = promptdrop_gallery.card(entry, None, folder=folder, thumbs=thumbs)
    assert card.thumb == card.image == "images/broken.png"


def test_thumbnails_off_makes_none(pipeline: Pipeline) -> None:
    """PROMPTDROP_THUMBNAILS=off: the harvest writes no thumbs/ and the page shows the full images."""
    ctx = pipeline.context(thumbnails=False)
    receipt = pipeline.drop("few.jsonl", jsonl({"key": "a", "prompt": "a pear"}), ctx)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert not (pipeline.outputs(run) / "thumbs").exists()
    assert '<img src="images/a.png"' in (pipeline.outputs(run) / "index.html").read_text()


def test_a_small_image_is_its_own_thumbnail(tmp_path: Path) -> None:
    """An image smaller than the thumbnail box (the emulator's 1/16-scale images: 64 px) gets no WebP: nothing
    is decoded, encoded or written, and its card shows the image itself; a bigger one still gets its WebP."""
    store = LocalBlobStore(tmp_path / "bucket")
    folder = "outputs/r-1/"
    with ImageWriter(store, 4, after_write=Thumbnails(store, folder)) as writer:
        writer.submit(folder + "images/small.png", _png((64, 36)), "image/png", {})
        writer.submit(folder + "images/big.png", _png(), "image/png", {})
    assert writer.flush() == {}
    thumbs = {info.name for info in store.list(folder + "thumbs/")}
    assert thumbs == {folder + "thumbs/big.webp"}
    entry = {"line": 1, "key": "small", "status": "succeeded", "image": folder + "images/small.png"}
    card = promptdrop_gallery.card(entry, None, folder=folder, thumbs=thumbs)
    assert card.thumb == card.image == "images/small.png"


def _png(size: tuple[int, int] = (600, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "teal").save(out, format="PNG")
    return out.getvalue()


def test_problem_pages_reuse_the_index_pass(pipeline: Pipeline) -> None:
    """The input is parsed and the manifest read once for the index and problems pages alike (a second pass
    was a third of a 20,000-line settle, scripts/bench --only scale); the problems page is the same either way."""
    folder, _ = _demo_run(pipeline)
    run = pipeline.ctx.store.get_run(folder.name)
    assert run is not None and run.counts.failed + run.counts.invalid > 0
    jobs = pipeline.ctx.store.list_jobs(run.run_id)
    demo = (REPO / "examples" / "catalogue.jsonl").read_bytes()
    demo += (REPO / "examples" / "emulator-extras.jsonl").read_bytes() + jsonl(*HOSTILE)
    pipeline.ctx.blobs.write_bytes(run.input_object, demo)  # staged again, as before the settle deleted it
    opened: list[str] = []
    blobs = pipeline.ctx.blobs
    original = blobs.open_read

    def counted(name: str, **kwargs: Any) -> Any:
        opened.append(name)
        return original(name, **kwargs)

    blobs.open_read = counted  # type: ignore[method-assign]
    try:
        gallery.publish(pipeline.ctx, run, jobs, lambda: parsed_input(pipeline.ctx, run))
    finally:
        blobs.open_read = original  # type: ignore[method-assign]
    layout = pipeline.ctx.layout(run.run_id)
    assert opened.count(run.input_object) == 1 and opened.count(layout.manifest) == 1
    problems = (folder / "problems.html").read_text()
    assert problems.count('<article class="card') == run.counts.failed + run.counts.invalid
    assert html.escape(SCRIPT_PROMPT) in problems  # the invalid hostile line's card, with its prompt
