"""The embedded adapters against the port contracts, plus what only a local folder and SQLite can show."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from promptdrop.adapters.localfs import META_DB_NAME, LocalBlobStore
from promptdrop.adapters.sqlite_cache import SqlitePaidImageCache
from promptdrop.adapters.sqlite_store import SqliteJobStore
from promptdrop.errors import PermanentError, TransientError, UnsafeNameError
from promptdrop.ports import BlobStore, JobStore, PaidImageCache
from tests.contract.blob_store_contract import BlobStoreContract, Boom
from tests.contract.job_store_contract import JobStoreContract, make_job, make_run
from tests.contract.paid_image_cache_contract import PaidImageCacheContract


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:  # the annotation makes mypy check conformance
        return LocalBlobStore(tmp_path / "bucket")


class TestSqliteJobStore(JobStoreContract):
    @pytest.fixture
    def job_store(self, tmp_path: Path) -> JobStore:
        return SqliteJobStore(tmp_path / "state.db")

    @pytest.fixture
    def separate_stores(self, tmp_path: Path) -> Callable[[int], list[JobStore]]:
        # One connection each, as separate processes have: the database's write lock decides.
        return lambda count: [SqliteJobStore(tmp_path / "state.db") for _ in range(count)]


class TestSqlitePaidImageCache(PaidImageCacheContract):
    @pytest.fixture
    def paid_images(self, tmp_path: Path) -> PaidImageCache:
        return SqlitePaidImageCache(tmp_path / "state.db")

    @pytest.fixture
    def separate_caches(self, tmp_path: Path) -> Callable[[int], list[PaidImageCache]]:
        # One connection each, as separate processes have: the database's write lock decides.
        return lambda count: [SqlitePaidImageCache(tmp_path / "state.db") for _ in range(count)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def store(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root)


def files_under(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def test_url_is_the_folder(root: Path, store: LocalBlobStore) -> None:
    """The local bucket's url is its folder, and objects are plain files in it."""
    store.write_bytes("inbox/a.jsonl", b"{}\n")
    assert store.url == str(root)
    assert (root / "inbox" / "a.jsonl").read_bytes() == b"{}\n"


def test_hand_dropped_file_gets_a_stable_generation(root: Path, store: LocalBlobStore) -> None:
    """A file copied in by hand is listed with a generation that holds until the file changes."""
    (root / "inbox").mkdir(parents=True)
    dropped = root / "inbox" / "cats.jsonl"
    dropped.write_bytes(b'{"prompt": "a cat"}\n')
    (info,) = store.list("inbox/")
    assert (info.name, info.size, info.content_type, dict(info.metadata)) == (
        "inbox/cats.jsonl",
        20,
        None,
        {},
    )
    assert store.stat("inbox/cats.jsonl") == info
    assert LocalBlobStore(root).stat("inbox/cats.jsonl") == info  # another instance, same answer
    with dropped.open("ab") as grow:
        grow.write(b'{"prompt": "a dog"}\n')
    grown = store.stat("inbox/cats.jsonl")
    assert grown is not None
    assert (grown.size, grown.generation != info.generation) == (40, True)


def test_file_replaced_by_hand_loses_stored_content_type(root: Path, store: LocalBlobStore) -> None:
    """A file replaced behind the store's back is a new object: new generation, no stale metadata."""
    store.write_bytes("x.png", b"png", content_type="image/png", metadata={"k": "v"})
    before = store.stat("x.png")
    replacement = root / "incoming.tmp"
    replacement.write_bytes(b"png")
    os.replace(replacement, root / "x.png")
    after = store.stat("x.png")
    assert before is not None and after is not None
    assert after.generation != before.generation
    assert (after.content_type, dict(after.metadata)) == (None, {})


def test_generations_survive_reopening(root: Path) -> None:
    """Generations live in the bucket's metadata database, so a new store instance sees the same ones."""
    first = LocalBlobStore(root)
    first.write_bytes("a.txt", b"a")
    info = first.stat("a.txt")
    first.close()
    assert LocalBlobStore(root).stat("a.txt") == info


def test_list_skips_temporary_and_metadata_files(root: Path, store: LocalBlobStore) -> None:
    """Unfinished writes and the store's own database never show up as objects."""
    store.write_bytes("out/done.png", b"done")
    with pytest.raises(Boom), store.open_write("out/half.png") as out:
        out.write(b"half")
        assert any(".promptdrop-tmp-" in name for name in files_under(root))  # the write is in flight
        assert [info.name for info in store.list("")] == ["out/done.png"]
        raise Boom
    assert (root / META_DB_NAME).exists()
    assert [info.name for info in store.list("")] == ["out/done.png"]
    assert [name for name in files_under(root) if not name.startswith(META_DB_NAME)] == ["out/done.png"]


