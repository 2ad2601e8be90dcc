"""Pay once per image: lines whose request was paid for before are served from that image, not submitted.

Submission asks ``CacheSplit.serve`` of every valid line (after its model is chosen): a line whose request
fingerprint (``promptdrop.fingerprint``) names a usable ``PaidImage`` gets that image copied inside the
bucket to its own image name (a server-side rewrite in Cloud Storage) and an outcome ``succeeded`` with
``cached_from``; every other line is submitted, its fingerprint kept in the run's scratch. Settle calls
``fill`` once the run's images are all written: each line that succeeded records its image under its
fingerprint (create-if-absent, so of two runs with the same new line the first to settle wins).

Crash safety: the decision is made once per run. The images are copied first, then the served outcomes
are written whole (``cached-outcomes.jsonl``) before any job is recorded; a submission cut off before that
file exists decides again from where it stopped (copies are idempotent), one that finds it reuses it, so the
chunks stay the same and every line still ends in exactly one manifest entry (settle joins on key).

Time: a re-dropped catalogue of 100,000 lines takes a store read and two or three Cloud Storage calls per
line, more than one function invocation (540 s) may hold. So the decision is made in blocks of
``DECIDE_BLOCK_LINES`` input lines, each block's served outcomes written as a part when it is whole; between
blocks the deadline is checked, and ``OutOfTimeError`` hands the rest to the next tick, which starts after
the last whole part.

An entry is used only if its image is still the very object that was recorded (same generation and size:
never one half-written, rewritten or deleted since) and younger than ``PROMPTDROP_CACHE_DAYS``; an unusable
entry is replaced by the next run that pays for the same request.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import orjson

from promptdrop import gallery
from promptdrop.cost import CostTally
from promptdrop.errors import NotFoundError, OutOfTimeError, PermanentError, PreconditionFailedError
from promptdrop.fingerprint import ImageDigest, request_fingerprint
from promptdrop.outcomes import Outcome, Usage
from promptdrop.ports import BlobInfo, PaidImage
from promptdrop.prompts import PromptRequest
from promptdrop.records import Run
from promptdrop.usecases.context import Context
from promptdrop.usecases.leases import renew
from promptdrop.usecases.workfiles import read_records, write_records

log = logging.getLogger(__name__)

_DAY = 86_400.0
# Lines (or entries) per worker between two renewals of the run's lease.
_FILL_ROUND = 16
_HASH_BLOCK = 1 << 20
# Input lines per part of the decision: big enough that a part is a few seconds of work, small enough that
# a cut-off decision redoes little.
DECIDE_BLOCK_LINES = 2000


def enabled(ctx: Context, run: Run) -> bool:
    """Whether this run's lines may be served from the cache (``PROMPTDROP_CACHE``, ``run --fresh``)."""
    return ctx.settings.cache and not run.fresh


class ImageDigests:
    """Reference images by content, each object hashed once per generation (a run may reuse one often)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._known: dict[tuple[str, str], ImageDigest] = {}

    def of(self, name: str) -> ImageDigest | None:
        """None when the object does not exist (submission then refuses the line)."""
        info = self.ctx.blobs.stat(name)
        if info is None:
            return None
        known = self._known.get((name, info.generation))
        if known is not None:
            return known
        digest = hashlib.sha256()
        try:
            with self.ctx.blobs.open_read(name) as stream:
                while block := stream.read(_HASH_BLOCK):
                    digest.update(block)
        except NotFoundError:
            return None
        # The MIME type as submission sends it (the object's content type, else guessed from the name).
        mime = info.content_type or mimetypes.guess_type(name)[0] or ""
        self._known[(name, info.generation)] = ImageDigest(digest.hexdigest(), mime)
        return self._known[(name, info.generation)]

    def fingerprint(self, line: PromptRequest, model: str) -> str | None:
        """The line's request fingerprint on ``model``; None when a reference image is missing."""
        images = [self.of(ref) for ref in line.image_refs]
        if any(image is None for image in images):
            return None
        return request_fingerprint(model, line.request, [image for image in images if image is not None])


def usable(ctx: Context, entry: PaidImage) -> bool:
    """The entry's image is the object recorded (same generation and size) and within the retention."""
    if ctx.clock() - entry.created_at > ctx.settings.cache_days * _DAY:
        return False
    info = ctx.blobs.stat(entry.image)
    return info is not None and info.generation == entry.generation and info.size == entry.size


def lookup(ctx: Context, fingerprint: str) -> PaidImage | None:
    """The usable paid image for ``fingerprint``, if there is one."""
    entry = ctx.paid_images.get(fingerprint)
    return entry if entry is not None and usable(ctx, entry) else None


def would_serve(ctx: Context, digests: ImageDigests, line: PromptRequest, model: str, *, fresh: bool) -> bool:
    """Whether the cache holds a usable image for this line now (`run --dry-run`); nothing is copied."""
    if not ctx.settings.cache or fresh or line.fresh:
        return False
    fingerprint = digests.fingerprint(line, model)
    return fingerprint is not None and lookup(ctx, fingerprint) is not None


