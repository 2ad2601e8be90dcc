"""The budget cap is never skipped: a line without a known price counts at the highest known price for its
image size, a line on a model the API does not serve counts nothing, and `run --dry-run` shows the figure the
run is held against. Through the CLI as a user runs it, against an in-process emulator."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.models import BATCH_DISCOUNT, model_spec
from tests.functional.conftest import jsonl, read_jsonl
from tests.functional.test_cli import batches, cli_env, outputs, promptdrop

POSTERS = [
    {"key": f"poster-{n:02d}", "prompt": f"a film poster number {n}", "image_size": "4K"} for n in range(20)
]
UNPRICED = {"key": "lite", "prompt": "a small lite sketch", "model": "gemini-3.1-flash-lite-image"}
TYPO = {"key": "typo", "prompt": "a typo'd model", "model": "gemini-3-pro-imge"}


def batch_price(model: str, line: dict[str, Any]) -> float:
    """One line's batch estimate from the model table: its image at the image output rate, its prompt
    (chars / 4 tokens) at the text input rate, half of both (worked out here, apart from promptdrop.cost)."""
    spec = model_spec(model)
    assert spec is not None and spec.rates is not None
    size = line.get("image_size", spec.default_size)
    interactive = (
        spec.image_tokens[size] * spec.rates.image_output
        + math.ceil(len(line["prompt"]) / 4) * spec.rates.text_input
    ) / 1_000_000
    return interactive * BATCH_DISCOUNT


@pytest.mark.parametrize("extra", [[UNPRICED], [UNPRICED, TYPO]], ids=["unpriced", "unpriced-and-typo"])
def test_an_unpriced_line_counts_at_the_highest_known_price_and_the_cap_refuses_before_any_request(
    tmp_path: Path, emulator_factory: Any, extra: list[dict[str, str]]
) -> None:
    """Cap $0.01, twenty 4K lines plus a line on a model without a price (and a line on a typo'd model):
    the run is FAILED with the reason, the unpriced line counted at gemini-3-pro-image's 1K batch price (the
    highest known for 1K), the typo counted at nothing; no request reaches the emulator, and the dry run
    printed the same figure; the typo'd line ends `invalid` (`unknown_model`), the others `budget_exceeded`."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_MAX_COST_USD="0.01")
    prompt_file = tmp_path / "posters.jsonl"
    prompt_file.write_bytes(jsonl(*POSTERS, *extra))
    # The unpriced 1K line at the dearest 1K price the table knows: gemini-3-pro-image's.
    expected = sum(batch_price("gemini-3-pro-image", line) for line in [*POSTERS, UNPRICED])
    note = (
        "1 line(s) without a known price counted at the highest known price for their image size: "
        "1 on gemini-3.1-flash-lite-image at $0.0672 per 1K image (batch) plus input"
    )

    dry = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)

    assert dry.returncode == 1, dry.stdout + dry.stderr
    shown = re.search(r"estimated total: \$([0-9.,]+)", dry.stdout)
    assert shown is not None, dry.stdout
    assert float(shown.group(1)) == pytest.approx(expected, abs=0.00006)
    assert note in dry.stdout
    assert "it would be refused" in dry.stdout
    assert f"{21} valid, {len(extra) - 1} invalid line(s)" in dry.stdout

    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == 1, done.stdout + done.stderr
    run_id = done.stdout.splitlines()[0].strip()
    summary = orjson.loads((outputs(home, run_id) / "summary.json").read_bytes())
    assert summary["state"] == "FAILED"
    reason = summary["reason"]
    assert (
        f"estimated cost ${shown.group(1)} exceeds the budget cap PROMPTDROP_MAX_COST_USD=$0.0100" in reason
    )
    assert note in reason
    assert "reason: estimated cost" in done.stdout
    entries = {entry["key"]: entry for entry in read_jsonl(outputs(home, run_id) / "manifest.jsonl")}
    assert {entries[line["key"]]["error"]["code"] for line in [*POSTERS, UNPRICED]} == {"budget_exceeded"}
    if TYPO in extra:  # decided before the estimate: it ends invalid, not over the budget
        assert (entries["typo"]["status"], entries["typo"]["error"]["code"]) == ("invalid", "unknown_model")
    # Nothing reached the emulator: no batch, no generate call.
    assert batches(emulator) == []
    assert emulator.server.generated == 0


def test_a_cap_above_the_estimate_with_an_unpriced_line_lets_the_run_through(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """The unpriced line's stand-in price is an estimate only: under the cap, the run is sent as usual."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    lines = [POSTERS[0], UNPRICED]
    cap = sum(batch_price("gemini-3-pro-image", line) for line in lines) + 0.001
    env = cli_env(home, emulator, PROMPTDROP_MAX_COST_USD=f"{cap:.4f}")
    prompt_file = tmp_path / "two.jsonl"
    prompt_file.write_bytes(jsonl(*lines))

    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED" in done.stdout
    assert len(batches(emulator)) >= 1


def test_a_served_model_the_table_lacks_counts_at_the_highest_known_price(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """A model the API serves that promptdrop's table lacks has no price: with a cap a hair under the
    run's figure (its line at gemini-3-pro-image's 2K batch price), the run is refused and nothing sent."""
    emulator = emulator_factory(serve_models=("gemini-9-imaginary-image",))
    home = tmp_path / "home"
    line = {
        "key": "new",
        "prompt": "a model from next year",
        "model": "gemini-9-imaginary-image",
        "image_size": "2K",
    }
    figure = batch_price("gemini-3-pro-image", line)
    env = cli_env(home, emulator, PROMPTDROP_MAX_COST_USD=f"{figure - 0.0001:.4f}")
    prompt_file = tmp_path / "next.jsonl"
    prompt_file.write_bytes(jsonl(line))

    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"estimated cost ${figure:.4f} exceeds the budget cap" in done.stdout
    assert "1 on gemini-9-imaginary-image at $0.0672 per 2K image (batch) plus input" in done.stdout
    assert batches(emulator) == []
    assert emulator.server.generated == 0
