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

Time: a re-dropped catalogue of 100,000 lines takes a store read and two server-side copies per line. They
are batched per block (entries and claims read a few hundred a call, copies sent 100 to a Cloud Storage
batch request, 16 requests at once), which fits such a file in one invocation; a bigger file or a slower
service may not fit. So the decision is made in blocks of
``DECIDE_BLOCK_LINES`` input lines, each block's served outcomes written as a part when it is whole; between
blocks the deadline is checked, and ``OutOfTimeError`` hands the rest to the next tick, which starts after
the last whole part.

In flight: a request paid for by another unfinished run is not sent again. A line that is not served
claims its fingerprint as in flight (``InFlight``, create-if-absent, so of two runs submitting the same
line at once one becomes the payer); when another unfinished run, created before this one, holds it, the
line waits (kept in ``waiting.jsonl`` with that run's id) instead of being sent. Waiting only on older
runs keeps two runs deciding at once from waiting on each other. ``usecases.inflight`` resolves the
waiting lines once their payer has ended: served from its image like a hit, else sent by this run. Settle
releases the run's claims after ``fill``, so a waiting run that finds no claim finds the image.

An entry is used only if its image is still the very object that was recorded (same generation and size:
never one half-written, rewritten or deleted since) and younger than ``PROMPTDROP_CACHE_DAYS``; an unusable
entry is replaced by the next run that pays for the same request.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import orjson

from promptdrop import gallery
from promptdrop.cost import CostTally
from promptdrop.errors import NotFoundError, OutOfTimeError, PermanentError
from promptdrop.fingerprint import ImageDigest, maker_identity, request_fingerprint
from promptdrop.outcomes import Outcome, Usage
from promptdrop.ports import COPY_BATCH, BlobInfo, CopyOrder, InFlight, PaidImage
from promptdrop.prompts import PromptRequest, fingerprint_form
from promptdrop.records import Run
from promptdrop.usecases.context import Context
from promptdrop.usecases.leases import renew
from promptdrop.usecases.workfiles import read_records, write_records

log = logging.getLogger(__name__)

_DAY = 86_400.0
# Entries written (or claims released) per batched call of settle's fill, the run's lease renewed between
# two: Firestore's limit of writes per batch.
FILL_BLOCK = 500
_HASH_BLOCK = 1 << 20
# Input lines per part of the decision: big enough that a part is a few seconds of work, small enough that
# a cut-off decision redoes little.
DECIDE_BLOCK_LINES = 2000
# Copy calls at once (each a batch of up to ``COPY_BATCH`` server-side copies in Cloud Storage): a block's
# 2,000 images and 2,000 thumbnails in three rounds, not in 4,000 round trips.
_COPY_CALLS = 16


def enabled(ctx: Context, run: Run) -> bool:
    """Whether this run's lines may be served from the cache (``PROMPTDROP_CACHE``, ``run --fresh``)."""
    return ctx.settings.cache and not run.fresh


class ImageDigests:
    """Reference images by content, each object hashed once per generation (a run may reuse one often).

    The generation hashed is kept (``pinned``): submission reads the image it sends at that generation, so
    the bytes sent are the bytes the fingerprint names, never a version written in between.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._known: dict[tuple[str, str], ImageDigest] = {}
        self._pinned: dict[str, str] = {}  # object name -> the generation hashed last
        settings = ctx.settings
        # Who makes the image, per lane (the now lane may have an endpoint of its own).
        self._makers: dict[str, str] = {
            "batch": maker_identity(settings.backend, settings.gemini_base_url),
            "now": maker_identity(settings.backend, settings.now_base_url or settings.gemini_base_url),
        }
        if settings.backend == "vertex":  # both lanes go to the one Vertex AI endpoint
            vertex = maker_identity(settings.backend, settings.vertex_base_url)
            self._makers = {"batch": vertex, "now": vertex}

    def of(self, name: str) -> ImageDigest | None:
        """None when the object does not exist (submission then refuses the line)."""
        info = self.ctx.blobs.stat(name)
        if info is None:
            return None
        known = self._known.get((name, info.generation))
        if known is not None:
            self._pinned[name] = info.generation
            return known
        digest = hashlib.sha256()
        try:
            # That generation: the bytes hashed are those of the generation recorded beside them.
            with self.ctx.blobs.open_read(name, generation=info.generation) as stream:
                while block := stream.read(_HASH_BLOCK):
                    digest.update(block)
        except NotFoundError:
            return None  # overwritten or deleted since the stat: hashed again by the next look
        # The MIME type as submission sends it (the object's content type, else guessed from the name).
        mime = info.content_type or mimetypes.guess_type(name)[0] or ""
        self._known[(name, info.generation)] = ImageDigest(digest.hexdigest(), mime)
        self._pinned[name] = info.generation
        return self._known[(name, info.generation)]

    def pinned(self, name: str) -> str | None:
        """The generation of ``name`` that ``of`` hashed last, if it hashed one."""
        return self._pinned.get(name)

    def maker(self, line: PromptRequest) -> str:
        """Who makes this line's image (``fingerprint.maker_identity``), by the lane it runs in."""
        return self._makers[line.lane]

    def fingerprint(self, line: PromptRequest, model: str) -> str | None:
        """The line's request fingerprint on ``model``; None when a reference image is missing (submission
        refuses the line) or the request names a Files API file, whose bytes are not ours to hash: such a
        line is always sent, never served or recorded."""
        if line.api_files:
            return None
        images = [self.of(ref) for ref in line.image_refs]
        if any(image is None for image in images):
            return None
        present = [image for image in images if image is not None]
        return request_fingerprint(model, fingerprint_form(line), present, maker=self.maker(line))


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
class Waiting:
    """A line that waits for another unfinished run paying for the same request (``payer``)."""

    key: str
    model: str
    payer: InFlight

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "model": self.model, "payer": self.payer.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Waiting:
        return cls(key=str(data["key"]), model=str(data["model"]), payer=InFlight.from_json(data["payer"]))


def read_waiting(ctx: Context, name: str) -> list[Waiting] | None:
    records = read_records(ctx, name)
    return None if records is None else [Waiting.from_json(record) for record in records]


def unfinished(ctx: Context, run_id: str) -> bool:
    run = ctx.store.get_run(run_id)
    return run is not None and not run.state.terminal


def claim_many(ctx: Context, markers: Sequence[InFlight]) -> list[InFlight]:
    """``claim`` of each marker, in order. The holders are read in batches first (``in_flight_many``): a
    request held by this run or by an unfinished one is answered from that read; those nobody holds are
    claimed in batched creates (``claim_in_flight_many``); only those held by a run that has ended take
    calls of their own."""
    if not markers:
        return []
    held = ctx.paid_images.in_flight_many(marker.fingerprint for marker in markers)
    live: dict[str, bool] = {}
    holders = [held.get(m.fingerprint) for m in markers]
    to_claim = [i for i, holder in enumerate(holders) if not _live_holder(ctx, markers[i], holder, live)]
    claimed = ctx.paid_images.claim_in_flight_many([markers[index] for index in to_claim])
    for index, holder in zip(to_claim, claimed, strict=True):
        holders[index] = holder
    # Held by a run that has ended (a crash before its settle released them): taken over, many at once.
    ended = [i for i in to_claim if not _live_holder(ctx, markers[i], holders[i], live)]
    with ThreadPoolExecutor(
        max(1, ctx.settings.upload_concurrency), thread_name_prefix="promptdrop-cache"
    ) as pool:
        for index, holder in zip(
            ended, pool.map(lambda i: claim(ctx, markers[i], holders[i]), ended), strict=True
        ):
            holders[index] = holder
    return [holder for holder in holders if holder is not None]


def _live_holder(ctx: Context, marker: InFlight, holder: InFlight | None, live: dict[str, bool]) -> bool:
    """Whether ``holder`` is this run or an unfinished one (each run looked up once)."""
    if holder is None:
        return False
    if holder.run_id not in live:
        live[holder.run_id] = holder.run_id == marker.run_id or unfinished(ctx, holder.run_id)
    return live[holder.run_id]


def claim(ctx: Context, marker: InFlight, holder: InFlight | None = None) -> InFlight:
    """Claim ``marker``'s request as in flight for its run; returns who holds it now. A claim left by a run
    that has ended (a crash before its settle released it) is taken over. ``holder``: who a claim just
    made found holding it."""
    holder = holder or ctx.paid_images.claim_in_flight(marker)
    for _ in range(3):  # each turn either wins or finds a newer holder
        if holder.run_id == marker.run_id or unfinished(ctx, holder.run_id):
            break
        holder = ctx.paid_images.claim_in_flight(marker, replacing=holder)
    return holder


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
        self.waits: list[Waiting] = []  # lines that wait for another run paying for the same request
        self.saved = CostTally(ctx.settings.backend)
        self._submitted: list[_Submitted] = []
        self._decided = _read_outcomes(ctx, self.layout.cached_outcomes)  # an earlier try's decision
        self._reused = self._decided is not None
        self._waiting = (
            {w.key: w for w in (read_waiting(ctx, self.layout.waiting) or [])} if self._reused else {}
        )
        self._payers: dict[str, bool] = {}  # run id -> whether lines of this run may wait for it

    def prepare(self, lines: Iterable[tuple[PromptRequest, str]], deadline: float | None = None) -> None:
        """Decide which lines are served, a block of ``DECIDE_BLOCK_LINES`` input lines at a time: the
        block's entries read in batches, its images copied in batch requests, many at a time
        (``_decide_block``). Called before the lines are chunked; an earlier try's decision is reused as it
        is, and a paused one (``OutOfTimeError``) goes on from its last whole block (the last block is kept
        too: a submission paused after the decision redoes none)."""
        if self._decided is not None:
            return
        self._decided = {}
        if not enabled(self.ctx, self.run):
            return
        block = self._read_parts()
        pending: list[tuple[PromptRequest, str]] = []  # the block's lines: the input is streamed
        with ThreadPoolExecutor(_copy_calls(self.ctx), thread_name_prefix="promptdrop-cache") as pool:
            current = block
            for line, model in lines:
                line_block = (line.line - 1) // DECIDE_BLOCK_LINES
                if line_block < block:
                    continue  # decided by an earlier call
                while line_block > current:  # the block is whole: record it, then see if time is left
                    self._write_part(current, self._decide_block(pool, pending))
                    pending = []
                    current += 1
                    if deadline is not None and self.ctx.clock() >= deadline:
                        raise OutOfTimeError(f"cache decision paused before input line {line.line}")
                if not line.fresh:
                    pending.append((line, model))
            self._write_part(current, self._decide_block(pool, pending))

    def _decide_block(
        self, pool: ThreadPoolExecutor, lines: list[tuple[PromptRequest, str]]
    ) -> list[Outcome | Waiting]:
        """One block: each line served (a copy), waiting for an older unfinished run that sent the same
        request, or left out (sent by this run, its request claimed as in flight). Batched: the entries and
        the claims are read a few hundred a call, the copies made in batch requests."""
        if not lines:
            return []
        renew(self.ctx, self.run.run_id)  # a long file: keep the run ours while it is decided
        if any(line.image_refs for line, _ in lines):  # reference images are read (stat, hash): many at once
            prints = list(pool.map(lambda item: self.digests.fingerprint(*item), lines))
        else:
            prints = [self.digests.fingerprint(line, model) for line, model in lines]
        wanted = {line.key: fp for (line, _), fp in zip(lines, prints, strict=True) if fp is not None}
        served = self._serve_many(pool, wanted)
        missed = {key: fp for key, fp in wanted.items() if key not in served}
        markers = [InFlight(fp, self.run.run_id, key) for key, fp in missed.items()]
        holders = dict(zip(missed, claim_many(self.ctx, markers), strict=True))
        # A payer that settled between the look-up and the claim recorded its image first.
        ours = {key: missed[key] for key, holder in holders.items() if holder.run_id == self.run.run_id}
        late = self._serve_many(pool, ours)
        if released := [marker for marker in markers if marker.key in late and holders[marker.key] == marker]:
            self.ctx.paid_images.release_in_flight_many(released)
        served.update(late)
        decided: list[Outcome | Waiting] = []
        models = {line.key: model for line, model in lines}
        for key in wanted:
            holder = holders.get(key)
            if key in served:
                decided.append(served[key])
            elif (
                holder is not None and holder.run_id != self.run.run_id and self._may_wait_for(holder.run_id)
            ):
                decided.append(Waiting(key, models[key], holder))
        return decided

    def _read_parts(self) -> int:
        """Take the outcomes of the blocks an earlier call decided; returns the first block left to decide."""
        block = 0
        while (part := read_records(self.ctx, self.layout.cache_decided_part(block))) is not None:
            self._keep(
                Waiting.from_json(record["waits"]) if "waits" in record else Outcome.from_json(record)
                for record in part
            )
            block += 1
        if block:
            log.info("cache decision goes on after %d block(s)", block, extra=self._log)
        return block

    def _write_part(self, block: int, decided: list[Outcome | Waiting]) -> None:
        records = ({"waits": d.to_json()} if isinstance(d, Waiting) else d.to_json() for d in decided)
        write_records(self.ctx, self.layout.cache_decided_part(block), records)
        self._keep(decided)
        decided.clear()

    def _keep(self, decided: Iterable[Outcome | Waiting]) -> None:
        assert self._decided is not None
        for item in decided:
            if isinstance(item, Waiting):
                self._waiting[item.key] = item
            else:
                self._decided[item.key] = item

    def serve(self, line: PromptRequest, model: str) -> bool:
        """True when the line is served from the cache or waits for another run paying for it (decided by
        ``prepare``): it is not to be submitted."""
        if self._decided and line.key in self._decided:
            return self._served(self._decided[line.key])
        if line.key in self._waiting:
            self.waits.append(self._waiting[line.key])
            return True
        if not self.ctx.settings.cache:
            return False  # nothing will be recorded: no fingerprint needed
        fingerprint = self.digests.fingerprint(line, model)
        if fingerprint is not None:  # None: a missing reference image (refused), or a Files API file
            self._submitted.append(_Submitted(line.key, fingerprint, line.fresh or self.run.fresh))
        return False

    def _may_wait_for(self, run_id: str) -> bool:
        """Only for an unfinished run created before this one: two runs never wait for each other."""
        if run_id not in self._payers:
            payer = self.ctx.store.get_run(run_id)
            self._payers[run_id] = (
                payer is not None
                and not payer.state.terminal
                and (payer.created_at, payer.run_id) < (self.run.created_at, self.run.run_id)
            )
        return self._payers[run_id]

    def _served(self, outcome: Outcome) -> bool:
        self.served.append(outcome)
        if outcome.usage is not None and outcome.model is not None:
            self.saved.add_usage(outcome.model, Usage(**outcome.usage))
        return True

    def serve_paid(self, wanted: Mapping[str, str]) -> dict[str, Outcome]:
        """The lines of ``wanted`` (key -> fingerprint) served from the images paid for them, where one is
        usable (waiting lines whose payer has ended); a line left out is to be sent."""
        with ThreadPoolExecutor(_copy_calls(self.ctx), thread_name_prefix="promptdrop-cache") as pool:
            return self._serve_many(pool, wanted)

    def _serve_many(self, pool: ThreadPoolExecutor, wanted: Mapping[str, str]) -> dict[str, Outcome]:
        """Serve the lines ``wanted`` (key -> fingerprint) whose entry is usable: the entries read in
        batches, each image copied at the generation recorded (that generation or nothing: an image
        rewritten or deleted since is never served, so no stat is needed first), then the thumbnails of
        those served."""
        if not wanted:
            return {}
        entries = self.ctx.paid_images.get_many(wanted.values())
        now, days = self.ctx.clock(), self.ctx.settings.cache_days
        hits = {
            key: entries[fp]
            for key, fp in wanted.items()
            if fp in entries and now - entries[fp].created_at <= days * _DAY
        }
        images = {
            key: self.layout.image(key, PurePosixPath(entry.image).suffix.removeprefix("."))
            for key, entry in hits.items()
        }
        orders = [CopyOrder(entry.image, images[key], entry.generation) for key, entry in hits.items()]
        copied = dict(zip(hits, _copy_many(self.ctx, pool, orders), strict=True))
        for key, done in copied.items():
            if not done:
                log.info("cached image %s went away; submitting", hits[key].image, extra=self._log)
        if self.ctx.settings.thumbnails:  # the gallery's thumbnails too, when the paying runs made them
            thumbs = (self._thumbnail_order(hits[key].image, images[key]) for key in hits if copied[key])
            _copy_many(self.ctx, pool, [order for order in thumbs if order is not None])
        return {key: self._outcome(key, hits[key], images[key]) for key in hits if copied[key]}

    def _thumbnail_order(self, source_image: str, image: str) -> CopyOrder | None:
        """The copy of the paying run's thumbnail of ``source_image`` (else the card shows the image)."""
        source = gallery.thumb_name(_run_folder(source_image), source_image)
        target = gallery.thumb_name(self.layout.folder, image)
        return None if source is None or target is None else CopyOrder(source, target)

    @staticmethod
    def _outcome(key: str, entry: PaidImage, image: str) -> Outcome:
        return Outcome(
            key=key,
            status="succeeded",
            attempt=0,
            model=entry.model,
            image=image,
            mime_type=entry.mime_type,
            bytes=entry.size,
            usage=dict(entry.usage) if entry.usage is not None else None,
            cached_from={"run_id": entry.run_id, "key": entry.key},
        )

    @property
    def _log(self) -> dict[str, str]:
        return {"run_id": self.run.run_id}

    def finish(self) -> None:
        """Record the decision (before any job is recorded) and the fingerprints of the submitted lines."""
        if not self._reused:
            # The waiting lines first: a decision found whole is reused with them.
            write_records(self.ctx, self.layout.waiting, (w.to_json() for w in self.waits))
            write_records(self.ctx, self.layout.cached_outcomes, (o.to_json() for o in self.served))
        submitted = ({"key": s.key, "fingerprint": s.fingerprint, "fresh": s.fresh} for s in self._submitted)
        write_records(self.ctx, self.layout.fingerprints, submitted)
        if self.served:
            log.info("%d line(s) served from the pay-once cache", len(self.served), extra=self._log)
        if self.waits:
            log.info("%d line(s) wait for runs paying for them now", len(self.waits), extra=self._log)


def _copy_calls(ctx: Context) -> int:
    """Copy calls at once: ``_COPY_CALLS``, fewer when ``PROMPTDROP_UPLOAD_CONCURRENCY`` allows fewer calls."""
    return max(1, min(_COPY_CALLS, ctx.settings.upload_concurrency))


def _copy_many(ctx: Context, pool: ThreadPoolExecutor, orders: Sequence[CopyOrder]) -> list[bool]:
    """``BlobStore.copy_many`` of ``orders``, ``COPY_BATCH`` a call, as many calls at once as ``pool`` runs."""
    batches = [orders[start : start + COPY_BATCH] for start in range(0, len(orders), COPY_BATCH)]
    done: list[bool] = []
    for result in pool.map(lambda batch: ctx.blobs.copy_many(batch, share=True), batches):
        done += result
    return done


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
    created ``FILL_BLOCK`` at a time in batched writes (``put_many``), the run's lease renewed between
    blocks; then the claims are released the same way, and the fingerprints file goes, so a settle that runs again does not record them again. A transient failure is
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
        ready = [o for o in paid if o.image in images and o.model is not None]
        for start in range(0, len(ready), FILL_BLOCK):
            renew(ctx, run.run_id)
            # Entries are built a block at a time: a settle of 100,000 lines holds 500 of them, not all.
            block = [
                (
                    _entry(
                        ctx, run, outcome, images[outcome.image or ""], submitted[outcome.key]["fingerprint"]
                    ),
                    outcome,
                )
                for outcome in ready[start : start + FILL_BLOCK]
            ]
            created = ctx.paid_images.put_many([entry for entry, _ in block])
            written += sum(created)
            stored = [
                (entry, bool(submitted[outcome.key].get("fresh")))
                for (entry, outcome), done in zip(block, created, strict=True)
                if not done
            ]
            written += _replace_stored(ctx, stored)
    except PermanentError as exc:
        log.warning("the pay-once cache was not filled: %s", exc, extra={"run_id": run.run_id})
    _release(ctx, run, submitted.values())
    ctx.blobs.delete(layout.fingerprints)
    return written


def _release(ctx: Context, run: Run, submitted: Iterable[Mapping[str, Any]]) -> None:
    """The run's requests are no longer in flight: after ``fill``, so a run waiting for one of them that
    finds no claim finds its image (or knows there is none). Released ``FILL_BLOCK`` at a time, in batches."""
    if not enabled(ctx, run):
        return
    markers = [
        InFlight(item["fingerprint"], run.run_id, item["key"]) for item in submitted if not item.get("fresh")
    ]
    try:
        for start in range(0, len(markers), FILL_BLOCK):
            renew(ctx, run.run_id)
            ctx.paid_images.release_in_flight_many(markers[start : start + FILL_BLOCK])
    except PermanentError as exc:  # a claim left behind is taken over once this run has ended
        log.warning("in-flight claims not released: %s", exc, extra={"run_id": run.run_id})


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


def _replace_stored(ctx: Context, stored: Sequence[tuple[PaidImage, bool]]) -> int:
    """The entries ``put_many`` found another entry for (with whether the image is a fresh take): each
    replaces an entry that is unusable, or any other when it is a fresh take; returns how many it wrote.
    The usual case is none; after a settle cut off mid-fill, the entries it wrote, read in batches."""
    if not stored:
        return 0
    current = ctx.paid_images.get_many(entry.fingerprint for entry, _ in stored)
    written = 0
    for entry, newest in stored:
        found = current.get(entry.fingerprint)
        if found == entry:
            continue  # recorded by an earlier settle of this run
        if found is None or newest or not usable(ctx, found):
            written += ctx.paid_images.put(entry, replacing=found)
    return written
