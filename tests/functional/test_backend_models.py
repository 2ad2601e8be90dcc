"""The model table per backend through the CLI: `run --dry-run` with PROMPTDROP_BACKEND=vertex against the bundled
emulator refuses what Vertex AI batch does not take in its location and says what Google's pages leave unconfirmed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import jsonl
from tests.functional.test_cli import batches, cli_env, promptdrop


def vertex_env(home: Path, emulator: Any, location: str) -> dict[str, str]:
    """The CLI on Vertex AI: the emulator's Vertex routes, anonymous credentials, no API key."""
    return cli_env(
        home,
        emulator,
        PROMPTDROP_BACKEND="vertex",
        PROMPTDROP_VERTEX_PROJECT="demo-project",
        PROMPTDROP_VERTEX_LOCATION=location,
        PROMPTDROP_VERTEX_BASE_URL=emulator.url,
    )


def vertex_dry_run(
    tmp_path: Path, emulator: Any, location: str, *lines: dict[str, str]
) -> tuple[str, str, int]:
    """`run --dry-run` of ``lines`` on Vertex AI in ``location``: (stdout, stderr) with whitespace runs made
    single spaces (rich wraps), and the exit code."""
    prompt_file = tmp_path / "vertex.jsonl"
    prompt_file.write_bytes(jsonl(*lines))
    env = vertex_env(tmp_path / "home", emulator, location)
    done = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)
    return " ".join(done.stdout.split()), " ".join(done.stderr.split()), done.returncode


def test_vertex_dry_run_refuses_a_model_outside_its_batch_locations_and_notes_unconfirmed_sizes(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """In location ``eu``, gemini-3-pro-image (Vertex batch in ``global`` only) is invalid with a reason naming
    the backend and location; gemini-3.1-flash-image (``global``, ``us``, ``eu``) runs, and its 2K line runs
    with one notice that the size is unconfirmed in Vertex batch (two 2K lines, one notice)."""
    emulator = emulator_factory()

    stdout, stderr, code = vertex_dry_run(
        tmp_path,
        emulator,
        "eu",
        {"key": "pro", "prompt": "a red apple", "model": "gemini-3-pro-image"},
        {"key": "flash", "prompt": "a green pear", "model": "gemini-3.1-flash-image"},
        {"key": "big", "prompt": "a blue plum", "model": "gemini-3.1-flash-image", "image_size": "2K"},
        {"key": "big2", "prompt": "a ripe fig", "model": "gemini-3.1-flash-image", "image_size": "2K"},
    )

    assert code == 0, stderr
    assert "3 valid, 1 invalid line(s)" in stdout
    assert (
        "line 1: location_unsupported gemini-3-pro-image takes batch on Vertex AI only in location global; "
        "PROMPTDROP_VERTEX_LOCATION=eu" in stderr
    )
    notices = re.findall(
        r"model notice: gemini-3\.1-flash-image: image_size (\S+) in Vertex AI batch is unconfirmed", stderr
    )
    assert notices == ["2K"]  # the 1K line is confirmed; the 2K lines are said once
    # Vertex AI's price for gemini-3.1-flash-image, $60/M image output tokens, half in batch: one 1K image
    # (1120 tokens) and two 2K (1680 each) = $0.1344 (the few prompt tokens stay under the 4th decimal);
    # the refused line counts nothing.
    assert "estimated batch cost: $0.1344 (3 batch line(s))" in stdout
    assert batches(emulator) == []


def test_vertex_dry_run_in_global_takes_gemini_3_pro_image_and_prices_an_unpriced_model_as_unknown(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """In ``global`` gemini-3-pro-image runs at 1K without a notice; gemini-2.5-flash-image, whose Vertex batch
    and Vertex price no page gives, runs with a notice and counts as a line without a known price (never at
    the Gemini API's price, a guess on Vertex)."""
    stdout, stderr, code = vertex_dry_run(
        tmp_path,
        emulator_factory(),
        "global",
        {"key": "pro", "prompt": "a red apple", "model": "gemini-3-pro-image"},
        {"key": "old", "prompt": "a green pear", "model": "gemini-2.5-flash-image"},
    )

    assert code == 0, stderr
    assert "2 valid, 0 invalid line(s)" in stdout
    assert "gemini-3-pro-image:" not in stderr
    assert (
        "model notice: gemini-2.5-flash-image: no Google page says whether Vertex AI batch takes it" in stderr
    )
    # The budget cap counts the unpriced line at the highest Vertex price of a 1K image (3 Pro Image's), and
    # says so; the Gemini API's $0.0195 for a 2.5 Flash Image line is not used.
    assert (
        "note: 1 line(s) without a known price counted at the highest known price for their image size: "
        "1 on gemini-2.5-flash-image at $0.0672 per 1K image (batch) plus input" in stdout
    )


def test_models_command_shows_what_vertex_batch_takes_per_model(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """`promptdrop models --json` joins each model's Vertex AI batch facts: locations, confirmed sizes, and
    Vertex's price per image (null where Vertex publishes none)."""
    emulator = emulator_factory()
    done = promptdrop(cli_env(tmp_path / "home", emulator), "models", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["model"]: row for row in json.loads(done.stdout)["models"]}
    pro = rows["gemini-3-pro-image"]["vertex"]
    assert (pro["batch"], pro["locations"], pro["confirmed_sizes"]) == (True, ["global"], ["1K"])
    assert pro["price_per_image"]["1K"]["batch"] == pytest.approx(0.0672)
    flash = rows["gemini-3.1-flash-image"]["vertex"]
    assert flash["locations"] == ["global", "us", "eu"]
    old = rows["gemini-2.5-flash-image"]
    assert old["vertex"]["batch"] is None and old["vertex"]["price_per_image"]["1K"]["batch"] is None
    assert old["price_per_image"]["1K"]["batch"] == pytest.approx(0.01935)  # the Gemini API's own