@pytest.mark.parametrize("name", [META_DB_NAME, "out/.promptdrop-tmp-123", ".promptdrop-x/a.png"])
def test_reserved_names_are_refused(store: LocalBlobStore, name: str) -> None:
    """Object names cannot reach the store's database or temporary files."""
    with pytest.raises(UnsafeNameError):
        store.write_bytes(name, b"x")
    with pytest.raises(UnsafeNameError):
        store.read_bytes(name)


def test_nothing_is_written_outside_the_root(tmp_path: Path, store: LocalBlobStore) -> None:
    """Escaping names are refused before any file is touched."""
    for name in ["../escape.txt", "a/../../escape.txt", "/tmp/escape.txt"]:
        with pytest.raises(UnsafeNameError):
            store.write_bytes(name, b"x")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bucket"]


def test_delete_prunes_empty_folders(root: Path, store: LocalBlobStore) -> None:
    """Deleting the last object of a folder removes the folder, as a bucket has no empty folders."""
    store.write_bytes("outputs/r/_work/req.jsonl", b"x")
    store.write_bytes("outputs/r/manifest.jsonl", b"y")
    store.delete("outputs/r/_work/req.jsonl")
    assert not (root / "outputs" / "r" / "_work").exists()
    assert (root / "outputs" / "r" / "manifest.jsonl").exists()


def test_object_colliding_with_a_folder_is_a_permanent_error(store: LocalBlobStore) -> None:
    """A file and a folder cannot share a name locally, and saying so beats retrying forever."""
    store.write_bytes("a/b.txt", b"x")
    with pytest.raises(PermanentError):
        store.write_bytes("a", b"y")
    assert store.stat("a") is None


def test_parallel_writes_from_threads(store: LocalBlobStore) -> None:
    """A thread pool writing many objects at once (as harvest does) lands them all, each with its own generation."""
    names = [f"outputs/r/images/k{n:03}.png" for n in range(200)]

    def write(name: str) -> str:
        store.write_bytes(name, name.encode() * 100, content_type="image/png")
        info = store.stat(name)
        assert info is not None
        return info.generation

    with ThreadPoolExecutor(max_workers=16) as pool:
        generations = list(pool.map(write, names))
    assert len(set(generations)) == len(names)
    assert [info.name for info in store.list("outputs/r/images/")] == names
    assert all(store.read_bytes(name) == name.encode() * 100 for name in names)


def test_sqlite_store_persists_across_instances(tmp_path: Path) -> None:
    """Records written by one SqliteJobStore are read by another on the same file."""
    first = SqliteJobStore(tmp_path / "state.db")
    first.create_run(make_run("persisted"))
    first.create_job(make_job("persisted"))
    first.close()
    second = SqliteJobStore(tmp_path / "state.db")
    assert second.get_run("persisted") == make_run("persisted")
    assert [job.job_id for job in second.list_jobs("persisted")] == ["persisted-a1-c0"]


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    """The database is in WAL mode, so readers are not blocked by a writer."""
    SqliteJobStore(tmp_path / "state.db")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_locked_database_is_a_transient_error(tmp_path: Path) -> None:
    """A write lock another process holds past the busy timeout surfaces as TransientError."""
    store = SqliteJobStore(tmp_path / "state.db", timeout=0.05)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientError):
            store.create_run(make_run())
    finally:
        other.execute("ROLLBACK")
    assert store.create_run(make_run()) is True


def test_update_with_unknown_field_is_refused(tmp_path: Path) -> None:
    """A misspelt field name is a bug to report, not a change to drop silently."""
    store = SqliteJobStore(tmp_path / "state.db")
    store.create_run(make_run())
    with pytest.raises(ValueError, match="stat"):
        store.update_run(make_run().run_id, {"stat": "SUBMITTED"})


def test_foreign_file_is_a_permanent_error(tmp_path: Path) -> None:
    """A store path that holds something other than a SQLite database fails for good, not for retry."""
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(PermanentError):
        SqliteJobStore(path)


def test_delete_prefix_removes_the_scratch_that_listing_hides(tmp_path: Path) -> None:
    """A write killed mid-way leaves a hidden temporary file that list() never shows: delete_prefix removes it."""
    store = LocalBlobStore(tmp_path / "bucket")
    store.write_bytes("outputs/r/_work/jobs/j/keys.jsonl", b"k\n")
    scratch = tmp_path / "bucket" / "outputs/r/_work/jobs/j/.promptdrop-tmp-0123abcd"
    scratch.write_bytes(b"partial results")
    assert [info.name for info in store.list("outputs/r/_work/")] == ["outputs/r/_work/jobs/j/keys.jsonl"]
    store.delete_prefix("outputs/r/_work/")
    assert not (tmp_path / "bucket" / "outputs").exists()


