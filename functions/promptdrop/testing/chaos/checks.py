"""What a chaos seed must leave behind, judged from a snapshot of the bucket, the store, the emulator and logs.

Pure: ``judge(snapshot)`` returns the misses, each naming the check it failed and the evidence.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED"})
TRACEBACK = "Traceback (most recent call last)"
SCRATCH_PREFIX = ".promptdrop-tmp-"

CHECKS = (
    "one run per drop",
    "every run terminal",
    "one manifest entry per line",
    "images == succeeded entries",
    "one batch per display name",
    "requests billed once",
    "vertex reads and writes the bucket",
    "no scratch left",
    "cached images decode",
    "the re-drop hit the cache",
    "no tracebacks",
    "kills hit the risky moments",
)


@dataclass(frozen=True, slots=True)
class RunView:
    """One run as the store has it."""

    run_id: str
    state: str
    source_object: str | None  # inbox object name (files)
    generation: str | None
    message_name: str | None = None  # inline messages: the message's `name`


@dataclass(frozen=True, slots=True)
class Miss:
    check: str
    detail: str


@dataclass(frozen=True, slots=True)
class Billing:
    """What the emulator billed against the distinct requests the runs sent.

    Batch lane: a request is (run, attempt, key), inside exactly one of our jobs (its id is the batch's display
    name); billed are the requests answered in batches that ran. Now lane: every generateContent call the
    emulator answered is billed; a line answered by the API (succeeded, or failed for good) is one distinct
    request. Counted apart, the sends the harness cut: answers whose caller was gone (killed), and calls it
    stalled past the lease (another worker takes the run over and sends the line again; in production the
    lease outlasts a call). Where the harness can see it (the Cloud path), the lease losses are also measured
    rather than inferred from stalls: the sends beyond a line's first that the job store recorded in now
    chunks whose worker logged that it lost the run's lease; the larger of the two is taken off.
    """

    batch_billed: Mapping[str, int]  # display name -> requests answered in the batches of that name that ran
    job_requests: Mapping[str, int]  # our job id -> its requests (batch lane)
    generate_billed: int  # generateContent calls the emulator answered
    generate_cut: int  # of those, the answers whose caller had gone
    generate_stalled: int  # generateContent calls the emulator stalled (longer than the harness's lease)
    now_requests: int  # now-lane lines the API answered (distinct requests)
    # Sends beyond a line's first recorded in now chunks whose worker lost the run's lease (a slow machine, a
    # 3 s lease): the successor sent the line again, as it must when the answer was not recorded.
    now_resent_after_lease_loss: int = 0

    @property
    def batch_requests(self) -> int:
        """Distinct batch requests that ran: each job's requests, once, if any batch of its name ran."""
        return sum(self.job_requests.get(name, 0) for name in self.batch_billed)

    def figures(self) -> dict[str, object]:
        billed = sum(self.batch_billed.values()) + self.generate_billed
        return {
            "requests billed": billed,
            "of which generate calls": self.generate_billed,
            "distinct requests": self.batch_requests + self.now_requests,
            "now answers cut": self.generate_cut,
            "now calls stalled past the lease": self.generate_stalled,
            "now lines re-sent after a lost lease": self.now_resent_after_lease_loss,
        }


def now_requests(manifests: Mapping[str, list[dict[str, Any]] | None]) -> int:
    """Now-lane lines the API answered: succeeded, or failed with a final answer (not from the cache)."""
    return sum(
        1
        for entries in manifests.values()
        for entry in entries or []
        if entry.get("lane") == "now"
        and "cached_from" not in entry
        and (
            entry.get("status") == "succeeded"
            or (entry.get("status") == "failed" and not (entry.get("error") or {}).get("retryable", True))
        )
    )


@dataclass
class Snapshot:
    """Everything the checks look at, gathered once the seed settled."""

    drops: Mapping[str, int]  # inbox object name -> times dropped
    messages: Mapping[str, int]  # message name -> times published (each publish is a new message)
    expected_lines: Mapping[str, tuple[int, ...]]  # inbox object name or message name -> lines
    runs: list[RunView]
    manifests: Mapping[str, list[dict[str, Any]] | None]  # run id -> entries (None: no manifest)
    objects: Mapping[str, int]  # every object under the output prefix (hidden names too) -> size
    output_prefix: str
    batch_display_names: list[str | None]  # one per batch job the emulator holds
    tracebacks: Mapping[str, int]  # log name -> tracebacks in it
    traceback_examples: Mapping[str, str] = field(
        default_factory=dict
    )  # log name -> its first exception line
    kills: Mapping[str, int] = field(default_factory=dict)  # why -> how many ("create", "harvest", ...)
    required_kills: tuple[str, ...] = ()  # kill reasons that must have happened at least once
    # Lines served from the pay-once cache: image object name -> whether it decodes (None: not gathered).
    cached_images: Mapping[str, bool] = field(default_factory=dict)
    cache_redrop: str | None = None  # the inbox object whose run must have lines served from the cache
    billing: Billing | None = None  # None: not gathered (the emulator's counts were not read)
    # Vertex AI backend: calls that reached the emulator's Files API routes (upload, results download, file
    # get/list/delete), by route; None on the Gemini backend, which uses them.
    files_api_calls: Mapping[str, int] | None = None
    # Cloud path: scratch objects that settle stamped with the run's end (customTime) before recording it;
    # the deployment's `_work/` lifecycle rule expires them, so a kill between the end and the scratch's
    # deletion leaves nothing for good. Not a miss; the harness reports how many.
    scratch_marked: frozenset[str] = frozenset()


