"""Nothing copied before a refusal stays unaccounted: every image a run leaves in `images/` (and thumbnail in
`thumbs/`) has a `succeeded` manifest entry, also when the run was refused or cancelled before submission
(local path, in-process emulator)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from promptdrop.records import Run
from promptdrop.states import RunState
from promptdrop.usecases import cache, poll, receive
from tests.functional.conftest import Pipeline, jsonl
from tests.functional.test_pay_once import catalogue, requests_sent, run_file
from tests.functional.test_pipeline import _noise_png


def unaccounted(pipeline: Pipeline, run: Run) -> list[str]:
    """Files in the run's images/ and thumbs/ whose key has no succeeded manifest entry."""
    succeeded = {entry["key"] for entry in pipeline.manifest(run) if entry["status"] == "succeeded"}
    folder = pipeline.outputs(run)
    files = [
        path for sub in ("images", "thumbs") if (folder / sub).exists() for path in (folder / sub).iterdir()
    ]
    return sorted(
        str(Path(path.parent.name) / path.name)
        for path in files
        if PurePosixPath(path.name).stem not in succeeded
    )


def test_a_cached_run_refused_by_the_now_cap_copies_nothing(pipeline: Pipeline) -> None:
    """Three lines paid for before, plus two now lines over PROMPTDROP_MAX_NOW_LINES=1: the run is refused
    before the cache copies anything; no image or thumbnail is left without a succeeded entry."""
    first = run_file(pipeline, "cat.jsonl", catalogue(3))
    assert first.state is RunState.SUCCEEDED
    capped = pipeline.context(max_now_lines="1")
    urgent = [{"key": f"now-{n}", "prompt": f"an urgent banner {n}", "lane": "now"} for n in range(2)]
    receipt = pipeline.drop("cat.jsonl", jsonl(*catalogue(3), *urgent), capped)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, capped)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "PROMPTDROP_MAX_NOW_LINES=1" in run.reason
    assert {entry["status"] for entry in pipeline.manifest(run)} == {"failed"}
    assert unaccounted(pipeline, run) == []
    assert not (pipeline.outputs(run) / "images").exists() or not any(
        (pipeline.outputs(run) / "images").iterdir()
    )
    assert (requests_sent(pipeline.emulator), pipeline.emulator.server.generated) == (3, 0)


def test_a_run_cancelled_between_cache_decision_blocks_leaves_no_copied_image(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-drop whose cache decision paused after its first block (10 images copied), then cancelled while
    still RECEIVED: every line ends cancelled and the copies it made are removed at settle."""
    monkeypatch.setattr(cache, "DECIDE_BLOCK_LINES", 10)
    monkeypatch.setattr(receive, "SUBMIT_ON_CLAIM_SECONDS", 0.0)
    run_file(pipeline, "big.jsonl", catalogue(25))
    receipt = pipeline.drop("big.jsonl", jsonl(*catalogue(25)))
    assert receipt.run is not None and receipt.run.state is RunState.RECEIVED
    run_id = receipt.run.run_id
    ctx = pipeline.ctx
    folder = pipeline.bucket / receipt.run.output_folder
    assert len(list((folder / "images").iterdir())) == 10  # the first block was copied before the pause

    ctx.store.update_run(run_id, {"cancel_requested": True})
    poll.tick(ctx, run_ids=[run_id])
    run = ctx.store.get_run(run_id)

    assert run is not None and run.state is RunState.CANCELLED
    assert {(entry["status"], entry["error"]["code"]) for entry in pipeline.manifest(run)} == {
        ("failed", "cancelled")
    }
    assert unaccounted(pipeline, run) == []
    assert requests_sent(pipeline.emulator) == 25  # the first run's only


def test_a_run_cancelled_while_its_reference_uploads_are_paused_leaves_no_copied_image(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three cached lines copied, then two lines' large reference images uploading when the time ran out
    (the run stays RECEIVED); cancelled then, the run leaves none of the three copies behind."""
    run_file(pipeline, "mix.jsonl", catalogue(3))
    monkeypatch.setattr(receive, "SUBMIT_ON_CLAIM_SECONDS", 0.0)
    ctx = pipeline.context(inline_image_max_bytes=1024)  # every reference goes through the Files API
    refs = [f"refs/photo-{n}.png" for n in range(2)]
    for n, ref in enumerate(refs):
        ctx.blobs.write_bytes(ref, _noise_png(64, seed=n), content_type="image/png")
    restyled = [{"key": f"restyle-{n}", "prompt": "restyle", "images": [ref]} for n, ref in enumerate(refs)]
    receipt = pipeline.drop("mix.jsonl", jsonl(*catalogue(3), *restyled), ctx)
    assert receipt.run is not None and receipt.run.state is RunState.RECEIVED  # paused after one upload
    run_id = receipt.run.run_id
    assert len(list((pipeline.bucket / receipt.run.output_folder / "images").iterdir())) == 3

    ctx.store.update_run(run_id, {"cancel_requested": True})
    poll.tick(ctx, run_ids=[run_id])
    run = ctx.store.get_run(run_id)

    assert run is not None and run.state is RunState.CANCELLED
    assert unaccounted(pipeline, run) == []
    assert requests_sent(pipeline.emulator) == 3  # the first run's only