@dataclass(frozen=True, slots=True)
class _Submitted:
    key: str
    fingerprint: str
    fresh: bool


class CacheSplit:
    """Splits one run's valid lines into those served from the cache and those to submit."""

    def __init__(self, ctx: Context, run: Run) -> None:
        self.ctx, self.run = ctx, run
        self.layout = ctx.layout(run.run_id)
        self.digests = ImageDigests(ctx)
        self.served: list[Outcome] = []
        self.saved = CostTally()
        self._submitted: list[_Submitted] = []
        self._decided = _read_outcomes(ctx, self.layout.cached_outcomes)  # an earlier try's decision
        self._reused = self._decided is not None

    def prepare(self, lines: Iterable[tuple[PromptRequest, str]], deadline: float | None = None) -> None:
        """Decide which lines are served: look each up and copy the images of those served,
        ``PROMPTDROP_UPLOAD_CONCURRENCY`` lines at a time (each takes a few storage and store calls, which a
        long cached file would otherwise wait for one by one). Called before the lines are chunked; an
        earlier try's decision is reused as it is, and a paused one (``OutOfTimeError``) goes on from its
        last whole block (the last block is kept too: a submission paused after the decision redoes none)."""
        if self._decided is not None:
            return
        self._decided = {}
        if not enabled(self.ctx, self.run):
            return
        block = self._read_parts()
        workers = max(1, self.ctx.settings.upload_concurrency)
        with ThreadPoolExecutor(workers, thread_name_prefix="promptdrop-cache") as pool:
            window: deque[Future[Outcome | None]] = deque()  # bounded: the input is streamed
            in_block: list[Outcome] = []

            def drain(until: int) -> None:
                while window and (len(window) > until or window[0].done()):
                    outcome = window.popleft().result()
                    if outcome is not None:
                        in_block.append(outcome)

            for number, (line, model) in enumerate(lines, start=1):
                line_block = (line.line - 1) // DECIDE_BLOCK_LINES
                if line_block < block:
                    continue  # decided by an earlier call
                while line_block > block:  # the block is whole: record it, then see if time is left
                    drain(0)
                    self._write_part(block, in_block)
                    block += 1
                    if deadline is not None and self.ctx.clock() >= deadline:
                        raise OutOfTimeError(f"cache decision paused before input line {line.line}")
                if number % (_FILL_ROUND * workers) == 0:
                    renew(self.ctx, self.run.run_id)  # a long file: keep the run ours while it is decided
                if not line.fresh:
                    window.append(pool.submit(self._serve_from_cache, line, model))
                drain(4 * workers - 1)
            drain(0)
            self._write_part(block, in_block)

    def _read_parts(self) -> int:
        """Take the outcomes of the blocks an earlier call decided; returns the first block left to decide."""
        block = 0
        while (part := _read_outcomes(self.ctx, self.layout.cache_decided_part(block))) is not None:
            self._keep(part.values())
            block += 1
        if block:
            log.info("cache decision goes on after %d block(s)", block, extra=self._log)
        return block

    def _write_part(self, block: int, outcomes: list[Outcome]) -> None:
        write_records(self.ctx, self.layout.cache_decided_part(block), (o.to_json() for o in outcomes))
        self._keep(outcomes)
        outcomes.clear()

    def _keep(self, outcomes: Iterable[Outcome]) -> None:
        assert self._decided is not None
        for outcome in outcomes:
            self._decided[outcome.key] = outcome

    def serve(self, line: PromptRequest, model: str) -> bool:
        """True when the line is served from the cache (decided by ``prepare``): it is not to be submitted."""
        if self._decided and line.key in self._decided:
            return self._served(self._decided[line.key])
        if not self.ctx.settings.cache:
            return False  # nothing will be recorded: no fingerprint needed
        fingerprint = self.digests.fingerprint(line, model)
        if fingerprint is not None:  # None: a missing reference image, which submission refuses
            self._submitted.append(_Submitted(line.key, fingerprint, line.fresh or self.run.fresh))
        return False

    def _serve_from_cache(self, line: PromptRequest, model: str) -> Outcome | None:
        fingerprint = self.digests.fingerprint(line, model)
        return None if fingerprint is None else self._copy(line, fingerprint)

    def _served(self, outcome: Outcome) -> bool:
        self.served.append(outcome)
        if outcome.usage is not None and outcome.model is not None:
            self.saved.add_usage(outcome.model, Usage(**outcome.usage))
        return True

    def _copy(self, line: PromptRequest, fingerprint: str) -> Outcome | None:
        entry = lookup(self.ctx, fingerprint)
        if entry is None:
            return None
        extension = PurePosixPath(entry.image).suffix.removeprefix(".")
        destination = self.layout.image(line.key, extension)
        try:
            # That generation or nothing: an image rewritten or deleted since the check is never served.
            self.ctx.blobs.copy(entry.image, destination, if_source_generation=entry.generation, share=True)
        except (NotFoundError, PreconditionFailedError) as exc:
            log.info("cached image %s went away (%s); submitting", entry.image, exc, extra=self._log)
            return None
        self._copy_thumbnail(entry.image, destination)
        return Outcome(
            key=line.key,
            status="succeeded",
            attempt=0,
            model=entry.model,
            image=destination,
            mime_type=entry.mime_type,
            bytes=entry.size,
            usage=dict(entry.usage) if entry.usage is not None else None,
            cached_from={"run_id": entry.run_id, "key": entry.key},
        )

    def _copy_thumbnail(self, source_image: str, image: str) -> None:
        """The gallery's thumbnail too, when the paying run made one (else the card shows the image)."""
        if not self.ctx.settings.thumbnails:
            return
        source = gallery.thumb_name(_run_folder(source_image), source_image)
        target = gallery.thumb_name(self.layout.folder, image)
        if source is None or target is None:
            return
        with contextlib.suppress(NotFoundError, PreconditionFailedError):
            self.ctx.blobs.copy(source, target, share=True)

    @property
    def _log(self) -> dict[str, str]:
        return {"run_id": self.run.run_id}

    def finish(self) -> None:
        """Record the decision (before any job is recorded) and the fingerprints of the submitted lines."""
        if not self._reused:
            write_records(self.ctx, self.layout.cached_outcomes, (o.to_json() for o in self.served))
        submitted = ({"key": s.key, "fingerprint": s.fingerprint, "fresh": s.fresh} for s in self._submitted)
        write_records(self.ctx, self.layout.fingerprints, submitted)
        if self.served:
            log.info("%d line(s) served from the pay-once cache", len(self.served), extra=self._log)