def is_scratch(name: str) -> bool:
    """A temporary file of the local folder store (hidden; a killed writer leaves it behind)."""
    return name.rpartition("/")[2].startswith(SCRATCH_PREFIX)


def _runs_by_source(runs: Iterable[RunView]) -> tuple[Counter[str], Counter[str]]:
    files: Counter[str] = Counter(r.source_object for r in runs if r.source_object)
    messages: Counter[str] = Counter(r.message_name for r in runs if r.message_name and not r.source_object)
    return files, messages


def _check_runs(snap: Snapshot) -> list[Miss]:
    misses = []
    files, messages = _runs_by_source(snap.runs)
    for kind, wanted, got in (("object", snap.drops, files), ("message", snap.messages, messages)):
        for name in sorted(set(wanted) | set(got)):
            if wanted.get(name, 0) != got.get(name, 0):
                misses.append(
                    Miss(
                        "one run per drop", f"{kind} {name}: dropped {wanted.get(name, 0)}, runs {got[name]}"
                    )
                )
    claims = Counter((r.source_object, r.generation) for r in snap.runs if r.source_object)
    for (name, generation), count in claims.items():
        if count > 1:
            misses.append(Miss("one run per drop", f"{name}#{generation} has {count} runs"))
    return misses


def _source_key(run: RunView) -> str | None:
    return run.source_object or run.message_name


def _check_manifest(snap: Snapshot, run: RunView, entries: list[dict[str, Any]]) -> list[Miss]:
    misses = []
    key = _source_key(run)
    expected = Counter(snap.expected_lines.get(key or "", ()))
    got = Counter(int(entry.get("line", -1)) for entry in entries)
    missing = sorted((expected - got).elements())
    extra = sorted((got - expected).elements())
    if missing or extra:
        misses.append(
            Miss(
                "one manifest entry per line",
                f"{run.run_id}: {len(entries)} entries for {sum(expected.values())} lines; "
                f"missing lines {missing[:10]}, extra or repeated {extra[:10]}",
            )
        )
    folder = f"{snap.output_prefix}{run.run_id}/"
    images = {name for name in snap.objects if name.startswith(folder + "images/") and not is_scratch(name)}
    succeeded = [e.get("image") for e in entries if e.get("status") == "succeeded"]
    referenced = {str(name) for name in succeeded if name}
    if len(images) != len(succeeded) or images != referenced:
        misses.append(
            Miss(
                "images == succeeded entries",
                f"{run.run_id}: {len(images)} image files, {len(succeeded)} succeeded entries; "
                f"orphans {sorted(images - referenced)[:5]}, missing {sorted(referenced - images)[:5]}",
            )
        )
    return misses


def _check_outputs(snap: Snapshot) -> list[Miss]:
    misses = []
    for run in snap.runs:
        if run.state not in TERMINAL:
            misses.append(Miss("every run terminal", f"{run.run_id} is still {run.state}"))
            continue
        entries = snap.manifests.get(run.run_id)
        if entries is None:
            misses.append(Miss("one manifest entry per line", f"{run.run_id} ({run.state}) has no manifest"))
        else:
            misses += _check_manifest(snap, run, entries)
        folder = f"{snap.output_prefix}{run.run_id}/"
        scratch = sorted(
            name
            for name in snap.objects
            if name.startswith(folder)
            and (name.startswith(folder + "_work/") or is_scratch(name))
            and name not in snap.scratch_marked
        )
        if scratch:
            sizes = sum(snap.objects[name] for name in scratch)
            shown = ", ".join(name.removeprefix(folder) for name in scratch[:3])
            misses.append(
                Miss("no scratch left", f"{run.run_id}: {len(scratch)} files ({sizes} bytes) left: {shown}")
            )
    return misses


