"""Pay once per image: a re-dropped file submits only the lines whose request changed (local path)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from promptdrop import prompts
from promptdrop.cli import app
from promptdrop.emulator.launcher import SERVER_RECORD
from promptdrop.models import model_spec
from promptdrop.ports import CopyOrder
from promptdrop.states import RunState
from promptdrop.usecases import cache, poll, receive
from promptdrop.usecases.cache import ImageDigests
from tests.functional.conftest import Pipeline, jsonl, pipeline_env, pipeline_for, read_jsonl
from tests.functional.test_cli import promptdrop
from tests.support.reference_rewrite import rewritten_between_hash_and_send

MODEL = "gemini-3-pro-image"


def requests_sent(emulator: Any) -> int:
    """Requests in every batch the emulator was given (its own batchStats), counted at the emulator."""
    total = 0
    token = ""
    while True:
        reply = emulator.request(
            "GET", f"/v1beta/batches?pageSize=100{'&pageToken=' + token if token else ''}"
        )
        assert reply.status == 200
        body = reply.json()
        for operation in body.get("operations", []):
            total += int(operation["metadata"]["batchStats"]["requestCount"])
        token = body.get("nextPageToken", "")
        if not token:
            return total


def catalogue(count: int, *, edited: frozenset[int] = frozenset(), extra: int = 0) -> list[dict[str, Any]]:
    lines = [
        {"key": f"item-{n:02d}", "prompt": f"product shot {n}" + (" in blue" if n in edited else "")}
        for n in range(count)
    ]
    return lines + [{"key": f"new-{n}", "prompt": f"a new size {n}"} for n in range(extra)]


def run_file(pipeline: Pipeline, name: str, lines: list[dict[str, Any]]) -> Any:
    receipt = pipeline.drop(name, jsonl(*lines))
    assert receipt.run is not None
    return pipeline.finish(receipt.run.run_id)


def summary(pipeline: Pipeline, run: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((pipeline.outputs(run) / "summary.json").read_bytes())
    return data


def test_redrop_with_three_edits_and_two_additions_sends_five_requests(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """50 lines paid once; the re-drop sends exactly the 5 changed requests, the 45 others are copies."""
    # Images of 256 px (1K at a quarter scale): smaller ones are their own thumbnails, and none is copied.
    pipeline = pipeline_for(tmp_path / "home", emulator_factory(image_scale=0.25))
    first = run_file(pipeline, "catalogue.jsonl", catalogue(50))
    assert first.state is RunState.SUCCEEDED
    assert requests_sent(pipeline.emulator) == 50
    assert summary(pipeline, first)["cost"]["cached"] == 0

    # 50 lines again: 45 as before, 3 edited, 2 new (in place of the last two).
    second = run_file(pipeline, "catalogue.jsonl", catalogue(48, edited=frozenset({3, 17, 41}), extra=2))
    assert second.state is RunState.SUCCEEDED
    assert requests_sent(pipeline.emulator) == 50 + 5
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert len(entries) == 50
    cached = {key: e for key, e in entries.items() if "cached_from" in e}
    paid = {key for key, e in entries.items() if "cached_from" not in e}
    assert paid == {"item-03", "item-17", "item-41", "new-0", "new-1"}
    assert len(cached) == 45
    first_entries = {e["key"]: e for e in pipeline.manifest(first)}
    for key, entry in cached.items():
        assert entry["status"] == "succeeded"
        assert entry["attempts"] == 0
        assert entry["cached_from"] == {"run_id": first.run_id, "key": key}
        assert entry["image"] == f"{second.output_folder}images/{key}.png"
        assert (pipeline.bucket / entry["image"]).read_bytes() == (
            pipeline.bucket / first_entries[key]["image"]
        ).read_bytes()
        # The gallery's thumbnail came along, so the page shows the small image.
        assert (pipeline.outputs(second) / "thumbs" / f"{key}.webp").is_file()
    cost = summary(pipeline, second)["cost"]
    assert cost["cached"] == 45
    # What the 45 would have cost in batch, from the model table: 1120 image tokens at the batch rate
    # (the emulator bills the table's tokens) plus their prompt tokens.
    spec = model_spec(MODEL)
    assert spec is not None and spec.rates is not None
    per_image = spec.image_cost("1K", batch=True)
    assert per_image is not None
    assert cost["saved_by_cache"] == pytest.approx(45 * per_image, rel=0.01)
    # This run paid only for the 5 it sent.
    assert cost["batch"] == pytest.approx(5 * per_image, rel=0.01)


def test_a_fresh_line_and_a_fresh_file_default_submit_anyway(pipeline: Pipeline) -> None:
    """``"fresh": true`` on a line submits that line; a file default makes every line fresh."""
    run_file(pipeline, "a.jsonl", catalogue(4))
    lines = catalogue(4)
    lines[2]["fresh"] = True
    second = run_file(pipeline, "a.jsonl", lines)
    assert requests_sent(pipeline.emulator) == 4 + 1
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert "cached_from" not in entries["item-02"]
    assert all("cached_from" in entries[f"item-0{n}"] for n in (0, 1, 3))

    third = run_file(pipeline, "a.jsonl", [{"defaults": {"fresh": True}}, *catalogue(4)])
    assert requests_sent(pipeline.emulator) == 4 + 1 + 4
    assert summary(pipeline, third)["cost"]["cached"] == 0


def test_a_new_seed_is_a_new_request(pipeline: Pipeline) -> None:
    """A changed ``seed`` changes the fingerprint: that line is paid for again."""
    run_file(pipeline, "s.jsonl", [{"key": "a", "prompt": "cat", "seed": 1}, {"key": "b", "prompt": "dog"}])
    second = run_file(
        pipeline, "s.jsonl", [{"key": "a", "prompt": "cat", "seed": 2}, {"key": "b", "prompt": "dog"}]
    )
    assert requests_sent(pipeline.emulator) == 3
    assert summary(pipeline, second)["cost"]["cached"] == 1


def test_a_deleted_cached_image_is_paid_for_again_and_replaces_the_entry(pipeline: Pipeline) -> None:
    """An entry whose image was deleted is ignored; the line is submitted and its new image is cached."""
    first = run_file(pipeline, "d.jsonl", catalogue(3))
    (pipeline.bucket / first.output_folder / "images" / "item-01.png").unlink()
    second = run_file(pipeline, "d.jsonl", catalogue(3))
    assert requests_sent(pipeline.emulator) == 3 + 1
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert "cached_from" not in entries["item-01"]
    assert entries["item-00"]["cached_from"]["run_id"] == first.run_id
    # The replacement entry points at the second run's image: a third drop sends nothing.
    third = run_file(pipeline, "d.jsonl", catalogue(3))
    assert requests_sent(pipeline.emulator) == 4
    entries = {e["key"]: e for e in pipeline.manifest(third)}
    assert entries["item-01"]["cached_from"] == {"run_id": second.run_id, "key": "item-01"}


def test_a_run_served_wholly_from_the_cache_creates_no_job(pipeline: Pipeline) -> None:
    """Every line cached: no batch job, the run settles SUCCEEDED with cost 0."""
    run_file(pipeline, "w.jsonl", catalogue(3))
    second = run_file(pipeline, "w.jsonl", catalogue(3))
    assert pipeline.ctx.store.list_jobs(second.run_id) == []
    assert second.state is RunState.SUCCEEDED
    cost = summary(pipeline, second)["cost"]
    assert (cost["cached"], cost["batch"]) == (3, 0.0)
    assert not (pipeline.outputs(second) / "_work").exists()


def test_cache_off_and_old_images_submit_every_line(pipeline: Pipeline) -> None:
    """PROMPTDROP_CACHE=off neither serves nor fills; images past PROMPTDROP_CACHE_DAYS are not reused."""
    off = pipeline.context(cache="off")
    receipt = pipeline.drop("o.jsonl", jsonl(*catalogue(2)), off)
    assert receipt.run is not None
    pipeline.finish(receipt.run.run_id, off)
    run_file(pipeline, "o.jsonl", catalogue(2))  # nothing was cached by the run with the cache off
    assert requests_sent(pipeline.emulator) == 4
    later = pipeline.context()
    later.clock = lambda: __import__("time").time() + 31 * 86_400  # type: ignore[method-assign]
    receipt = pipeline.drop("o.jsonl", jsonl(*catalogue(2)), later)
    assert receipt.run is not None
    pipeline.finish(receipt.run.run_id, later)
    assert requests_sent(pipeline.emulator) == 6


def test_run_fresh_submits_every_line_and_dry_run_shows_the_cache(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --dry-run` says how many lines the cache would serve; `run --fresh` submits them all anyway."""
    run_file(pipeline, "c.jsonl", catalogue(3))
    for name, value in pipeline.env.items():
        monkeypatch.setenv(name, value)
    prompt_file = tmp_path / "c.jsonl"
    prompt_file.write_bytes(jsonl(*catalogue(3, extra=1)))
    runner = CliRunner()
    dry = runner.invoke(app, ["run", "--dry-run", str(prompt_file)])
    assert dry.exit_code == 0, dry.output
    assert "3 line(s) served from the pay-once cache" in dry.output
    result = runner.invoke(app, ["run", "--fresh", "--wait", str(prompt_file)])
    assert result.exit_code == 0, result.output
    assert requests_sent(pipeline.emulator) == 3 + 4
    run_id = result.stdout.splitlines()[0].strip()
    status = runner.invoke(app, ["status", run_id])
    assert "cache: 0 line(s)" in status.output
    manifest = read_jsonl(pipeline.bucket / "outputs" / run_id / "manifest.jsonl")
    assert not any("cached_from" in e for e in manifest)