def _run_folder(image: str) -> str:
    """``outputs/<run>/images/<key>.png`` -> ``outputs/<run>/``."""
    return str(PurePosixPath(image).parent.parent) + "/"


def _read_outcomes(ctx: Context, name: str) -> dict[str, Outcome] | None:
    records = read_records(ctx, name)
    if records is None:
        return None
    outcomes = (Outcome.from_json(record) for record in records)
    return {outcome.key: outcome for outcome in outcomes}


def fill(ctx: Context, run: Run, outcomes: Mapping[str, Outcome]) -> int:
    """Record the images this run paid for under their fingerprints; returns how many entries it wrote.

    Called by settle, after every image of the run is written whole, before the run ends. The entries are
    written ``PROMPTDROP_UPLOAD_CONCURRENCY`` at a time, the run's lease renewed between rounds; then the
    fingerprints file goes, so a settle that runs again does not record them again. A transient failure is
    raised (the next tick settles again and fills what is missing); a permanent one is logged and the run
    ends anyway (the next run simply pays).
    """
    layout = ctx.layout(run.run_id)
    try:
        data = ctx.blobs.read_bytes(layout.fingerprints)
    except NotFoundError:
        return 0  # nothing submitted, the cache off, or recorded by an earlier settle
    submitted = {item["key"]: item for item in map(orjson.loads, data.splitlines()) if item}
    paid = [
        o
        for o in outcomes.values()
        if o.status == "succeeded" and o.image and o.cached_from is None and o.key in submitted
    ]
    written = 0
    try:
        images = {info.name: info for info in ctx.blobs.list(layout.folder + "images/")} if paid else {}
        entries = [
            (_entry(ctx, run, outcome, images[outcome.image], submitted[outcome.key]["fingerprint"]), outcome)
            for outcome in paid
            if outcome.image in images and outcome.model is not None
        ]
        workers = max(1, ctx.settings.upload_concurrency)
        with ThreadPoolExecutor(workers, thread_name_prefix="promptdrop-cache") as pool:
            for start in range(0, len(entries), _FILL_ROUND * workers):
                renew(ctx, run.run_id)
                round_ = entries[start : start + _FILL_ROUND * workers]
                written += sum(
                    pool.map(
                        lambda item: _record(ctx, item[0], newest=bool(submitted[item[1].key].get("fresh"))),
                        round_,
                    )
                )
    except PermanentError as exc:
        log.warning("the pay-once cache was not filled: %s", exc, extra={"run_id": run.run_id})
    ctx.blobs.delete(layout.fingerprints)
    return written


def _entry(ctx: Context, run: Run, outcome: Outcome, info: BlobInfo, fingerprint: str) -> PaidImage:
    assert outcome.model is not None
    return PaidImage(
        fingerprint=fingerprint,
        image=info.name,
        generation=info.generation,
        size=info.size,
        mime_type=outcome.mime_type,
        model=outcome.model,
        usage=outcome.usage,
        run_id=run.run_id,
        key=outcome.key,
        created_at=info.updated or ctx.clock(),
    )


def _record(ctx: Context, entry: PaidImage, *, newest: bool) -> int:
    """Create the entry; replace one that is unusable, or any other when this image is a fresh take."""
    if ctx.paid_images.put(entry):
        return 1
    current = ctx.paid_images.get(entry.fingerprint)
    if current == entry:
        return 0  # recorded by an earlier settle of this run
    if current is None or newest or not usable(ctx, current):
        return int(ctx.paid_images.put(entry, replacing=current))
    return 0
