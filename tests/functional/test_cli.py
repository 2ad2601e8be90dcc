"""The `promptdrop` command line as a user runs it: a subprocess on the embedded defaults and an in-process emulator."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.models import BATCH_DISCOUNT, model_spec
from promptdrop.settings import Settings
from promptdrop.testing.emulator import RunningEmulator
from tests.functional.conftest import billed, jsonl, pipeline_env, read_jsonl

CLI = [sys.executable, "-m", "promptdrop.cli"]
TERMINAL = {"SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED"}


def cli_env(home: Path, emulator: RunningEmulator, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: nothing inherited but PATH (no stray GEMINI_API_KEY)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",  # the run id shows before `run --wait` ends
        "COLUMNS": "200",  # rich wraps at 80 columns when it cannot ask a terminal
        **pipeline_env(home, emulator.url),
        **extra,
    }


def promptdrop(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to its end."""
    return subprocess.run(
        [*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def promptdrop_started(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start the real CLI in the background (text pipes): the caller talks to it and waits for it."""
    return subprocess.Popen(
        [*CLI, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def batches(emulator: RunningEmulator) -> list[Any]:
    """Every batch job the emulator holds (the client stays alive while the pager runs)."""
    client = emulator.client()
    return list(client.batches.list(config={"page_size": 50}))


def status_json(env: dict[str, str], cwd: Path, *run_id: str) -> Any:
    done = promptdrop(env, "status", *run_id, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def outputs(home: Path, run_id: str) -> Path:
    return home / "bucket" / "outputs" / run_id


# What neither `--help` nor `status` needs (issue 22: they start in under 0.3 s): the use cases and PIL through
# the gallery, the webhook listener (http.server), the browser, the progress bar, the emulator's launcher.
NOT_AT_START = (
    "PIL",
    "promptdrop.usecases.poll",
    "promptdrop.usecases.gallery",
    "promptdrop.reporting",
    "promptdrop.emulator.launcher",
    "http.server",
    "webbrowser",
    "rich.progress",
)


def imported_by(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI under ``-X importtime`` and return the modules the process imported (from its stderr)."""
    env = {"PATH": os.environ.get("PATH", ""), "PROMPTDROP_HOME": str(home), "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *CLI[1:], *args],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = {
        line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    return done, names


@pytest.mark.parametrize(
    ("args", "said", "needed", "absent"),
    [
        pytest.param(
            ["--help"],
            "status",
            {"typer", "promptdrop.errors"},
            (*NOT_AT_START, "pydantic", "promptdrop.settings", "promptdrop.records", "promptdrop.wiring"),
            id="help",
        ),
        pytest.param(
            ["status"],
            "no runs yet",
            {"promptdrop.settings", "promptdrop.records", "promptdrop.adapters.sqlite_store"},
            (*NOT_AT_START, "promptdrop.manifest", "promptdrop.usecases.submit", "rich._emoji_codes"),
            id="status",
        ),
    ],
)
def test_help_and_status_import_only_what_they_use(
    tmp_path: Path, args: list[str], said: str, needed: set[str], absent: tuple[str, ...]
) -> None:
    """The start-up of `--help` and of `status` on an empty state folder: the modules of other commands are
    imported inside those commands (the count of modules, not a time: timing flakes on a shared machine)."""
    done, names = imported_by(tmp_path / "home", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert said in done.stdout
    assert needed <= names  # the import log was read
    assert sorted(names & set(absent)) == []


GOOD = {"key": "apple", "prompt": "a red apple"}
GOOD_2 = {"key": "pear", "prompt": "a green pear", "aspect_ratio": "16:9"}
BAD_RATIO = {"key": "odd", "prompt": "odd ratio", "aspect_ratio": "5:7"}


@pytest.mark.parametrize(
    ("lines", "extra_env", "state", "exit_code", "images"),
    [
        pytest.param([GOOD, GOOD_2], {}, "SUCCEEDED", 0, ["apple.png", "pear.png"], id="succeeded"),
        pytest.param([GOOD, BAD_RATIO], {}, "PARTIAL", 0, ["apple.png"], id="partial"),
        pytest.param([BAD_RATIO, {"key": "empty", "prompt": ""}], {}, "FAILED", 1, [], id="all-invalid"),
        pytest.param(
            [GOOD, GOOD_2], {"PROMPTDROP_MAX_COST_USD": "0.05"}, "FAILED", 1, [], id="over-budget-cap"
        ),
    ],
)
def test_run_wait_exit_code_follows_the_final_state(
    tmp_path: Path,
    emulator_factory: Any,
    lines: list[dict[str, str]],
    extra_env: dict[str, str],
    state: str,
    exit_code: int,
    images: list[str],
) -> None:
    """`run FILE --wait` prints the run id, exits 0 for SUCCEEDED/PARTIAL and 1 for FAILED, and leaves the outputs."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator, **extra_env)
    prompt_file = tmp_path / "fruit.jsonl"
    prompt_file.write_bytes(jsonl(*lines))

    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == exit_code, done.stderr
    run_id = done.stdout.splitlines()[0].strip()
    assert re.fullmatch(r"fruit-[0-9a-f]{8}", run_id)
    assert state in done.stdout
    folder = outputs(home, run_id)
    summary = orjson.loads((folder / "summary.json").read_bytes())
    assert summary["run_id"] == run_id and summary["state"] == state
    assert len(read_jsonl(folder / "manifest.jsonl")) == len(lines)
    found = sorted(p.name for p in (folder / "images").iterdir()) if (folder / "images").exists() else []
    assert found == images
    if "PROMPTDROP_MAX_COST_USD" in extra_env:
        assert "budget cap" in summary["reason"]
        assert batches(emulator) == []


def test_run_wait_exits_1_when_the_run_is_cancelled(tmp_path: Path, emulator_factory: Any) -> None:
    """`promptdrop cancel` from another process ends a waiting `run --wait` as CANCELLED with exit code 1."""
    emulator = emulator_factory(pending_seconds=120.0)
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "slow.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2))

    waiting = promptdrop_started(env, "run", str(prompt_file), "--wait", cwd=tmp_path)
    try:
        assert waiting.stdout is not None
        run_id = waiting.stdout.readline().strip()
        cancelled = promptdrop(env, "cancel", run_id, cwd=tmp_path)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel requested" in cancelled.stdout
        rest, errors = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()

    assert waiting.returncode == 1, errors
    assert "CANCELLED" in rest
    summary = orjson.loads((outputs(home, run_id) / "summary.json").read_bytes())
    assert summary["state"] == "CANCELLED"
    entries = read_jsonl(outputs(home, run_id) / "manifest.jsonl")
    assert [e["error"]["code"] for e in entries] == ["cancelled", "cancelled"]
    (batch,) = batches(emulator)
    assert batch.state == "JOB_STATE_CANCELLED"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["run", "{tmp}/missing.jsonl"], "does not exist", id="missing-file"),
        pytest.param(["run", "--bogus", "{tmp}/prompts.jsonl"], "No such option", id="unknown-option"),
        pytest.param(["run", "{tmp}/prompts.csv"], "not a prompt file", id="csv-file"),
        pytest.param(["extract", "{tmp}/prompts.jsonl"], "--out", id="extract-without-out"),
    ],
)
def test_usage_errors_exit_2_and_submit_nothing(
    tmp_path: Path, emulator_factory: Any, args: list[str], message: str
) -> None:
    """A missing file, an unknown option or a file that is not a prompt file is a usage error: exit 2."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    (tmp_path / "prompts.jsonl").write_bytes(jsonl(GOOD))
    (tmp_path / "prompts.csv").write_bytes(b"a,b,c\n")

    done = promptdrop(env, *(arg.format(tmp=tmp_path) for arg in args), cwd=tmp_path)

    assert done.returncode == 2, done.stdout + done.stderr
    assert message in " ".join((done.stdout + done.stderr).split())
    assert not (home / "bucket" / "inbox").exists()
    assert batches(emulator) == []


def test_dry_run_prints_count_and_costs_and_submits_nothing(tmp_path: Path, emulator_factory: Any) -> None:
    """`run --dry-run` validates and estimates: counts, batch cost, interactive cost; no run, no batch, no inbox file."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "estimate.jsonl"
    # A long prompt makes the input's share of the estimate visible at the four decimals printed.
    big = {"key": "big", "prompt": "a poster of " + "kites " * 700, "image_size": "4K"}
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2, BAD_RATIO, big))

    done = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "3 valid, 1 invalid line(s)" in done.stdout
    assert "line 3:" in done.stderr and "bad_aspect_ratio" in done.stderr
    batch = re.search(r"estimated batch cost: \$([0-9.]+)", done.stdout)
    interactive = re.search(r"interactive API: \$([0-9.]+)", done.stdout)
    assert batch is not None and interactive is not None
    # Each valid line: its size's image tokens at the image output rate, plus its prompt (chars / 4 tokens)
    # at the text input rate, both from the model table; the Batch API bills half. Printed to 4 decimals.
    spec = model_spec(Settings.from_env(env).model)
    assert spec is not None and spec.rates is not None
    expected = sum(
        (
            spec.image_tokens[line.get("image_size", spec.default_size)] * spec.rates.image_output
            + math.ceil(len(line["prompt"]) / 4) * spec.rates.text_input
        )
        / 1_000_000
        for line in (GOOD, GOOD_2, big)
    )
    assert float(interactive.group(1)) == pytest.approx(expected, abs=0.00006)
    assert float(batch.group(1)) == pytest.approx(expected * BATCH_DISCOUNT, abs=0.00006)
    assert status_json(env, tmp_path) == []
    assert batches(emulator) == []
    assert not (home / "bucket" / "inbox").exists()


@pytest.mark.parametrize(("margin", "refused"), [(-0.0001, True), (0.0001, False)], ids=["below", "above"])
def test_dry_run_over_the_budget_cap_says_it_would_be_refused(
    tmp_path: Path, emulator_factory: Any, margin: float, refused: bool
) -> None:
    """A dry run whose batch estimate exceeds PROMPTDROP_MAX_COST_USD says so and exits 1; a cap a hair over
    that estimate (still under the interactive price) is fine; nothing is submitted either way."""
    emulator = emulator_factory()
    prompts = ["one", "two", "three"]
    spec = model_spec(Settings.from_env(cli_env(tmp_path / "home", emulator)).model)
    assert spec is not None and spec.rates is not None
    estimate = BATCH_DISCOUNT * sum(
        spec.tokens_for(spec.default_size) * spec.rates.image_output / 1_000_000
        + math.ceil(len(prompt) / 4) * spec.rates.text_input / 1_000_000
        for prompt in prompts
    )
    cap = str(round(estimate + margin, 6))
    env = cli_env(tmp_path / "home", emulator, PROMPTDROP_MAX_COST_USD=cap)
    prompt_file = tmp_path / "pricey.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")

    done = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)

    assert done.returncode == (1 if refused else 0), done.stdout + done.stderr
    assert "3 valid, 0 invalid line(s)" in done.stdout
    assert ("would be refused" in done.stdout) is refused
    assert batches(emulator) == []


def test_dry_run_splits_the_cost_by_lane_and_says_when_the_now_cap_refuses(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """Batch lines at the batch price with their saving, now lines at the interactive price, and the total;
    more now lines than PROMPTDROP_MAX_NOW_LINES would be refused."""
    emulator = emulator_factory()
    spec = model_spec(Settings.from_env(cli_env(tmp_path / "home", emulator)).model)
    assert spec is not None and spec.rates is not None

    def interactive(prompt: str) -> float:
        image = spec.tokens_for(spec.default_size) * spec.rates.image_output  # type: ignore[union-attr]
        return (image + math.ceil(len(prompt) / 4) * spec.rates.text_input) / 1_000_000  # type: ignore[union-attr]

    prompt_file = tmp_path / "mixed.jsonl"
    prompt_file.write_bytes(
        jsonl(GOOD, {**GOOD_2, "lane": "now"}, {"key": "plum", "prompt": "a plum", "lane": "now"})
    )
    env = cli_env(tmp_path / "home", emulator)
    done = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 valid, 0 invalid line(s); 1 batch, 2 now" in done.stdout
    figures = {
        name: float(value)
        for name, value in re.findall(
            r"(estimated batch cost|estimated now cost|estimated total): \$([0-9.]+)", done.stdout
        )
    }
    batch = interactive(GOOD["prompt"]) * BATCH_DISCOUNT
    now = interactive("a green pear") + interactive("a plum")
    assert figures["estimated batch cost"] == pytest.approx(batch, abs=0.00006)
    assert figures["estimated now cost"] == pytest.approx(now, abs=0.00006)
    assert figures["estimated total"] == pytest.approx(batch + now, abs=0.00006)

    capped = promptdrop(
        cli_env(tmp_path / "home", emulator, PROMPTDROP_MAX_NOW_LINES="1"),
        "run",
        str(prompt_file),
        "--dry-run",
        cwd=tmp_path,
    )
    assert capped.returncode == 1
    assert "2 now lines, over PROMPTDROP_MAX_NOW_LINES=1: it would be refused" in capped.stdout
    assert batches(emulator) == []


def test_run_then_status_then_serve_see_the_same_jobs(tmp_path: Path, emulator_factory: Any) -> None:
    """`run` without --wait submits; a later `status` and `serve --once` processes pick up the same run and batch."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "later.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2, BAD_RATIO))

    submitted = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert "promptdrop wait " + run_id in " ".join(submitted.stderr.split())

    before = status_json(env, tmp_path, run_id)
    assert before["state"] == "SUBMITTED"
    assert before["finished_at"] is None
    assert before["counts"] == {"lines": 3, "succeeded": 0, "failed": 0, "invalid": 1}
    (job_before,) = before["jobs"]
    assert job_before["name"].startswith("batches/") and job_before["requests"] == 2
    assert [r["run_id"] for r in status_json(env, tmp_path)] == [run_id]

    for _ in range(10):
        served = promptdrop(env, "serve", "--once", cwd=tmp_path)
        assert served.returncode == 0, served.stderr
        after = status_json(env, tmp_path, run_id)
        if after["state"] in TERMINAL:
            break
    assert after["state"] == "PARTIAL"
    assert [j["name"] for j in after["jobs"]] == [job_before["name"]]
    assert after["jobs"][0]["state"] == "JOB_STATE_SUCCEEDED"
    assert [b.name for b in batches(emulator)] == [job_before["name"]]
    summary = orjson.loads((outputs(home, run_id) / "summary.json").read_bytes())
    assert after == summary  # `status --json` is summary.json's shape
    assert set(summary) >= {
        "schema_version",
        "run_id",
        "state",
        "source",
        "created_at",
        "finished_at",
        "counts",
        "jobs",
        "cost",
    }
    assert summary["counts"] == {"lines": 3, "succeeded": 2, "failed": 0, "invalid": 1}
    batch_cost, interactive_cost = billed(
        read_jsonl(outputs(home, run_id) / "manifest.jsonl"), summary["model"]
    )
    assert (summary["cost"]["batch"], summary["cost"]["interactive"]) == pytest.approx(
        (batch_cost, interactive_cost), abs=1e-6
    )
    assert sorted(p.name for p in (outputs(home, run_id) / "images").iterdir()) == ["apple.png", "pear.png"]


def _on_a_terminal(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal, as a person at a shell would."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [*CLI, *args], env=env, cwd=cwd, stdout=follower, stderr=subprocess.PIPE, timeout=60, check=False
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return done.returncode, (b"".join(chunks) + done.stderr).decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_open_prints_the_gallery_page_and_status_mentions_it(tmp_path: Path, emulator_factory: Any) -> None:
    """`open` (latest run by default) prints the page's path; a browser is tried only on a terminal."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "fruit.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, BAD_RATIO))
    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.splitlines()[0].strip()
    page = outputs(home, run_id).resolve() / "index.html"
    assert f"gallery:  {page}" in done.stdout

    latest = promptdrop(env, "open", cwd=tmp_path)
    named = promptdrop(env, "open", run_id, "--no-browser", cwd=tmp_path)
    assert latest.returncode == named.returncode == 0, latest.stderr + named.stderr
    assert latest.stdout.strip() == named.stdout.strip() == str(page)
    assert "browser" not in latest.stderr  # stdout is a pipe here: no browser is even tried
    shown = promptdrop(env, "status", run_id, cwd=tmp_path)
    assert f"gallery: {page}" in " ".join(shown.stdout.split())

    # On a terminal: a browser that works, one that fails, and --no-browser (which never calls one).
    opened = tmp_path / "opened.txt"
    works = {**env, "BROWSER": f"sh -c 'echo %s > {opened}'"}
    code, text = _on_a_terminal(works, "open", run_id, cwd=tmp_path)
    assert code == 0 and str(page) in text, text
    assert opened.read_text().strip() == page.as_uri()
    code, text = _on_a_terminal({**env, "BROWSER": "false"}, "open", run_id, cwd=tmp_path)
    assert code == 0 and "no browser available" in text, text
    opened.unlink()
    code, text = _on_a_terminal(works, "open", run_id, "--no-browser", cwd=tmp_path)
    assert code == 0 and not opened.exists(), text

    unknown = promptdrop(env, "open", "nope-00000000", cwd=tmp_path)
    assert unknown.returncode == 1 and "no run nope-00000000" in unknown.stderr


def test_open_of_a_run_still_going_says_when_its_page_comes(tmp_path: Path, emulator_factory: Any) -> None:
    """A run that has not ended has no page yet: `open` says so and exits 1; `status` says when it comes."""
    emulator = emulator_factory(pending_seconds=120.0)
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    prompt_file = tmp_path / "slow.jsonl"
    prompt_file.write_bytes(jsonl(GOOD))
    submitted = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()

    pending = promptdrop(env, "open", cwd=tmp_path)
    assert pending.returncode == 1
    assert pending.stdout.strip().endswith(f"outputs/{run_id}/index.html")
    assert "written when the run ends" in pending.stderr
    assert "written when the run ends" in promptdrop(env, "status", run_id, cwd=tmp_path).stdout


def test_gallery_location_of_a_cloud_bucket_is_the_authenticated_browser_url() -> None:
    """For gs:// the page opens through Cloud Storage's authenticated browser URL."""
    from promptdrop.cli import gallery_location
    from promptdrop.settings import Settings

    settings = Settings.from_env({"PROMPTDROP_BUCKET": "gs://my-bucket"})
    assert (
        gallery_location(settings, "cat-1234abcd")
        == "https://storage.cloud.google.com/my-bucket/outputs/cat-1234abcd/index.html"
    )