def test_two_runs_with_the_same_new_line_pay_once_and_the_cache_names_the_payer(pipeline: Pipeline) -> None:
    """The second run's lines wait for the first run, which has them in flight: 2 requests, not 4; the
    cache then names the first run, and the second and a third are served from its images."""
    lines = catalogue(2)
    one = pipeline.drop("one.jsonl", jsonl(*lines)).run
    two = pipeline.drop("two.jsonl", jsonl(*lines)).run
    assert one is not None and two is not None
    assert requests_sent(pipeline.emulator) == 2  # the first run's, at its claim; the second sent none
    fingerprint = _fingerprint_of(pipeline, one.run_id, "item-00")
    pipeline.finish(one.run_id)
    pipeline.finish(two.run_id)
    entry = pipeline.ctx.paid_images.get(fingerprint)
    assert entry is not None and entry.run_id == one.run_id
    assert pipeline.ctx.paid_images.in_flight(fingerprint) is None  # released when the first settled
    third = run_file(pipeline, "three.jsonl", lines)
    assert requests_sent(pipeline.emulator) == 2
    for run in (two, third):
        assert {e["cached_from"]["run_id"] for e in pipeline.manifest(run)} == {one.run_id}


def _fingerprint_of(pipeline: Pipeline, run_id: str, key: str) -> str:
    """The fingerprint the run recorded for ``key`` (read before it settles: scratch goes at the end)."""
    run = pipeline.ctx.store.get_run(run_id)
    assert run is not None
    lines = [{"key": f"item-{n:02d}", "prompt": f"product shot {n}"} for n in range(2)]
    (line,) = [
        parsed
        for parsed in prompts.parse_prompt_file(
            io.BytesIO(jsonl(*lines)), "jsonl", prompts.ParseOptions(default_model=MODEL)
        )
        if isinstance(parsed, prompts.PromptRequest) and parsed.key == key
    ]
    fingerprint = ImageDigests(pipeline.ctx).fingerprint(line, MODEL)
    assert fingerprint is not None
    return fingerprint