class _Killed(Exception):
    """The process died here: nothing after this point runs."""


def test_a_kill_during_delete_prefix_leaves_no_object_listed_and_the_next_process_empties_the_trash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settle deletes a run's scratch right after recording its end, and a folder has no lifecycle rule:
    a kill mid-delete must leave either all of the scratch or none of it listed, never some (which nothing
    would ever delete). It dies here after the first file it removes."""
    store = LocalBlobStore(tmp_path / "bucket")
    names = [f"outputs/r/_work/jobs/j/part-{n}.jsonl" for n in range(5)] + ["outputs/r/_work/input.jsonl"]
    for name in names:
        store.write_bytes(name, b"x\n")
    store.write_bytes("outputs/r/manifest.jsonl", b"{}\n")
    removed: list[str] = []
    real_unlink, real_rmtree = os.unlink, shutil.rmtree

    def unlink_then_die(path: Any, *args: Any, **kwargs: Any) -> None:
        if removed:
            raise _Killed(str(path))
        removed.append(str(path))
        real_unlink(path, *args, **kwargs)

    def rmtree_then_die(path: Any, *args: Any, **kwargs: Any) -> None:
        raise _Killed(str(path))

    monkeypatch.setattr(os, "unlink", unlink_then_die)
    monkeypatch.setattr(shutil, "rmtree", rmtree_then_die)
    with contextlib.suppress(_Killed):
        store.delete_prefix("outputs/r/_work/")
    monkeypatch.setattr(os, "unlink", real_unlink)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    reopened = LocalBlobStore(tmp_path / "bucket")  # the next process
    assert list(reopened.list("outputs/r/_work/")) == []
    assert all(reopened.stat(name) is None for name in names)
    left = sorted(str(p.relative_to(tmp_path / "bucket")) for p in (tmp_path / "bucket").rglob("*"))
    assert [name for name in left if "part-" in name or "input" in name] == []  # nothing kept anywhere
    assert "outputs/r/manifest.jsonl" in left


def test_sweep_interrupted_removes_temporaries_beside_outputs_and_keeps_the_outputs(tmp_path: Path) -> None:
    """Images and pages whose writes a kill cut off leave hidden temporaries; the sweep takes only those."""
    store = LocalBlobStore(tmp_path / "bucket")
    store.write_bytes("outputs/r/images/a.png", b"png")
    store.write_bytes("outputs/r/summary.json", b"{}")
    for leftover in ("outputs/r/images/.promptdrop-tmp-01", "outputs/r/.promptdrop-tmp-02"):
        (tmp_path / "bucket" / leftover).write_bytes(b"partial")
    store.sweep_interrupted("outputs/r/")
    left = sorted(
        str(p.relative_to(tmp_path / "bucket")) for p in (tmp_path / "bucket").rglob("*") if p.is_file()
    )
    assert [name for name in left if not name.startswith(".")] == [
        "outputs/r/images/a.png",
        "outputs/r/summary.json",
    ]
    assert store.read_bytes("outputs/r/images/a.png") == b"png"


def test_list_reads_the_records_a_thousand_at_a_time(root: Path, store: LocalBlobStore) -> None:
    """A listing reads its objects' records in a query per thousand names, not one per object (a 20,000-image
    run's folders are listed at settle); an object rewritten behind the store's back still gets a new
    generation there, as stat gives it."""
    for index in range(2500):
        store.write_bytes(f"run/images/{index:05d}.png", b"x")
    store.write_bytes("run/other.txt", b"y")
    (root / "run/images/00007.png").write_bytes(b"changed by hand")
    before = store.stat("run/images/00008.png")
    queries: list[str] = []
    store._connection.set_trace_callback(queries.append)
    try:
        listed = list(store.list("run/images/"))
    finally:
        store._connection.set_trace_callback(None)
    assert [info.name for info in listed] == [f"run/images/{index:05d}.png" for index in range(2500)]
    # Three batches, and the changed object's stat (its row, again under the write lock, the counter).
    assert len([q for q in queries if q.lstrip().upper().startswith("SELECT")]) <= 3 + 3
    by_name = {info.name: info for info in listed}
    assert by_name["run/images/00008.png"] == before
    assert by_name["run/images/00007.png"].size == len(b"changed by hand")
    assert by_name["run/images/00007.png"] == store.stat("run/images/00007.png")
