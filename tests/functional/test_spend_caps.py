"""Spend caps across runs on the local path, through the CLI: the SQLite ledger, the bundled emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.functional.conftest import jsonl
from tests.functional.test_cli import TERMINAL, batches, cli_env, promptdrop, status_json


def test_a_run_over_the_daily_cap_waits_and_status_shows_the_spend_against_the_cap(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """A $0.10 day: a 1-line run (about $0.067) runs; a 2-line run waits in RECEIVED with the reason and
    sends nothing; `status` shows the day's spend against the cap; with the cap raised it runs."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_MAX_SPEND_USD_PER_DAY="0.10")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_bytes(jsonl({"prompt": "a red kite", "key": "kite"}))
    two.write_bytes(
        jsonl({"prompt": "a blue boat", "key": "boat"}, {"prompt": "a green hill", "key": "hill"})
    )

    first = promptdrop(env, "run", str(one), "--wait", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    waiting = promptdrop(env, "run", str(two), cwd=tmp_path)
    assert waiting.returncode == 0, waiting.stderr
    run_id = waiting.stdout.strip()
    held = status_json(env, tmp_path, run_id)
    assert held["state"] == "RECEIVED"
    assert len(batches(emulator)) == 1

    table = promptdrop(env, "status", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    text = " ".join(table.stdout.split())
    assert "PROMPTDROP_MAX_SPEND_USD_PER_DAY" in text and "of $0.1000" in text
    detail = " ".join(promptdrop(env, "status", run_id, cwd=tmp_path).stdout.split())
    assert "waiting for the spend cap" in detail and "PROMPTDROP_MAX_SPEND_USD_PER_DAY=$0.10" in detail

    raised = {**env, "PROMPTDROP_MAX_SPEND_USD_PER_DAY": "1"}
    for _ in range(20):
        assert promptdrop(raised, "serve", "--once", cwd=tmp_path).returncode == 0
        if status_json(raised, tmp_path, run_id)["state"] in TERMINAL:
            break
    assert status_json(raised, tmp_path, run_id)["state"] == "SUCCEEDED"
    assert len(batches(emulator)) == 2