class _KilledOnce(Exception):
    """A process killed mid-step: the step's writes so far stay, the rest never happen."""


class _KillAt:
    """A blob store that 'dies' once, on the first write of the object named ``victim``."""

    def __init__(self, inner: Any, victim: str) -> None:
        self.inner, self.victim, self.fired = inner, victim, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write_bytes(self, name: str, data: bytes, **options: Any) -> bool:
        if name.endswith(self.victim) and not self.fired:
            self.fired = True
            raise _KilledOnce(name)
        return bool(self.inner.write_bytes(name, data, **options))


@pytest.mark.parametrize("victim", ["cached-outcomes.jsonl", "fingerprints.jsonl"])
def test_a_kill_between_copying_cached_images_and_recording_them_loses_and_duplicates_nothing(
    pipeline: Pipeline, victim: str
) -> None:
    """Killed after the copies (before or after the decision is written): the next step finishes the run
    with exactly one manifest entry per line, the cached ones served and only the new one paid for."""
    run_file(pipeline, "k.jsonl", catalogue(4))
    killing = _KillAt(pipeline.ctx.blobs, victim)
    ctx = dataclasses.replace(pipeline.ctx, blobs=killing)
    receipt = pipeline.drop("k.jsonl", jsonl(*catalogue(4, extra=1)), ctx)
    assert killing.fired and receipt.run is not None
    assert receipt.run.state is RunState.RECEIVED  # the submission died; the poller takes it up
    run = pipeline.finish(receipt.run.run_id)
    entries = pipeline.manifest(run)
    assert sorted(e["key"] for e in entries) == ["item-00", "item-01", "item-02", "item-03", "new-0"]
    assert sum("cached_from" in e for e in entries) == 4
    assert requests_sent(pipeline.emulator) == 4 + 1
    assert summary(pipeline, run)["cost"]["cached"] == 4


