"""The chaos suite's judge: each check passes on a clean seed and names the miss it is there to find."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from promptdrop.testing.chaos.checks import (
    CHECKS,
    Billing,
    RunView,
    Snapshot,
    count_tracebacks,
    first_exception,
    judge,
    now_requests,
)
from promptdrop.testing.chaos.common import decodes, lease_lost_jobs
from promptdrop.testing.chaos.prompts import BIG_LINES_SHORT, big_file, mixed_file, seed_files
from promptdrop.usecases.harvest import CHECKPOINT_LINES

RUN = "cats-1a2b3c4d"


def _entry(line: int, status: str = "succeeded") -> dict[str, Any]:
    image = f"outputs/{RUN}/images/k{line}.png" if status == "succeeded" else None
    return {"line": line, "status": status, "image": image}


def clean() -> Snapshot:
    # Line 5 was served from the pay-once cache (the run is the cache's re-drop).
    entries = [_entry(2), _entry(3, "failed"), {**_entry(5), "cached_from": {"run_id": "old", "key": "k5"}}]
    return Snapshot(
        drops={"inbox/cats.jsonl": 1},
        messages={},
        expected_lines={"inbox/cats.jsonl": (2, 3, 5)},
        runs=[RunView(RUN, "PARTIAL", "inbox/cats.jsonl", "7")],
        manifests={RUN: entries},
        objects={
            f"outputs/{RUN}/images/k2.png": 10,
            f"outputs/{RUN}/images/k5.png": 10,
            f"outputs/{RUN}/manifest.jsonl": 99,
            f"outputs/{RUN}/summary.json": 99,
        },
        output_prefix="outputs/",
        batch_display_names=[f"{RUN}-a1-c0000", f"{RUN}-a2-c0000"],
        tracebacks={"serve-steady": 0},
        kills={"create": 1, "harvest": 2},
        required_kills=("create", "harvest"),
        cached_images={f"outputs/{RUN}/images/k5.png": True},
        cache_redrop="inbox/cats.jsonl",
        # Two requests in attempt 1, one retried in attempt 2; two now lines answered, one answer cut by a kill.
        billing=Billing(
            batch_billed={f"{RUN}-a1-c0000": 2, f"{RUN}-a2-c0000": 1},
            job_requests={f"{RUN}-a1-c0000": 2, f"{RUN}-a2-c0000": 1, f"{RUN}-a2-c0001": 4},
            generate_billed=3,
            generate_cut=1,
            generate_stalled=0,
            now_requests=2,
        ),
    )


def _second_run(snapshot: Snapshot) -> None:
    """A second run of the same generation, complete in itself (all its lines failed)."""
    snapshot.runs.append(RunView("cats-2", "FAILED", "inbox/cats.jsonl", "7"))
    snapshot.manifests["cats-2"] = [_entry(line, "failed") for line in (2, 3, 5)]


def test_a_clean_seed_has_no_miss() -> None:
    assert judge(clean()) == []


def _missed(snapshot: Snapshot) -> set[str]:
    return {miss.check for miss in judge(snapshot)}


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda s: s.drops.update({"inbox/cats.jsonl": 2}), "one run per drop"),
        (lambda s: _second_run(s), "one run per drop"),
        (
            lambda s: s.runs.__setitem__(0, RunView(RUN, "SUBMITTED", "inbox/cats.jsonl", "7")),
            "every run terminal",
        ),
        (lambda s: s.manifests[RUN].append(_entry(3, "failed")), "one manifest entry per line"),
        (lambda s: s.manifests[RUN].pop(1), "one manifest entry per line"),
        (lambda s: s.manifests.update({RUN: None}), "one manifest entry per line"),
        (lambda s: s.objects.update({f"outputs/{RUN}/images/k9.png": 1}), "images == succeeded entries"),
        (lambda s: s.objects.pop(f"outputs/{RUN}/images/k5.png"), "images == succeeded entries"),
        (lambda s: s.batch_display_names.append(f"{RUN}-a1-c0000"), "one batch per display name"),
        (lambda s: s.objects.update({f"outputs/{RUN}/_work/results-1.jsonl": 5}), "no scratch left"),
        (lambda s: s.objects.update({f"outputs/{RUN}/_work/.promptdrop-tmp-ab": 0}), "no scratch left"),
        (lambda s: s.objects.update({f"outputs/{RUN}/images/.promptdrop-tmp-cd": 0}), "no scratch left"),
        (lambda s: s.tracebacks.update({"poll_jobs": 1}), "no tracebacks"),
        (lambda s: s.kills.pop("harvest"), "kills hit the risky moments"),
        (lambda s: s.cached_images.update({f"outputs/{RUN}/images/k5.png": False}), "cached images decode"),
        (lambda s: s.cached_images.clear(), "cached images decode"),
        (lambda s: s.manifests[RUN][2].pop("cached_from"), "the re-drop hit the cache"),
    ],
)
def test_each_check_names_its_miss(change: Any, check: str) -> None:
    snapshot = clean()
    snapshot.drops, snapshot.manifests = dict(snapshot.drops), dict(snapshot.manifests)
    snapshot.objects, snapshot.tracebacks = dict(snapshot.objects), dict(snapshot.tracebacks)
    snapshot.kills, snapshot.runs = dict(snapshot.kills), list(snapshot.runs)
    snapshot.cached_images = dict(snapshot.cached_images)
    snapshot.manifests = {
        run: [dict(e) for e in entries or []] for run, entries in snapshot.manifests.items()
    }
    change(snapshot)
    assert _missed(snapshot) == {check}
    assert check in CHECKS


def _billing(snapshot: Snapshot, **changes: Any) -> None:
    assert snapshot.billing is not None
    snapshot.billing = dataclasses.replace(snapshot.billing, **changes)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        # A job's requests answered in two batches that ran (a create that landed twice, both run).
        (
            {"batch_billed": {f"{RUN}-a1-c0000": 4, f"{RUN}-a2-c0000": 1}},
            f"job {RUN}-a1-c0000: 4 requests billed for its 2 requests",
        ),
        ({"batch_billed": {"stray-a1-c0000": 3}}, "batch 'stray-a1-c0000' ran 3 requests of no job of ours"),
        # A now line sent twice with no answer cut: billed twice.
        (
            {"generate_billed": 4},
            "4 generateContent calls billed for 2 now-lane lines answered, 1 answers cut, 0 calls stalled: "
            "1 billed twice",
        ),
        (
            {"generate_cut": 0},
            "3 generateContent calls billed for 2 now-lane lines answered, 0 answers cut, 0 calls stalled: "
            "1 billed twice",
        ),
    ],
)
def test_a_request_billed_twice_is_a_miss(changes: dict[str, Any], detail: str) -> None:
    snapshot = clean()
    _billing(snapshot, **changes)
    assert [(miss.check, miss.detail) for miss in judge(snapshot)] == [("requests billed once", detail)]


def test_billing_figures_count_each_request_once_and_the_cut_answers_apart() -> None:
    """A job with no batch that ran (a2-c0001: refused, cancelled while queued) counts nothing; fewer calls
    than now lines (a send faulted before the engine, never billed) is no miss."""
    snapshot = clean()
    assert snapshot.billing is not None
    assert snapshot.billing.figures() == {
        "requests billed": 6,
        "of which generate calls": 3,
        "distinct requests": 5,
        "now answers cut": 1,
        "now calls stalled past the lease": 0,
        "now lines re-sent after a lost lease": 0,
    }
    _billing(snapshot, generate_billed=1, generate_cut=0)
    assert judge(snapshot) == []
    # A call stalled past the lease: the run taken over, the line sent again by the other worker.
    _billing(snapshot, generate_billed=4, generate_cut=1, generate_stalled=1)
    assert judge(snapshot) == []


def test_now_lines_re_sent_after_a_measured_lease_loss_are_counted_apart_once() -> None:
    """A worker lost the run's lease with a now answer unrecorded (no stall, a slow machine): its successor
    sent the line again. Taken off once, not on top of the stalls that caused the same loss."""
    snapshot = clean()
    _billing(snapshot, generate_billed=4, now_resent_after_lease_loss=1)
    assert judge(snapshot) == []
    _billing(snapshot, generate_billed=4, generate_stalled=1, now_resent_after_lease_loss=1)
    assert judge(snapshot) == []
    _billing(snapshot, generate_billed=5, generate_stalled=1, now_resent_after_lease_loss=1)
    ((check, detail),) = [(miss.check, miss.detail) for miss in judge(snapshot)]
    assert check == "requests billed once"
    assert detail == (
        "5 generateContent calls billed for 2 now-lane lines answered, 1 answers cut, 1 calls stalled, "
        "1 re-sent after a lost lease: 1 billed twice"
    )


def test_lease_losses_are_read_from_the_functions_json_logs(tmp_path: Path) -> None:
    lost = {
        "message": "stopped: job cats-1-a1-c0001: the run's lease is not held by vm-1-ab (another worker took over)"
    }
    other = {
        "message": "stopped: run cats-2: the run's lease is not held by vm-2-cd (another worker took over)"
    }
    (tmp_path / "on_now_chunk.log").write_text(json.dumps(lost) + "\n" + json.dumps(other) + "\n")
    assert lease_lost_jobs([tmp_path / "on_now_chunk.log", tmp_path / "missing.log"]) == {"cats-1-a1-c0001"}


def test_now_requests_are_the_now_lines_the_api_answered() -> None:
    manifests: dict[str, list[dict[str, Any]] | None] = {
        "r1": [
            {"lane": "now", "status": "succeeded"},
            {"lane": "now", "status": "failed", "error": {"code": "safety", "retryable": False}},
            {"lane": "now", "status": "failed", "error": {"code": "api_error", "retryable": True}},  # a fault
            {"lane": "now", "status": "succeeded", "cached_from": {"run_id": "r0", "key": "k"}},
            {"lane": "now", "status": "invalid"},
            {"lane": "batch", "status": "succeeded"},
        ],
        "r2": None,
    }
    assert now_requests(manifests) == 2


def test_a_message_gives_one_run() -> None:
    snapshot = clean()
    snapshot.messages = {"message-0": 2}
    snapshot.expected_lines = {**snapshot.expected_lines, "message-0": (1,)}
    snapshot.runs = [*snapshot.runs, RunView("message-0-1", "FAILED", None, None, "message-0")]
    snapshot.manifests = {**snapshot.manifests, "message-0-1": [_entry(1, "failed")]}
    assert [miss.detail for miss in judge(snapshot)] == ["message message-0: dropped 2, runs 1"]


def test_tracebacks_are_counted_a_chain_as_one() -> None:
    text = "ok\nTraceback (most recent call last):\n  x\nTraceback (most recent call last):\n"
    assert count_tracebacks(text) == 2
    chained = (
        "Traceback (most recent call last):\n  x\nOSError: a\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n  y\nValueError: b\n"
    )
    assert count_tracebacks(chained + chained) == 2


def test_prompt_files_expect_every_non_blank_line_but_the_defaults() -> None:
    prompt_file = mixed_file(random.Random(3), "m.jsonl", 5)
    lines = prompt_file.data.decode().split("\n")[:-1]
    assert json.loads(lines[0]) == {"defaults": {"model": "gemini-3-pro-image", "aspect_ratio": "1:1"}}
    assert prompt_file.expected_lines == tuple(n for n, line in enumerate(lines, 1) if line.strip() and n > 1)
    assert any(not line.strip() for line in lines)  # a blank line is there, and expected nowhere


def test_each_seed_has_a_job_past_a_harvest_checkpoint_and_a_re_upload() -> None:
    files = seed_files(1, short=True)
    assert BIG_LINES_SHORT > CHECKPOINT_LINES
    assert max(len(f.expected_lines) for f in files) > CHECKPOINT_LINES
    assert files[-1] == files[0]
    assert seed_files(1, short=True) == files and seed_files(2, short=True) != files


def test_the_first_exception_of_a_log_is_named_in_the_miss() -> None:
    text_log = "ok\nTraceback (most recent call last):\n  File 'a.py'\n    x()\nValueError: boom\nlater\n"
    json_log = json.dumps(
        {"severity": "ERROR", "exception": "Traceback (most recent call last):\n  x\nOSError: gone"}
    )
    assert first_exception(text_log) == "ValueError: boom"
    assert first_exception("plain\n" + json_log + "\n") == "OSError: gone"
    assert first_exception("no trouble here\n") is None
    snapshot = clean()
    snapshot.tracebacks = {"serve-victim": 1}
    snapshot.traceback_examples = {"serve-victim": "ValueError: boom"}
    assert [miss.detail for miss in judge(snapshot)] == ["1 in serve-victim, first: ValueError: boom"]


def test_decodes_tells_whole_images_from_cut_ones() -> None:
    """The cache check decodes every pixel: a cut-off PNG or a missing object does not pass."""
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "PNG")
    whole = image.getvalue()
    assert decodes(whole)
    assert not decodes(whole[: len(whole) // 2])
    assert not decodes(None)


def test_fresh_extra_files_say_so_in_their_defaults_and_expect_the_same_lines() -> None:
    """The extra files aimed at kills are fresh (a defaults line), which gets no manifest entry."""
    plain = big_file(random.Random(1), "big-extra-1.jsonl", 5)
    fresh = big_file(random.Random(1), "big-extra-1.jsonl", 5, fresh=True)
    assert fresh.data.startswith(b'{"defaults": {"fresh": true}}\n')
    assert fresh.expected_lines == tuple(n + 1 for n in plain.expected_lines)
    mixed = mixed_file(random.Random(1), "m.jsonl", 3, fresh=True)
    assert json.loads(mixed.data.splitlines()[0])["defaults"]["fresh"] is True


def test_a_files_api_call_on_vertex_is_a_miss_naming_the_routes() -> None:
    """On Vertex AI nothing is uploaded and no results are downloaded; the Gemini backend (None) is not judged."""
    snapshot = clean()
    snapshot.files_api_calls = {"upload": 0, "download": 0}
    assert judge(snapshot) == []
    snapshot.files_api_calls = {"upload": 2, "download": 1, "file_get": 0}
    (miss,) = judge(snapshot)
    assert miss.check == "vertex reads and writes the bucket" and miss.check in CHECKS
    assert miss.detail == "Files API calls on the Vertex backend: download 1, upload 2"


def test_vertex_seed_files_add_one_lost_label_line_per_mixed_file() -> None:
    gemini = seed_files(1, short=True)
    vertex = seed_files(1, short=True, lost_labels=True)
    for plain, lost in zip(gemini, vertex, strict=True):
        marked = lost.data.count(b"[[emulator:label=lost]]")
        assert marked == (1 if plain.name.startswith("mixed") else 0)
        assert len(lost.expected_lines) == len(plain.expected_lines) + marked


def test_scratch_stamped_for_the_lifecycle_rule_is_not_a_miss_unstamped_scratch_is() -> None:
    """Cloud path: a kill between recording the end and deleting the scratch leaves objects settle stamped
    (customTime) first; the deployment's `_work/` rule expires them. Unstamped, nothing would."""
    snapshot = clean()
    left = {f"outputs/{RUN}/_work/input.txt": 5, f"outputs/{RUN}/_work/cached-outcomes.jsonl": 7}
    snapshot.objects = {**snapshot.objects, **left}
    assert {miss.check for miss in judge(snapshot)} == {"no scratch left"}
    snapshot.scratch_marked = frozenset(left)
    assert judge(snapshot) == []
    snapshot.scratch_marked = frozenset([f"outputs/{RUN}/_work/input.txt"])
    ((miss,),) = [judge(snapshot)]
    assert miss.detail == f"{RUN}: 1 files (7 bytes) left: _work/cached-outcomes.jsonl"
