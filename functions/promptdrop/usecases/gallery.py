"""The gallery's I/O: thumbnails beside the images a harvest writes, and the pages a settle writes.

A thumbnail never fails its line: one that cannot be made or stored leaves its card on the full image. A page
that cannot be written (a transient storage error) raises, and the next tick settles the run again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import orjson

from promptdrop import gallery, manifest, runs_page, thumbnails
from promptdrop.errors import NotFoundError, PreconditionFailedError, PromptdropError, TransientError
from promptdrop.layout import RunLayout
from promptdrop.ports import BlobStore
from promptdrop.prompts import ParsedLine
from promptdrop.records import Job, Run
from promptdrop.streams import iter_lines
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

HTML: str = "text/html; charset=utf-8"
# Opens the run's parsed input: prompts, sizes and ratios are not in the manifest.
InputOpener = Callable[[], AbstractContextManager[Iterator[ParsedLine]]]


# Decoding is CPU work: one thread per core, shared by every harvest of the process, decodes one image
# each. Memory stays bounded however many uploads are in flight, and the decode buffers stay in those few
# threads' malloc arenas instead of one arena per upload thread (measured: +76 MB peak RSS that way).
_DECODERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="promptdrop-thumb")


class Thumbnails:
    """Called by the harvest's image writer threads after each image is stored; an image smaller than the
    thumbnail box gets none (the card shows the image itself)."""

    def __init__(self, blobs: BlobStore, folder: str) -> None:
        self.blobs = blobs
        self.folder = folder

    def __call__(self, image_name: str, data: bytes) -> None:
        name = gallery.thumb_name(self.folder, image_name)
        if name is None or thumbnails.is_own_thumbnail(data):
            return  # a small image is its own thumbnail: the card shows it (gallery.card)
        try:
            small = _DECODERS.submit(thumbnails.make_thumbnail, data).result()
            self.blobs.write_bytes(name, small, content_type=gallery.THUMB_MIME_TYPE)
        except PromptdropError as exc:
            # Never the line's failure: the gallery card falls back to the full image.
            log.warning("no thumbnail for %s: %s", image_name, exc)


def thumbnails_for(ctx: Context, layout: RunLayout) -> Thumbnails | None:
    """The harvest's thumbnail maker for a run, or None when PROMPTDROP_THUMBNAILS is off."""
    if not ctx.settings.thumbnails:
        return None
    return Thumbnails(ctx.blobs, layout.folder)


def _entries(ctx: Context, layout: RunLayout) -> Iterator[dict[str, Any]]:
    try:
        with ctx.blobs.open_read(layout.manifest) as stream:
            for raw in iter_lines(stream):
                if raw.strip():
                    yield orjson.loads(raw)
    except NotFoundError:
        return


def _no_input() -> AbstractContextManager[Iterator[ParsedLine]]:
    return nullcontext(iter(()))


def _cards(
    ctx: Context,
    layout: RunLayout,
    thumbs: set[str],
    lines: InputOpener,
    keep: Callable[[gallery.Card], bool],
) -> Iterator[gallery.Card]:
    with lines() as parsed:
        for entry, line in gallery.join_lines(_entries(ctx, layout), parsed):
            item = gallery.card(entry, line, folder=layout.folder, thumbs=thumbs)
            if keep(item):
                yield item


# At most this many problem cards are held in memory between the index pages and the problems pages.
_PROBLEMS_KEPT = 2000


def publish(ctx: Context, run: Run, jobs: list[Job], lines: InputOpener | None = None) -> None:
    """Write ``index.html`` (and ``page-N.html``, ``problems*.html``) of a run that is ending.

    ``lines`` opens the run's parsed input (None: the file was unusable, the page shows the reason).
    Written again on a re-settle; pages of an earlier settle that the new one does not use are deleted.
    """
    lines = lines or _no_input
    layout = ctx.layout(run.run_id)
    summary = manifest.summary(run, jobs, bucket_url=ctx.blobs.url)
    thumbs = {info.name for info in ctx.blobs.list(layout.folder + "thumbs/")}
    size = ctx.settings.gallery_page_size
    written: set[str] = set()
    problems = run.counts.failed + run.counts.invalid
    # The problem cards met on the index pages are kept for their own pages when they are few, so the input
    # is not parsed (and the manifest read) a second time for them: a third of the settle of a big run.
    kept: list[gallery.Card] | None = [] if problems <= _PROBLEMS_KEPT else None

    def every(card: gallery.Card) -> bool:
        if kept is not None and card.status != "succeeded":
            kept.append(card)
        return True

    def is_problem(card: gallery.Card) -> bool:
        return card.status != "succeeded"

    series: list[tuple[str, Callable[[gallery.Card], bool], int]] = [
        ("index", every, run.counts.lines),
        ("problems", is_problem, problems),
    ]
    for stem, keep, expected in series:
        if stem == "problems" and not expected:
            continue
        if stem == "problems" and kept is not None:
            cards: Iterator[gallery.Card] = iter(kept)
        else:
            cards = _cards(ctx, layout, thumbs, lines, keep)
        for name, page in gallery.render_pages(cards, summary, stem=stem, page_size=size, expected=expected):
            ctx.blobs.write_bytes(layout.folder + name, page.encode(), content_type=HTML)
            written.add(name)
    for prefix in ("page-", "problems"):
        for info in list(ctx.blobs.list(layout.folder + prefix)):
            relative = info.name[len(layout.folder) :]
            if gallery.is_page_name(relative) and relative not in written:
                ctx.blobs.delete(info.name)
    log.info("gallery: %d page(s)", len(written), extra={"run_id": run.run_id})


# Read-modify-writes of the runs index that may lose to another run's at once before this one gives up
# (each loss means another writer made progress; the page is written again at the next run's end anyway).
_INDEX_ATTEMPTS = 20


def list_run(ctx: Context, run: Run) -> None:
    """Put the run's row into the index of all runs (``<outputs>/runs.jsonl``) and rewrite the page of all
    runs (``<outputs>/index.html``, ``runs-N.html``) from it. The index object is replaced only over the
    generation read, so two runs ending at once both keep their rows; no run's summary is read."""
    prefix = ctx.settings.output_prefix
    name = prefix + runs_page.INDEX_OBJECT
    new = runs_page.row(run)
    for _ in range(_INDEX_ATTEMPTS):
        info = ctx.blobs.stat(name)
        try:
            current = b"" if info is None else ctx.blobs.read_bytes(name)
        except NotFoundError:
            continue
        data, rows = runs_page.upsert(current, new)
        try:
            if info is None:
                if not ctx.blobs.write_bytes(name, data, content_type="application/jsonl", if_absent=True):
                    continue
            else:
                ctx.blobs.write_bytes(
                    name, data, content_type="application/jsonl", if_generation=info.generation
                )
        except PreconditionFailedError:
            continue
        for page, text in runs_page.render_pages(rows, total=len(rows)):
            ctx.blobs.write_bytes(prefix + page, text.encode(), content_type=HTML)
        return
    raise TransientError(
        f"{name}: {_INDEX_ATTEMPTS} other writers came first; the run's row is written again later"
    )