class _CountingCopies:
    """A blob store that counts the server-side copies made to each destination."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.copies: Counter[str] = Counter()
        self.singles: list[str] = []  # destinations of single copies
        self.batches = 0  # copy_many calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def copy(self, source: str, destination: str, **options: Any) -> None:
        self.copies[destination] += 1
        self.singles.append(destination)
        self.inner.copy(source, destination, **options)

    def copy_many(self, orders: Sequence[CopyOrder], **options: Any) -> Sequence[bool]:
        self.copies.update(order.destination for order in orders)
        self.batches += 1
        return self.inner.copy_many(orders, **options)  # type: ignore[no-any-return]


def test_a_cache_decision_too_long_for_one_call_goes_on_next_tick_and_copies_each_image_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-drop whose decision does not fit one call (a 100,000-line catalogue in a 540 s function): the
    claim decides one block of lines, each tick (its deadline already past) one more, each starting after
    the last whole block; every cached image is copied once and only the new lines are paid for."""
    monkeypatch.setattr(cache, "DECIDE_BLOCK_LINES", 10)
    monkeypatch.setattr(receive, "SUBMIT_ON_CLAIM_SECONDS", 0.0)
    run_file(pipeline, "big.jsonl", catalogue(45))
    counting = _CountingCopies(pipeline.ctx.blobs)
    ctx = dataclasses.replace(pipeline.ctx, blobs=counting)
    receipt = pipeline.drop("big.jsonl", jsonl(*catalogue(45, extra=2)), ctx)  # 47 lines: 5 blocks
    assert receipt.run is not None and receipt.run.state is RunState.RECEIVED
    run_id = receipt.run.run_id
    parts_prefix = ctx.layout(run_id).cache_decided_part(0).rpartition("/")[0] + "/"
    decided = [len(list(ctx.blobs.list(parts_prefix)))]
    for _ in range(10):
        poll.tick(ctx, run_ids=[run_id], deadline=ctx.clock())
        run = ctx.store.get_run(run_id)
        assert run is not None
        if run.state is not RunState.RECEIVED:
            break
        decided.append(len(list(ctx.blobs.list(parts_prefix))))
    assert decided == [1, 2, 3, 4]  # one block per call; the fifth, the last, ends the decision
    run = pipeline.finish(run_id, ctx)
    assert run.state is RunState.SUCCEEDED
    entries = pipeline.manifest(run)
    assert len(entries) == 47
    assert sorted(e["key"] for e in entries if "cached_from" not in e) == ["new-0", "new-1"]
    assert requests_sent(pipeline.emulator) == 45 + 2
    image_copies = {name: n for name, n in counting.copies.items() if "/images/" in name}
    assert len(image_copies) == 45 and set(image_copies.values()) == {1}
    assert set(counting.copies.values()) == {1}  # thumbnails too
    # In batches: per block of 10 lines one call for the images and one for their thumbnails.
    assert counting.batches == 2 * 5 and not [name for name in counting.singles if "/images/" in name]
    assert summary(pipeline, run)["cost"]["cached"] == 45


def test_a_cached_image_rewritten_since_is_not_served(pipeline: Pipeline) -> None:
    """The entry names one generation and size of its image: other bytes under that name are not it."""
    first = run_file(pipeline, "r.jsonl", catalogue(2))
    (pipeline.bucket / first.output_folder / "images" / "item-00.png").write_bytes(b"half an ima")
    second = run_file(pipeline, "r.jsonl", catalogue(2))
    assert requests_sent(pipeline.emulator) == 3
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert "cached_from" not in entries["item-00"] and "cached_from" in entries["item-01"]