def _check_cache(snap: Snapshot) -> list[Miss]:
    misses = []
    for run in snap.runs:
        entries = snap.manifests.get(run.run_id) or []
        bad = [
            str(e.get("image"))
            for e in entries
            if "cached_from" in e and not snap.cached_images.get(str(e.get("image")), False)
        ]
        if bad:
            misses.append(
                Miss(
                    "cached images decode",
                    f"{run.run_id}: {len(bad)} cached line(s) whose image does not decode: {bad[:3]}",
                )
            )
    # Dropped once every run had ended, so its requests were paid for: some line must have been served.
    redrops = [
        snap.manifests.get(run.run_id)
        for run in snap.runs
        if snap.cache_redrop is not None and run.source_object == snap.cache_redrop
    ]
    settled = [entries for entries in redrops if entries is not None]  # a missing manifest is its own miss
    if settled and not any("cached_from" in e for entries in settled for e in entries):
        misses.append(
            Miss("the re-drop hit the cache", f"{snap.cache_redrop}: no line served from the cache")
        )
    return misses


def _check_batches(snap: Snapshot) -> list[Miss]:
    counts = Counter(name for name in snap.batch_display_names)
    return [
        Miss("one batch per display name", f"{count} batch jobs named {name!r} (paid {count} times)")
        for name, count in sorted(counts.items(), key=lambda item: str(item[0]))
        if count > 1
    ]


def _check_billing(snap: Snapshot) -> list[Miss]:
    """Billed requests equal distinct requests, but for the now-lane sends the harness cut (killed callers,
    calls stalled past the lease: sent again)."""
    bill = snap.billing
    if bill is None:
        return []
    misses = []
    for name, billed in sorted(bill.batch_billed.items()):
        meant = bill.job_requests.get(name)
        if meant is None:
            misses.append(
                Miss("requests billed once", f"batch {name!r} ran {billed} requests of no job of ours")
            )
        elif billed > meant:
            misses.append(
                Miss("requests billed once", f"job {name}: {billed} requests billed for its {meant} requests")
            )
    lease_lost = max(bill.generate_stalled, bill.now_resent_after_lease_loss)
    extra = bill.generate_billed - bill.now_requests - bill.generate_cut - lease_lost
    if extra > 0:
        resent = bill.now_resent_after_lease_loss
        misses.append(
            Miss(
                "requests billed once",
                f"{bill.generate_billed} generateContent calls billed for {bill.now_requests} now-lane lines "
                f"answered, {bill.generate_cut} answers cut, {bill.generate_stalled} calls stalled"
                + (f", {resent} re-sent after a lost lease" if resent else "")
                + f": {extra} billed twice",
            )
        )
    return misses


def _check_vertex_io(snap: Snapshot) -> list[Miss]:
    """On Vertex AI a job reads its input from the bucket and writes its predictions there: a call to the
    Files API (an upload, a results download) is a Gemini code path taken on the wrong backend."""
    calls = {route: count for route, count in (snap.files_api_calls or {}).items() if count}
    if not calls:
        return []
    shown = ", ".join(f"{route} {count}" for route, count in sorted(calls.items()))
    return [Miss("vertex reads and writes the bucket", f"Files API calls on the Vertex backend: {shown}")]


def _check_logs(snap: Snapshot) -> list[Miss]:
    return [
        Miss(
            "no tracebacks",
            f"{count} in {log}"
            + (f", first: {example}" if (example := snap.traceback_examples.get(log)) else ""),
        )
        for log, count in sorted(snap.tracebacks.items())
        if count
    ]


def _check_kills(snap: Snapshot) -> list[Miss]:
    return [
        Miss("kills hit the risky moments", f"no kill during a {reason}")
        for reason in snap.required_kills
        if not snap.kills.get(reason)
    ]


def judge(snap: Snapshot) -> list[Miss]:
    """Every miss of the seed, in the order of ``CHECKS``."""
    misses = (
        _check_runs(snap)
        + _check_outputs(snap)
        + _check_cache(snap)
        + _check_batches(snap)
        + _check_billing(snap)
        + _check_vertex_io(snap)
        + _check_logs(snap)
        + _check_kills(snap)
    )
    return sorted(misses, key=lambda miss: CHECKS.index(miss.check))


_CHAINED = (
    "The above exception was the direct cause of the following exception",
    "During handling of the above exception, another exception occurred",
)


def count_tracebacks(text: str) -> int:
    """Tracebacks logged; a chain of exceptions (``raise ... from``) prints several but is one."""
    return len(re.findall(re.escape(TRACEBACK), text)) - sum(text.count(marker) for marker in _CHAINED)


def first_exception(text: str) -> str | None:
    """The exception line ending the first traceback of a log (text, or JSON lines with an ``exception``)."""
    for line in text.splitlines():
        if TRACEBACK not in line:
            continue
        block = line
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = {}
            block = str(record.get("exception") or record.get("stack_trace") or line)
            lines = [part for part in block.splitlines() if part.strip()]
            return lines[-1][:300] if lines else None
        break
    else:
        return None
    # A text log: the first line after the traceback's start that is not indented.
    after = text[text.index(TRACEBACK) + len(TRACEBACK) :].splitlines()[1:]
    return next((part[:300] for part in after if part and not part[0].isspace()), None)
