"""`promptdrop report` through the CLI: per day and model, the sums of the runs' summary.json figures."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.functional.conftest import jsonl
from tests.functional.test_cli import cli_env, outputs, promptdrop


def test_report_json_adds_up_the_summaries_of_the_runs_per_day_and_model(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """Three runs: two models, a safety failure, a now line and a re-run served from the cache: every figure
    of `report --json` is the sum of the runs' summary.json `by_model` for that model."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    first = tmp_path / "first.jsonl"
    first.write_bytes(
        jsonl(
            {"prompt": "a red kite", "key": "kite"},
            {"prompt": "[[emulator:safety]] blocked", "key": "blocked"},
            {"prompt": "a fast boat", "key": "boat", "lane": "now"},
            {"prompt": "a 2.5 lamp", "key": "lamp", "model": "gemini-2.5-flash-image"},
        )
    )
    second = tmp_path / "second.jsonl"
    second.write_bytes(
        jsonl({"prompt": "a red kite", "key": "kite-again"}, {"prompt": "a hill", "key": "hill"})
    )
    run_ids = []
    for path in (first, second):
        done = promptdrop(env, "run", str(path), "--wait", cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        run_ids.append(done.stdout.strip().splitlines()[0])

    summaries = [orjson.loads((outputs(home, run_id) / "summary.json").read_bytes()) for run_id in run_ids]
    expected: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
    for summary in summaries:
        for model, use in summary["by_model"].items():
            row = expected[model]
            row["runs"] += 1
            for name in ("lines", "images", "cached", "batch", "now", "interactive", "saved_by_cache"):
                row[name] += use[name]
    # The lamp ran on whatever the table and the emulator make of the 2.5 id: a second model either way.
    assert len(expected) == 2 and "gemini-3-pro-image" in expected
    assert expected["gemini-3-pro-image"]["cached"] == 1
    assert expected["gemini-3-pro-image"]["now"] > 0

    done = promptdrop(env, "report", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)["rows"]
    assert {row["day"] for row in rows} == {summaries[0]["finished_at"][:10]}
    assert {row["model"]: row["runs"] for row in rows} == {m: e["runs"] for m, e in expected.items()}
    for row in rows:
        want = expected[row["model"]]
        for name in ("lines", "images", "cached"):
            assert row[name] == want[name], (row["model"], name)
        for name in ("batch", "now", "interactive", "saved_by_cache"):
            assert row[name] == pytest.approx(want[name], abs=1e-6), (row["model"], name)
        assert row["saved"] == pytest.approx(want["interactive"] - want["batch"], abs=1e-6)
    # The runs' own totals are the sums over their models.
    for summary in summaries:
        assert summary["cost"]["batch"] == pytest.approx(
            sum(u["batch"] for u in summary["by_model"].values())
        )
        assert summary["cost"]["now"] == pytest.approx(sum(u["now"] for u in summary["by_model"].values()))

    text = promptdrop(env, "report", "--since", "1d", cwd=tmp_path)
    assert text.returncode == 0 and "gemini-3-pro-image" in text.stdout
    bad = promptdrop(env, "report", "--since", "forever", cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr
