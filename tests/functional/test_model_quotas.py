"""Enqueued-token quotas per model and tier: jobs split by the model's quota (from the table), and a 429 on
create while under our own count lowers what we aim for instead of retrying at the same size."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from promptdrop.models import enqueued_token_budget
from tests.functional.conftest import Pipeline, jsonl, read_jsonl
from tests.functional.test_cli import batches, cli_env, outputs, promptdrop

PRO, FLASH = "gemini-3-pro-image", "gemini-3.1-flash-image"
# About 15,000 input tokens per line (4 characters a token) plus its image: 60 lines hold ~0.97M tokens.
LONG = "a lighthouse on a cliff at dusk, " * 1800


def _jobs_per_model(pipeline: Pipeline, tier: str) -> dict[str, list[int]]:
    ctx = pipeline.context(tier=int(tier))
    counts = {PRO: 140, FLASH: 70}  # ~2.2M and ~1.1M tokens
    lines = [
        {"key": f"{model}-{i}", "prompt": f"{LONG} {i}", "model": model}
        for model, n in counts.items()
        for i in range(n)
    ]
    receipt = pipeline.drop(f"tier{tier}.jsonl", jsonl(*lines), ctx)
    assert receipt.run is not None
    tokens: dict[str, list[int]] = {}
    for job in ctx.store.list_jobs(receipt.run.run_id):
        tokens.setdefault(job.model, []).append(job.estimated_tokens)
    return tokens


@pytest.mark.parametrize("tier", ["1", "2"])
def test_jobs_split_by_each_models_quota_at_the_tier(pipeline: Pipeline, tier: str) -> None:
    """Tier 1: 3.1 Flash Image's 1,000,000 and Pro's 2,000,000 split their ~1.05M and ~2.1M tokens in two
    jobs each; Tier 2 (250M / 270M) keeps one job each (one 2,000,000 for every model split Pro at every tier)."""
    tokens = _jobs_per_model(pipeline, tier)
    total = {model: sum(parts) for model, parts in tokens.items()}
    assert 1_000_000 < total[FLASH] < 2_000_000 < total[PRO] < 4_000_000
    for model, parts in tokens.items():
        assert all(part <= enqueued_token_budget(model, int(tier)) for part in parts)  # type: ignore[arg-type]
    expected = {"1": {FLASH: 2, PRO: 2}, "2": {FLASH: 1, PRO: 1}}[tier]
    assert {model: len(parts) for model, parts in tokens.items()} == expected


def test_a_429_on_create_under_our_count_lowers_the_aim(tmp_path: Path, emulator_factory: Any) -> None:
    """The API holds fewer enqueued tokens than our quota says: the third create gets 429 once, the aim drops
    to what the API holds, and that job waits for room instead of being sent again at the same size."""
    # Each job: 2 requests of 1120 tokens as the emulator counts them; it refuses past 5,000 per model.
    emulator = emulator_factory(pending_seconds=0.1, running_seconds=2.0, enqueued_token_limit=5_000)
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_MAX_REQUESTS_PER_JOB="2")
    (tmp_path / "six.jsonl").write_bytes(jsonl(*({"key": f"k{i}", "prompt": f"boat {i}"} for i in range(6))))
    done = promptdrop(env, "run", "six.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    manifest = read_jsonl(outputs(home, run_id) / "manifest.jsonl")
    assert [entry["status"] for entry in manifest] == ["succeeded"] * 6
    assert len(batches(emulator)) == 3
    refusals = done.stderr.count("create refused with 429 while under our enqueued-token count")
    assert refusals == 1, done.stderr
    # The aim drops from Tier 1's 2,000,000 to what the two accepted jobs hold (2 x 2 images + prompts).
    aim = re.search(rf"aiming at (\d+) enqueued tokens for {PRO} from now \(was 2000000\)", done.stderr)
    assert aim is not None and 4480 <= int(aim.group(1)) < 5000, done.stderr
    assert done.stderr.count("Enqueued token limit exceeded") == 1
