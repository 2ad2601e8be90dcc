"""The page of all runs (`outputs/index.html`) in headless Chromium, and its index object under contention."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import orjson
from playwright.sync_api import Browser

from promptdrop import runs_page
from promptdrop.records import Cost, Counts, Run
from promptdrop.states import RunState
from promptdrop.usecases import gallery
from tests.contract.job_store_contract import make_run
from tests.functional.conftest import Pipeline, jsonl
from tests.functional.test_gallery_page import _open, browser  # noqa: F401 - the module's browser fixture

HOSTILE_NAME = 'inbox/<script>window.__pwned=1;alert(1)</script>"><img src=x onerror=alert(2)>.jsonl'
STATES = [RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED, RunState.SUBMITTED]


def _run(number: int) -> Run:
    state = STATES[number % len(STATES)]
    base = make_run(f"run-{number:04d}-abcdef01", state=state)
    source = base.source.model_copy(
        update={"object": HOSTILE_NAME if number % 50 == 7 else base.source.object}
    )
    return base.model_copy(
        update={
            "source": source,
            "created_at": 1_790_000_000.0 + number * 60,
            "finished_at": None if state is RunState.SUBMITTED else 1_790_000_000.0 + number * 60 + 30,
            "counts": Counts(lines=10, valid=10, succeeded=8, failed=2),
            "cost": Cost(
                batch=0.536 + number / 1000, interactive=1.072, cached=number % 3, saved_by_cache=0.067
            ),
        }
    )


def test_six_hundred_runs_page_newest_first_with_links_that_resolve_and_hostile_names_as_text(
    pipeline: Pipeline,
    browser: Browser,  # noqa: F811
) -> None:
    """599 runs in the index object, the 600th ending: three pages of 200, newest first; every gallery link of
    an ended run opens its page; names with markup are text (no dialog, no script, with or without CSP)."""
    ctx = pipeline.ctx
    outputs = pipeline.bucket / ctx.settings.output_prefix
    runs = [_run(n) for n in range(600)]
    data = b""
    for run in runs[:-1]:
        data, _ = runs_page.upsert(data, runs_page.row(run))
    ctx.blobs.write_bytes(ctx.settings.output_prefix + runs_page.INDEX_OBJECT, data)
    for run in runs:
        if run.state.terminal:
            ctx.blobs.write_bytes(f"{run.output_folder}index.html", b"<!doctype html><title>gallery</title>")
    gallery.list_run(ctx, runs[-1])

    newest_first = [run.run_id for run in sorted(runs, key=lambda r: r.created_at, reverse=True)]
    seen: list[str] = []
    for number, name in enumerate(["index.html", "runs-2.html", "runs-3.html"], start=1):
        for bypass in (True, False):
            watched = _open(browser, outputs / name, bypass_csp=bypass)
            page = watched.page
            rows = page.locator("tbody tr")
            assert rows.count() == 200
            ids = [rows.nth(i).locator(".run").inner_text() for i in range(rows.count())]
            assert ids == newest_first[(number - 1) * 200 : number * 200]
            for href in page.evaluate(
                "Array.from(document.querySelectorAll('a.run')).map(a => a.getAttribute('href'))"
            ):
                assert (outputs / unquote(href)).is_file(), href
            for rel in ("prev", "next"):
                link = page.locator(f"a[rel={rel}]").first
                if page.locator(f"a[rel={rel}]").count():
                    assert (outputs / link.get_attribute("href")).is_file()  # type: ignore[operator]
            page.wait_for_timeout(200)
            assert watched.dialogs == [] and page.evaluate("window.__pwned === undefined")
            assert page.locator("script").count() == 0 and page.evaluate("document.images.length") == 0
            hostile = [
                rows.nth(i) for i in range(rows.count()) if "run-" in ids[i] and int(ids[i][4:8]) % 50 == 7
            ]
            for row in hostile:
                assert row.locator(".name").inner_text() == HOSTILE_NAME
        seen += ids
        assert all(url.startswith("file://") for url in watched.requests)
    assert seen == newest_first
    assert not (outputs / "runs-4.html").exists()
    submitted = [run.run_id for run in runs if run.state is RunState.SUBMITTED]
    first = _open(browser, outputs / "index.html").page
    assert first.locator(f"a.run:text-is('{submitted[-1]}')").count() == 0  # no gallery yet: not a link


class _SlowIndexWrites:
    """The folder bucket, with every write of the runs index held back 20 ms: the window between reading
    the index and writing it back is wide, as between function instances."""

    def __init__(self, blobs: Any) -> None:
        self._blobs = blobs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)

    def write_bytes(self, name: str, data: bytes, **options: Any) -> bool:
        if name.endswith(runs_page.INDEX_OBJECT):
            time.sleep(0.02)
        return bool(self._blobs.write_bytes(name, data, **options))


def test_runs_ending_at_once_all_keep_their_rows(pipeline: Pipeline) -> None:
    """Sixteen runs listed by eight threads at once, with a wide read-modify-write window: the write on the
    index object's generation keeps every row (a plain rewrite loses some)."""
    ctx = dataclasses.replace(pipeline.ctx, blobs=_SlowIndexWrites(pipeline.ctx.blobs))
    runs = [_run(n) for n in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda run: gallery.list_run(ctx, run), runs))
    rows = runs_page.parse_index(ctx.blobs.read_bytes(ctx.settings.output_prefix + runs_page.INDEX_OBJECT))
    assert sorted(rows) == sorted(run.run_id for run in runs)


def test_a_real_run_is_listed_when_submitted_and_again_when_it_ends(pipeline: Pipeline) -> None:
    """Through the pipeline: the page lists the run with its state and counts, linking its gallery."""
    receipt = pipeline.drop(
        "posters.jsonl",
        jsonl({"prompt": "a kite", "key": "k"}, {"prompt": "x", "key": "bad", "aspect_ratio": "7:3"}),
    )
    assert receipt.run is not None
    index = pipeline.bucket / pipeline.ctx.settings.output_prefix / runs_page.INDEX_OBJECT
    (listed,) = [orjson.loads(line) for line in index.read_bytes().splitlines()]
    assert (listed["run_id"], listed["state"], listed["gallery"]) == (receipt.run.run_id, "SUBMITTED", False)
    run = pipeline.finish(receipt.run.run_id)
    (ended,) = [orjson.loads(line) for line in index.read_bytes().splitlines()]
    assert (ended["state"], ended["succeeded"], ended["invalid"], ended["gallery"]) == (
        run.state.value,
        1,
        1,
        True,
    )
    page = (index.parent / "index.html").read_text()
    assert f'href="{run.run_id}/index.html"' in page and "posters.jsonl" in page
