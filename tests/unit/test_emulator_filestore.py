"""The emulator's file store on its own: resumable chunks, records that survive a reload, expiry."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from promptdrop.emulator.files import FILE_LIFETIME_SECONDS, FileStore
from promptdrop.emulator.wire import ApiError

START = 1_000_000.0


def new_store(folder: Path, now: list[float]) -> FileStore:
    store = FileStore(folder, clock=lambda: now[0])
    store.load()
    return store


def put(store: FileStore, session: str, offset: int, data: bytes, *, finalize: bool = False) -> object:
    return store.write_chunk(
        session, offset=offset, body=io.BytesIO(data), length=len(data), finalize=finalize
    )


def test_resent_chunk_overwrites_and_finalize_makes_the_file(tmp_path: Path) -> None:
    """A chunk sent twice at the same offset is stored once; finalize yields the whole file."""
    store = new_store(tmp_path, [START])
    session = store.start_upload(mime_type="text/plain", declared_size=6, display_name="d", name=None)
    assert put(store, session, 0, b"abc") is None
    assert put(store, session, 0, b"abc") is None
    record = put(store, session, 3, b"def", finalize=True)
    assert record is not None
    assert store.data_path(store.list()[0].id).read_bytes() == b"abcdef"
    with pytest.raises(ApiError) as caught:
        put(store, session, 6, b"more")
    assert caught.value.http_status == 404


@pytest.mark.parametrize(
    ("offset", "data", "status"),
    [(5, b"x", 400), (0, b"too long", 400)],
)
def test_bad_chunks_are_refused(tmp_path: Path, offset: int, data: bytes, status: int) -> None:
    """A chunk past the bytes received, or a finalize with the wrong total size, is a 400."""
    store = new_store(tmp_path, [START])
    session = store.start_upload(mime_type="text/plain", declared_size=3, display_name=None, name=None)
    with pytest.raises(ApiError) as caught:
        put(store, session, offset, data, finalize=True)
    assert caught.value.http_status == status


def test_sessions_and_files_survive_a_reload(tmp_path: Path) -> None:
    """A store opened again on the same folder sees finished files and can finish open sessions."""
    now = [START]
    store = new_store(tmp_path, now)
    done = store.start_upload(mime_type="jsonl", declared_size=2, display_name=None, name="done-file")
    put(store, done, 0, b"{}", finalize=True)
    half = store.start_upload(mime_type="jsonl", declared_size=4, display_name=None, name="half-file")
    put(store, half, 0, b"ab")
    reopened = new_store(tmp_path, now)
    assert [record.name for record in reopened.list()] == ["files/done-file"]
    put(reopened, half, 2, b"cd", finalize=True)
    assert reopened.data_path("half-file").read_bytes() == b"abcd"


@pytest.mark.parametrize("name", ["files/Upper", "files/-dash", "files/" + "a" * 41, "files/a_b"])
def test_user_chosen_names_must_be_lowercase_ids(tmp_path: Path, name: str) -> None:
    """A requested file name outside [a-z0-9-], 1 to 40 long, is a 400."""
    store = new_store(tmp_path, [START])
    with pytest.raises(ApiError) as caught:
        store.start_upload(mime_type="jsonl", declared_size=None, display_name=None, name=name)
    assert caught.value.http_status == 400


def test_files_expire_after_48_hours(tmp_path: Path) -> None:
    """A file is gone once its expirationTime passes: not listed, a 404 by name, its bytes deleted."""
    now = [START]
    store = new_store(tmp_path, now)
    session = store.start_upload(mime_type="jsonl", declared_size=2, display_name=None, name="short-lived")
    put(store, session, 0, b"{}", finalize=True)
    now[0] += FILE_LIFETIME_SECONDS - 1
    assert [record.name for record in store.list()] == ["files/short-lived"]
    now[0] += 1
    assert store.list() == []
    with pytest.raises(ApiError) as caught:
        store.get("short-lived")
    assert caught.value.http_status == 404
    assert not store.data_path("short-lived").exists()
