"""The CLI a new user can trust (issues 20 and 22): a subprocess, output piped, at 80 columns."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from scripts.bench_rerun_growth import files as bucket_files  # du-like: a hard link counted once

from tests.functional.conftest import jsonl
from tests.functional.test_cli import CLI, GOOD, GOOD_2, batches, cli_env, promptdrop, status_json
from tests.functional.test_pay_once import requests_sent


def narrow_env(home: Path, emulator: Any, **extra: str) -> dict[str, str]:
    """A piped CLI at 80 columns, as a user's `| tee` or CI log sees it."""
    return {**cli_env(home, emulator, **extra), "COLUMNS": "80"}


def _interrupted_run_wait(
    env: dict[str, str], prompt_file: Path, emulator: Any, cwd: Path, *args: str
) -> tuple[str, str, int]:
    """Start `run FILE --wait` (or the command ``args``), press Ctrl-C once a batch exists: (the first line
    of stdout, which is the run id for `run`, stderr, exit code)."""
    waiting = subprocess.Popen(
        [*CLI, *(args or ("run", str(prompt_file), "--wait"))],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None and waiting.stderr is not None
        # `run` prints the run id first; `wait` prints nothing on stdout before the end, so its first
        # line on stderr (the emulator notice, printed as it builds its context) says it is started.
        run_id = waiting.stdout.readline().strip() if not args else waiting.stderr.readline() and args[-1]
        deadline = time.monotonic() + 30
        while not batches(emulator) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # into the wait loop
        waiting.send_signal(signal.SIGINT)
        _, errors = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    return run_id, errors, waiting.returncode


def test_ctrl_c_during_run_wait_says_the_run_goes_on_and_how_to_follow_it(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """SIGINT during `run --wait`: the run id, that it goes on, `promptdrop wait RUN`; exit 130."""
    emulator = emulator_factory(pending_seconds=120.0)
    env = narrow_env(tmp_path / "home", emulator)
    prompt_file = tmp_path / "slow.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2))

    run_id, errors, code = _interrupted_run_wait(env, prompt_file, emulator, tmp_path)

    assert code == 130, errors
    flat = " ".join(errors.split())
    assert f"run {run_id} goes on" in flat
    assert f"promptdrop wait {run_id}" in flat
    assert status_json(env, tmp_path, run_id)["state"] in {"SUBMITTED", "RUNNING"}

    _, errors, code = _interrupted_run_wait(env, prompt_file, emulator, tmp_path, "wait", run_id)
    assert code == 130, errors
    assert f"promptdrop wait {run_id}" in " ".join(errors.split())
    assert len(batches(emulator)) == 1


def test_run_again_after_an_interrupt_attaches_and_pays_once(tmp_path: Path, emulator_factory: Any) -> None:
    """Ctrl-C, then `run FILE --wait` on the same bytes: attached to the first run, which ends; the emulator
    got each request once. `wait RUN` on the ended run prints its result; `--new` makes a second run."""
    emulator = emulator_factory(pending_seconds=3.0)
    env = narrow_env(tmp_path / "home", emulator)
    prompt_file = tmp_path / "twice.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2))
    first, errors, code = _interrupted_run_wait(env, prompt_file, emulator, tmp_path)
    assert code == 130, errors

    again = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].strip() == first
    assert f"attached to unfinished run {first}" in " ".join(again.stderr.split())
    assert "SUCCEEDED" in again.stdout
    assert len(batches(emulator)) == 1 and requests_sent(emulator) == 2
    assert [r["run_id"] for r in status_json(env, tmp_path)] == [first]

    followed = promptdrop(env, "wait", first, cwd=tmp_path)
    assert followed.returncode == 0 and "SUCCEEDED" in followed.stdout, followed.stderr

    # A finished run is not attached to: the file is a new run (served from the cache).
    fresh = promptdrop(env, "run", str(prompt_file), "--new", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip() != first


def test_new_starts_a_second_run_while_the_first_is_unfinished(tmp_path: Path, emulator_factory: Any) -> None:
    """`run FILE` twice on the same bytes: one run; `--new`: a second run with its own batch."""
    emulator = emulator_factory(pending_seconds=120.0)
    env = narrow_env(tmp_path / "home", emulator)
    prompt_file = tmp_path / "same.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2))

    first = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    second = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert second.stdout.strip() == first.stdout.strip()
    assert "attached" in second.stderr and "--new" in second.stderr
    assert len(batches(emulator)) == 1

    third = promptdrop(env, "run", str(prompt_file), "--new", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() != first.stdout.strip()
    assert "attached" not in third.stderr
    assert len(status_json(env, tmp_path)) == 2


def test_ids_stay_whole_at_80_columns_piped(tmp_path: Path, emulator_factory: Any) -> None:
    """issue 22 item 1: a long run id is printed whole by `run`, `status` and the follow hint; each run of the
    table is one row (a RECEIVED run's cost cell does not wrap)."""
    emulator = emulator_factory(pending_seconds=120.0)
    env = narrow_env(tmp_path / "home", emulator)
    prompt_file = tmp_path / "catalogue-of-winter-products-for-the-shop.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2))

    submitted = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    held = promptdrop(
        {**env, "PROMPTDROP_SUBMIT_ON_CLAIM_MAX_BYTES": "1"}, "run", str(prompt_file), "--new", cwd=tmp_path
    )
    listed = promptdrop(env, "status", cwd=tmp_path)

    ids = [submitted.stdout.strip(), held.stdout.strip()]
    assert all(len(run_id) > 45 for run_id in ids), ids
    assert f"`promptdrop wait {ids[0]}`" in submitted.stderr.splitlines()[-1]
    rows = [
        row for row in listed.stdout.splitlines() if not row.startswith(("state folder:", "local bucket:"))
    ]
    assert len(rows) == 3, listed.stdout  # the header and one line per run
    for run_id, state in zip(ids, ["SUBMITTED", "RECEIVED"], strict=True):
        (row,) = [row for row in rows if run_id in row]
        assert state in row
        assert ("$" if state == "SUBMITTED" else "not estimated yet") in row
    one = promptdrop(env, "status", ids[0], cwd=tmp_path)
    assert ids[0] in one.stdout.splitlines()[0]
    assert any(
        line.split()[0].startswith(ids[0] + "-") for line in one.stdout.splitlines()[1:] if line.strip()
    )


def test_every_unknown_cost_says_why(tmp_path: Path, emulator_factory: Any) -> None:
    """issue 22 item 2: an unfinished run of a priced model: "not finished yet", never "not in the price
    table"; a finished run of a model without a published price says so."""
    emulator = emulator_factory(pending_seconds=120.0)
    env = narrow_env(tmp_path / "home", emulator)
    slow = tmp_path / "slow.jsonl"
    slow.write_bytes(jsonl({**GOOD, "model": "gemini-3-pro-image"}))
    run_id = promptdrop(env, "run", str(slow), cwd=tmp_path).stdout.strip()

    shown = promptdrop(env, "status", run_id, cwd=tmp_path).stdout

    assert "batch unknown (not finished yet)" in shown
    assert "price table" not in shown

    quick = emulator_factory("quick")
    env = narrow_env(tmp_path / "home2", quick)
    lite = tmp_path / "lite.jsonl"
    lite.write_bytes(jsonl({**GOOD, "model": "gemini-3.1-flash-lite-image"}))
    done = promptdrop(env, "run", str(lite), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "unknown (gemini-3.1-flash-lite-image's price is not published)" in done.stdout
    assert "not in the price table" not in done.stdout


def test_run_wait_ends_with_one_line_per_problem_and_where_to_look(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """issue 22 item 4: counts by reason code, the paths of errors.jsonl and the problems page (which
    exist), the model notice printed once, and no images/ path when no image was made."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    lines = [{"key": f"ok{i}", "prompt": f"fine {i}"} for i in range(3)]
    lines += [{"key": f"r{i}", "prompt": "odd", "aspect_ratio": "5:7"} for i in range(15)]
    lines += [{"key": f"m{i}", "prompt": "typo", "model": "gemini-3-pro-imge"} for i in range(2)]
    prompt_file = tmp_path / "mixed.jsonl"
    prompt_file.write_bytes(jsonl(*lines))

    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    shown = done.stdout.splitlines()
    assert any(line.strip().startswith("15 invalid: bad_aspect_ratio") for line in shown), done.stdout
    assert any(line.strip().startswith("2 invalid: unknown_model") for line in shown), done.stdout
    paths = dict(line.split(None, 1) for line in shown if line.split(None, 1)[0] in {"errors:", "problems:"})
    assert Path(paths["errors:"]).is_file() and Path(paths["problems:"].strip()).is_file()
    assert (done.stdout + done.stderr).count("model gemini-3-pro-imge:") == 1

    bad_only = tmp_path / "bad.jsonl"
    bad_only.write_bytes(jsonl(*lines[3:5]))
    failed = promptdrop(env, "run", str(bad_only), "--wait", cwd=tmp_path)
    assert failed.returncode == 1
    assert "images:" not in failed.stdout


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def test_reference_images_beside_the_prompt_file_are_copied_into_the_local_bucket(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """issue 22 item 3: `refs/style.png` beside the prompt file and an absolute path both work locally (the
    run says it copied them into the local bucket); `--dry-run` flags a reference that is nowhere."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    project = tmp_path / "project"
    (project / "refs").mkdir(parents=True)
    (project / "refs" / "style.png").write_bytes(PNG)
    elsewhere = tmp_path / "elsewhere" / "logo.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(PNG + b"logo")
    prompt_file = project / "styled.jsonl"
    prompt_file.write_bytes(
        jsonl(
            {"key": "rel", "prompt": "in this style", "images": ["refs/style.png"]},
            {"key": "abs", "prompt": "with this logo", "images": [str(elsewhere)]},
        )
    )

    checked = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)
    assert checked.returncode == 0 and "2 valid, 0 invalid" in checked.stdout, checked.stderr
    done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCEEDED: 2 succeeded" in done.stdout
    assert "copied 2 reference image(s) into the local bucket" in done.stderr
    assert (home / "bucket" / "refs" / "style.png").read_bytes() == PNG

    (project / "missing.jsonl").write_bytes(jsonl({"prompt": "x", "images": ["refs/gone.png"]}))
    missing = promptdrop(env, "run", str(project / "missing.jsonl"), "--dry-run", cwd=tmp_path)
    assert missing.returncode == 1
    assert "reference image refs/gone.png is neither beside missing.jsonl nor in the bucket" in missing.stderr


def test_one_state_folder_per_user_from_any_folder(tmp_path: Path, emulator_factory: Any) -> None:
    """issue 22 item 5: without PROMPTDROP_HOME the runs live in the user's data folder: `status` from another
    folder sees them, shows that path and creates nothing there; an existing ./.promptdrop keeps working."""
    emulator = emulator_factory()
    env = narrow_env(tmp_path / "unused", emulator, HOME=str(tmp_path / "user"))
    del env["PROMPTDROP_HOME"]
    here, there, legacy = (tmp_path / name for name in ("here", "there", "legacy"))
    for folder in (here, there, legacy):
        folder.mkdir()
    (here / "one.jsonl").write_bytes(jsonl(GOOD))

    done = promptdrop(env, "run", "one.jsonl", "--wait", cwd=here)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.splitlines()[0].strip()
    elsewhere = promptdrop(env, "status", cwd=there)

    data = tmp_path / "user" / ".local" / "share" / "promptdrop"
    assert run_id in elsewhere.stdout
    assert f"state folder: {data}" in elsewhere.stdout
    assert list(there.iterdir()) == [] and not (here / ".promptdrop").exists()
    assert (data / "bucket" / "outputs" / run_id / "images" / "apple.png").is_file()

    (legacy / ".promptdrop").mkdir()
    old = promptdrop(env, "status", cwd=legacy)
    assert run_id not in old.stdout and "no runs yet" in old.stdout
    assert f"state folder: {legacy / '.promptdrop'}" in old.stdout


def test_emulator_command_shows_its_options_and_reports_the_one_already_serving(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """issue 22 item 7: `emulator --help` lists the real flags; after a `run` started the background emulator,
    `promptdrop emulator --port 0` prints that one's URL and PID and exits 0; `run --help` offers no
    option that `run` refuses."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    del env["PROMPTDROP_GEMINI_BASE_URL"]  # the CLI's own background emulator
    helped = promptdrop(env, "emulator", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--pending-seconds" in helped.stdout, helped.stdout + helped.stderr
    assert "--webhook-host" not in promptdrop(env, "run", "--help", cwd=tmp_path).stdout

    (tmp_path / "one.jsonl").write_bytes(jsonl(GOOD))
    started = promptdrop(env, "run", "one.jsonl", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    record = orjson.loads((home / "emulator" / "server.json").read_bytes())
    try:
        again = promptdrop(env, "emulator", "--port", "0", cwd=tmp_path, timeout=20)
        assert again.returncode == 0, again.stdout + again.stderr
        assert record["url"] in again.stdout and f"pid {record['pid']}" in again.stdout
    finally:
        os.kill(record["pid"], signal.SIGTERM)  # the background emulator this test's `run` started


def test_smaller_things_a_user_meets(tmp_path: Path, emulator_factory: Any) -> None:
    """issue 22 item 10: the ratio error lists the valid ratios; a 1 MB invalid prompt does not make 1 MB
    gallery pages (the manifest keeps the line whole); a successful cancel exits 0."""
    emulator = emulator_factory(pending_seconds=120.0)
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    huge = "a very long prompt " * 55_000  # over 1 MB
    prompt_file = tmp_path / "small.jsonl"
    prompt_file.write_bytes(
        jsonl(GOOD, {"key": "odd", "prompt": "x", "aspect_ratio": "5:7"}, {"key": "huge", "prompt": huge})
    )

    checked = promptdrop(env, "run", str(prompt_file), "--dry-run", cwd=tmp_path)
    assert "1:1, 2:3, 3:2" in checked.stderr and "21:9" in checked.stderr, checked.stderr
    run_id = promptdrop(env, "run", str(prompt_file), cwd=tmp_path).stdout.strip()
    cancelled = promptdrop(env, "cancel", run_id, cwd=tmp_path)

    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert status_json(env, tmp_path, run_id)["state"] == "CANCELLED"
    folder = home / "bucket" / "outputs" / run_id
    for page in ("index.html", "problems.html"):
        assert (folder / page).stat().st_size < 50_000, page
    assert "more characters" in (folder / "problems.html").read_text()


def test_input_formats_say_what_they_are(tmp_path: Path, emulator_factory: Any) -> None:
    """issue 22 item 9: a CSV renamed .txt and a pretty-printed JSON array are refused (exit 2, nothing
    submitted) with what to do; --as-is reads them anyway; a .csv with a prompt column is read as rows."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    renamed = tmp_path / "sheet.txt"
    renamed.write_text("key,prompt,aspect_ratio\nmug,a mug,1:1\n")
    array = tmp_path / "pretty.json"
    array.write_text('[\n  {"prompt": "a cat"},\n  {"prompt": "a dog"}\n]\n')
    table = tmp_path / "table.csv"
    table.write_text('key,prompt,aspect_ratio,priority\nmug,"a mug, on a table",4:3,2\npear,a pear,,\n')

    header = promptdrop(env, "run", str(renamed), cwd=tmp_path)
    json_array = promptdrop(env, "run", str(array), cwd=tmp_path)
    assert (header.returncode, json_array.returncode) == (2, 2)
    assert "looks like a CSV header" in header.stderr and ".csv" in header.stderr
    assert "JSON array" in json_array.stderr and "json.load(sys.stdin)" in json_array.stderr
    assert batches(emulator) == [] and not (home / "bucket" / "inbox").exists()
    forced = promptdrop(env, "run", str(renamed), "--as-is", "--dry-run", cwd=tmp_path)
    assert forced.returncode == 0 and "2 valid" in forced.stdout, forced.stderr

    done = promptdrop(env, "run", str(table), "--wait", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "SUCCEEDED: 2 succeeded" in done.stdout
    run_id = done.stdout.splitlines()[0].strip()
    assert run_id.startswith("table-")
    images = sorted(p.name for p in (home / "bucket" / "outputs" / run_id / "images").iterdir())
    assert images == ["mug.png", "pear.png"]


def test_a_rerun_from_the_cache_shows_its_saving_counts_its_lines_and_links_its_images(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """issue 22 item 8: a re-run served wholly from the cache prints the lines served and the money saved
    (run --wait and status), its progress bar counts them (3/3, not 0/?), and its images are hard links."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    prompt_file = tmp_path / "again.jsonl"
    prompt_file.write_bytes(jsonl(GOOD, GOOD_2, {"key": "plum", "prompt": "a plum"}))
    first = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    second = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert "cache: 3 line(s) served from the pay-once cache, not paid again (saved $" in second.stdout
    assert "3/3" in second.stderr and "0/?" not in second.stderr
    assert requests_sent(emulator) == 3
    ids = [done.stdout.splitlines()[0].strip() for done in (first, second)]
    shown = promptdrop(env, "status", ids[1], cwd=tmp_path).stdout
    assert "cache: 3 line(s) served from the pay-once cache (saved $" in shown
    for name in ("apple.png", "pear.png", "plum.png"):
        paid, served = (home / "bucket" / "outputs" / run_id / "images" / name for run_id in ids)
        assert served.stat().st_ino == paid.stat().st_ino and served.read_bytes() == paid.read_bytes()


# What a fully cached re-run may add to the bucket, per line (issue 22). The manifest's line is the contract
# (DESIGN "manifest.jsonl": every field present), about 400 bytes here; the gallery's card about 320; the
# folder store's rows (an image and its thumbnail, 2 rows) about 290. Before the cut: about 1,290.
CACHED_RERUN_BYTES_PER_LINE = 1_120
STORE_ROWS_BYTES_PER_LINE = 320  # before: 368 (a rowid table and its index on the name)
GALLERY_BYTES_PER_LINE = 380  # before: 443 (per card: the model, "cached from run/key", a wrapper div)


def test_a_fully_cached_rerun_grows_the_bucket_by_its_documents_only(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """issue 22: a re-run served wholly from the cache adds no image bytes (links) and, per line, no more
    than the manifest's line, a lean gallery card and the folder store's rows (bytes, counted once per inode)."""
    lines = 200
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = narrow_env(home, emulator)
    prompt_file = tmp_path / "many.jsonl"
    prompt_file.write_bytes(
        jsonl(*({"key": f"item-{n:05d}", "prompt": f"a picture number {n} of a cat"} for n in range(lines)))
    )
    first = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    bucket = home / "bucket"
    before = bucket_files(bucket)

    second = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path, timeout=300)

    assert second.returncode == 0, second.stderr
    assert f"cache: {lines} line(s) served from the pay-once cache" in second.stdout
    after = bucket_files(bucket)
    grown = {
        name: size - before.get(inode, ("", 0))[1]
        for inode, (name, size) in after.items()
        if size != before.get(inode, ("", 0))[1]
    }
    run_id = second.stdout.splitlines()[0].strip()
    folder = f"outputs/{run_id}/"
    assert not [name for name in grown if name.startswith((folder + "images/", folder + "thumbs/"))]
    growth = sum(size for _, size in after.values()) - sum(size for _, size in before.values())
    assert growth < CACHED_RERUN_BYTES_PER_LINE * lines, sorted(grown.items(), key=lambda kv: -kv[1])
    assert grown[".promptdrop-meta.db"] < STORE_ROWS_BYTES_PER_LINE * lines
    assert grown[folder + "index.html"] < GALLERY_BYTES_PER_LINE * lines