def test_status_of_a_run_not_yet_submitted_says_what_the_cache_would_serve(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed run the poller has not submitted yet: `status` counts its lines the cache holds now."""
    run_file(pipeline, "p.jsonl", catalogue(3))
    waiting = pipeline.context(submit_on_claim_max_bytes="1")  # claimed, left to the poller
    receipt = pipeline.drop("p.jsonl", jsonl(*catalogue(3, edited=frozenset({0}))), waiting)
    assert receipt.run is not None and receipt.run.state is RunState.RECEIVED
    for name, value in pipeline.env.items():
        monkeypatch.setenv(name, value)
    status = CliRunner().invoke(app, ["status", receipt.run.run_id])
    assert status.exit_code == 0, status.output
    assert "cache: 2 line(s) would be served from the pay-once cache if submitted now" in status.output


def test_a_now_line_paid_for_before_is_served_from_the_cache_not_sent(pipeline: Pipeline) -> None:
    """The lane is not part of the request: a now line whose image was paid for is copied, not generated,
    and a now line paid for once is served to the batch lane next time."""
    lines = [{"key": "a", "prompt": "red kite", "lane": "now"}, {"key": "b", "prompt": "blue boat"}]
    first = run_file(pipeline, "n.jsonl", lines)
    assert first.state is RunState.SUCCEEDED
    assert (pipeline.emulator.server.generated, requests_sent(pipeline.emulator)) == (1, 1)
    swapped = [{"key": "a", "prompt": "red kite"}, {"key": "b", "prompt": "blue boat", "lane": "now"}]
    second = run_file(pipeline, "n.jsonl", swapped)
    assert (pipeline.emulator.server.generated, requests_sent(pipeline.emulator)) == (1, 1)
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert entries["a"]["cached_from"] == {"run_id": first.run_id, "key": "a"}
    assert entries["b"]["cached_from"] == {"run_id": first.run_id, "key": "b"}
    assert summary(pipeline, second)["cost"]["cached"] == 2


@pytest.fixture
def bundled_home(tmp_path: Path) -> Iterator[Path]:
    """A home whose CLI starts its own background (bundled) emulator; stopped at the end if still there."""
    home = tmp_path / "home"
    yield home
    record = home / "emulator" / SERVER_RECORD
    if record.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(orjson.loads(record.read_bytes())["pid"], signal.SIGTERM)


def test_images_of_the_bundled_emulator_are_never_served_to_another_endpoint_nor_the_reverse(
    tmp_path: Path, bundled_home: Path, emulator_factory: Any
) -> None:
    """`run --wait` on the bundled emulator, then the same file on a second endpoint with a key (the Gemini
    backend): every line is sent there; a second run there is served from its own images; back on the
    bundled emulator, the lines are served from the emulator's images, never the other endpoint's."""
    bundled = {
        "PATH": os.environ.get("PATH", ""),
        "COLUMNS": "200",
        **pipeline_env(bundled_home, ""),
    }
    del bundled["PROMPTDROP_GEMINI_BASE_URL"]  # the CLI starts the bundled emulator itself
    second = emulator_factory("second-endpoint", require_key=True, api_key="second-endpoint-key")
    gateway = {
        **bundled,
        "PROMPTDROP_BACKEND": "gemini",
        "GEMINI_API_KEY": "second-endpoint-key",
        "PROMPTDROP_GEMINI_BASE_URL": second.url,
    }
    lines = catalogue(4)
    (tmp_path / "c.jsonl").write_bytes(jsonl(*lines))

    def run(env: dict[str, str]) -> list[dict[str, Any]]:
        done = promptdrop(env, "run", "c.jsonl", "--wait", cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.splitlines()[0].strip()
        manifest = read_jsonl(bundled_home / "bucket" / "outputs" / run_id / "manifest.jsonl")
        assert [e["status"] for e in manifest] == ["succeeded"] * len(lines)
        return manifest

    on_emulator = run(bundled)
    assert not any("cached_from" in e for e in on_emulator)
    on_gateway = run(gateway)
    assert requests_sent(second) == len(lines)  # every line sent to the second endpoint
    assert not any("cached_from" in e for e in on_gateway)
    again = run(gateway)  # the same endpoint shares its entries, as before
    assert requests_sent(second) == len(lines)
    assert all("cached_from" in e for e in again)
    paid_on_emulator = {e["image"].split("/")[1] for e in on_emulator}
    back = run(bundled)
    assert {e["cached_from"]["run_id"] for e in back} == paid_on_emulator


@pytest.mark.parametrize("uploaded", [False, True], ids=["inlined", "uploaded"])
def test_a_reference_image_rewritten_between_hash_and_read_is_sent_and_recorded_as_one_version(
    pipeline: Pipeline, uploaded: bool
) -> None:
    """The folder bucket: the bytes sent are those of the generation hashed; a rewrite in between makes the
    submission try again, which hashes and sends the new version (tests/support/reference_rewrite.py)."""
    ctx = pipeline.context(inline_image_max_bytes=16) if uploaded else pipeline.ctx
    rewritten_between_hash_and_send(ctx, uploaded=uploaded)


class _CacheCalls:
    """A pay-once cache that counts the calls made to it by name, and 'dies' once, at the ``kill_at``-th
    call of ``kill_on`` (its writes so far stay)."""

    def __init__(self, inner: Any, kill_on: str = "", kill_at: int = 0) -> None:
        self.inner, self.kill_on, self.kill_at = inner, kill_on, kill_at
        self.calls: Counter[str] = Counter()
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == self.kill_on and self.calls[name] == self.kill_at:
                self.fired = True
                raise _KilledOnce(name)
            return method(*args, **kwargs)

        return counted


def _fingerprints(pipeline: Pipeline, lines: list[dict[str, Any]]) -> list[str]:
    digests = ImageDigests(pipeline.ctx)
    parsed = prompts.parse_prompt_file(
        io.BytesIO(jsonl(*lines)), "jsonl", prompts.ParseOptions(default_model=MODEL)
    )
    found = [digests.fingerprint(p, MODEL) for p in parsed if isinstance(p, prompts.PromptRequest)]
    assert None not in found
    return [fp for fp in found if fp is not None]


def test_settle_records_and_releases_a_runs_lines_in_batched_calls(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 new lines, fill blocks of 5: the requests are claimed in 1 batched call, the entries created in 3
    and the claims released in 3, never one call per line (one by one it was 12, 12 and 12)."""
    monkeypatch.setattr(cache, "FILL_BLOCK", 5)
    counting = _CacheCalls(pipeline.ctx.paid_images)
    ctx = dataclasses.replace(pipeline.ctx, paid_images=counting)
    lines = catalogue(12)
    receipt = pipeline.drop("batched.jsonl", jsonl(*lines), ctx)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.SUCCEEDED
    assert (counting.calls["put_many"], counting.calls["release_in_flight_many"]) == (3, 3)
    assert counting.calls["claim_in_flight_many"] == 1
    singles = ("put", "release_in_flight", "claim_in_flight")
    assert [counting.calls[name] for name in singles] == [0, 0, 0]
    fingerprints = _fingerprints(pipeline, lines)
    entries = pipeline.ctx.paid_images.get_many(fingerprints)
    assert len(entries) == 12 and {entry.run_id for entry in entries.values()} == {run.run_id}
    assert pipeline.ctx.paid_images.in_flight_many(fingerprints) == {}


@pytest.mark.parametrize("kill_on", ["put_many", "release_in_flight_many"])
def test_a_settle_killed_between_two_batches_of_the_fill_is_finished_by_the_next_tick(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, kill_on: str
) -> None:
    """Killed after the first block of entries (or of releases) is written: the next tick settles again,
    every line gets its entry once, no claim is left, and a re-drop is served wholly from the cache."""
    monkeypatch.setattr(cache, "FILL_BLOCK", 5)
    killing = _CacheCalls(pipeline.ctx.paid_images, kill_on=kill_on, kill_at=2)
    ctx = dataclasses.replace(pipeline.ctx, paid_images=killing)
    lines = catalogue(12)
    receipt = pipeline.drop("killed.jsonl", jsonl(*lines), ctx)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert killing.fired and run.state is RunState.SUCCEEDED
    assert len(pipeline.manifest(run)) == 12
    fingerprints = _fingerprints(pipeline, lines)
    entries = pipeline.ctx.paid_images.get_many(fingerprints)
    assert len(entries) == 12 and {entry.run_id for entry in entries.values()} == {run.run_id}
    assert pipeline.ctx.paid_images.in_flight_many(fingerprints) == {}
    again = run_file(pipeline, "killed.jsonl", lines)
    assert sum("cached_from" in e for e in pipeline.manifest(again)) == 12
    assert requests_sent(pipeline.emulator) == 12
