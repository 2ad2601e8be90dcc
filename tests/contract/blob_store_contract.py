"""The ``BlobStore`` contract, as a mixin every adapter's test class inherits.

Subclass it in a ``Test...`` class and override the ``store`` fixture with a fresh, empty store. Only the
Protocol's methods are used here, so a local folder and Cloud Storage must pass the same tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from promptdrop.errors import NotFoundError, PreconditionFailedError, UnsafeNameError
from promptdrop.ports import COPY_BATCH, BlobStore, CopyOrder

UNSAFE_NAMES = ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "a/./b", "a\\b", "bad\x00name", "a/"]
MiB = 1024 * 1024


class Boom(Exception):
    """Raised inside a write block to abandon it."""


class BlobStoreContract:
    @pytest.fixture
    def store(self) -> BlobStore:
        raise NotImplementedError("subclasses provide a fresh, empty store")

    def test_url_names_the_bucket(self, store: BlobStore) -> None:
        """The url is a non-empty string people can read."""
        assert isinstance(store.url, str)
        assert store.url

    def test_write_then_read_round_trip(self, store: BlobStore) -> None:
        """Bytes written come back unchanged, through read_bytes and open_read."""
        data = bytes(range(256)) * 10
        assert store.write_bytes("a/b/c.bin", data) is True
        assert store.read_bytes("a/b/c.bin") == data
        with store.open_read("a/b/c.bin") as handle:
            assert handle.read() == data

    def test_empty_object_round_trip(self, store: BlobStore) -> None:
        """A zero-byte object exists and reads back empty."""
        store.write_bytes("empty.txt", b"")
        info = store.stat("empty.txt")
        assert info is not None
        assert info.size == 0
        assert store.read_bytes("empty.txt") == b""

    def test_stat_reports_size_type_and_metadata(self, store: BlobStore) -> None:
        """stat gives the name, size, content type and metadata the object was written with."""
        before = time.time()
        store.write_bytes("img/k.png", b"\x89PNG....", content_type="image/png", metadata={"run": "r1"})
        info = store.stat("img/k.png")
        assert info is not None
        assert (info.name, info.size, info.content_type, dict(info.metadata)) == (
            "img/k.png",
            8,
            "image/png",
            {"run": "r1"},
        )
        assert info.generation
        # A loose bound: the store's clock may be another host's, but not an hour off.
        assert abs(info.updated - before) < 3600

    def test_stat_of_missing_object_is_none(self, store: BlobStore) -> None:
        """A name nothing was written to has no info."""
        assert store.stat("nothing/here.txt") is None

    def test_reading_missing_object_raises_not_found(self, store: BlobStore) -> None:
        """read_bytes and open_read of a missing object raise NotFoundError."""
        with pytest.raises(NotFoundError):
            store.read_bytes("missing.bin")
        with pytest.raises(NotFoundError), store.open_read("missing.bin") as handle:
            handle.read()

    def test_write_replaces_existing_object(self, store: BlobStore) -> None:
        """A plain write overwrites, and returns True."""
        store.write_bytes("x.txt", b"old")
        assert store.write_bytes("x.txt", b"new and longer") is True
        assert store.read_bytes("x.txt") == b"new and longer"

    def test_write_if_generation_replaces_only_that_generation(self, store: BlobStore) -> None:
        """A read-modify-write: the write over the generation read lands; one over a stale generation (another
        writer came between) raises PreconditionFailedError and leaves the other writer's bytes."""
        store.write_bytes("index.jsonl", b"one\n")
        first = store.stat("index.jsonl")
        assert first is not None
        assert store.write_bytes("index.jsonl", b"one\ntwo\n", if_generation=first.generation) is True
        second = store.stat("index.jsonl")
        assert second is not None and second.generation != first.generation
        with pytest.raises(PreconditionFailedError):
            store.write_bytes("index.jsonl", b"one\nthree\n", if_generation=first.generation)
        assert store.read_bytes("index.jsonl") == b"one\ntwo\n"
        with pytest.raises(PreconditionFailedError):
            store.write_bytes("missing.jsonl", b"x", if_generation=first.generation)
        assert store.stat("missing.jsonl") is None

    @pytest.mark.parametrize(("existing", "expected"), [(None, True), (b"first", False)])
    def test_write_if_absent(self, store: BlobStore, existing: bytes | None, expected: bool) -> None:
        """if_absent writes only when the object is missing and otherwise changes nothing."""
        if existing is not None:
            store.write_bytes("claim.json", existing, metadata={"who": "first"})
        before = store.stat("claim.json")
        assert (
            store.write_bytes("claim.json", b"second", metadata={"who": "second"}, if_absent=True) is expected
        )
        after = store.stat("claim.json")
        assert after is not None
        if expected:
            assert store.read_bytes("claim.json") == b"second"
        else:
            assert before is not None
            assert store.read_bytes("claim.json") == existing
            assert (after.generation, dict(after.metadata)) == (before.generation, {"who": "first"})

    def test_open_write_streams_chunks_into_one_object(self, store: BlobStore) -> None:
        """Chunks written through open_write form one object with the given type and metadata."""
        chunks = [bytes([n]) * MiB for n in range(3)]
        with store.open_write(
            "big/results.jsonl", content_type="application/jsonl", metadata={"k": "v"}
        ) as out:
            for chunk in chunks:
                out.write(chunk)
        info = store.stat("big/results.jsonl")
        assert info is not None
        assert (info.size, info.content_type, dict(info.metadata)) == (
            3 * MiB,
            "application/jsonl",
            {"k": "v"},
        )
        assert store.read_bytes("big/results.jsonl") == b"".join(chunks)

    def test_failed_open_write_leaves_no_object(self, store: BlobStore) -> None:
        """An error inside the write block leaves neither a new nor a half object."""
        with pytest.raises(Boom), store.open_write("half.bin") as out:
            out.write(b"partial")
            raise Boom
        assert store.stat("half.bin") is None
        assert list(store.list("")) == []

    def test_failed_open_write_keeps_previous_version(self, store: BlobStore) -> None:
        """An abandoned rewrite leaves the previous object as it was."""
        store.write_bytes("keep.txt", b"version 1")
        before = store.stat("keep.txt")
        with pytest.raises(Boom), store.open_write("keep.txt") as out:
            out.write(b"version 2, unfinished")
            raise Boom
        after = store.stat("keep.txt")
        assert store.read_bytes("keep.txt") == b"version 1"
        assert before is not None and after is not None
        assert after.generation == before.generation

    @pytest.mark.parametrize("start", [0, 1, 4095, 100_000, 300_000])
    def test_open_read_from_offset(self, store: BlobStore, start: int) -> None:
        """open_read(start=n) streams the object from byte n to the end."""
        data = bytes(n % 251 for n in range(300_000))
        store.write_bytes("results.jsonl", data)
        with store.open_read("results.jsonl", start=start) as handle:
            assert handle.read() == data[start:]

    def test_generation_is_stable_until_rewritten(self, store: BlobStore) -> None:
        """An unchanged object keeps its generation; a rewrite, even with the same bytes, gets a new one."""
        store.write_bytes("inbox/p.jsonl", b'{"prompt": "a cat"}\n')
        first = store.stat("inbox/p.jsonl")
        again = store.stat("inbox/p.jsonl")
        store.write_bytes("inbox/p.jsonl", b'{"prompt": "a cat"}\n')
        rewritten = store.stat("inbox/p.jsonl")
        assert first is not None and again is not None and rewritten is not None
        assert first.generation == again.generation
        assert rewritten.generation != first.generation

    def test_a_read_at_a_generation_reads_that_one_or_nothing(self, store: BlobStore) -> None:
        """open_read/read_bytes with ``generation`` give that generation's bytes; once another one is live
        (or the object is gone) they raise NotFoundError, never the newer bytes."""
        store.write_bytes("refs/style.png", b"first version", content_type="image/png")
        first = store.stat("refs/style.png")
        assert first is not None
        assert store.read_bytes("refs/style.png", generation=first.generation) == b"first version"
        with store.open_read("refs/style.png", generation=first.generation) as handle:
            assert handle.read() == b"first version"
        store.write_bytes("refs/style.png", b"second version!", content_type="image/png")
        with pytest.raises(NotFoundError):
            store.read_bytes("refs/style.png", generation=first.generation)
        with (
            pytest.raises(NotFoundError),
            store.open_read("refs/style.png", generation=first.generation) as h,
        ):
            h.read()
        second = store.stat("refs/style.png")
        assert second is not None
        assert store.read_bytes("refs/style.png", generation=second.generation) == b"second version!"
        store.delete("refs/style.png")
        with pytest.raises(NotFoundError):
            store.read_bytes("refs/style.png", generation=second.generation)

    def test_a_stream_opened_at_a_generation_keeps_reading_it_through_a_rewrite(
        self, store: BlobStore
    ) -> None:
        """A rewrite after the open does not mix versions: the stream reads the generation it opened, whole,
        or fails (NotFoundError), but never yields the newer bytes."""
        old = bytes(n % 251 for n in range(300_000))
        store.write_bytes("refs/big.png", old)
        info = store.stat("refs/big.png")
        assert info is not None
        read = b""
        try:
            with store.open_read("refs/big.png", generation=info.generation) as handle:
                read = handle.read(1000)
                store.write_bytes("refs/big.png", b"x" * 300_000)
                read += handle.read()
        except NotFoundError:
            return  # that generation is gone (Cloud Storage without versioning): nothing mixed was given
        assert read == old

    def test_list_is_recursive_sorted_and_limited_to_prefix(self, store: BlobStore) -> None:
        """list yields every object under the prefix, at any depth, sorted by name."""
        names = ["out/r/b.png", "out/r/a.png", "out/r/sub/z.png", "out/r.txt", "out/r2/a.png", "in/x.jsonl"]
        for name in names:
            store.write_bytes(name, name.encode())
        assert [info.name for info in store.list("out/r/")] == [
            "out/r/a.png",
            "out/r/b.png",
            "out/r/sub/z.png",
        ]
        assert [info.name for info in store.list("out/r")] == [
            "out/r.txt",
            "out/r/a.png",
            "out/r/b.png",
            "out/r/sub/z.png",
            "out/r2/a.png",
        ]
        assert [info.name for info in store.list("")] == sorted(names)
        assert list(store.list("nowhere/")) == []

    def test_list_reports_what_stat_reports(self, store: BlobStore) -> None:
        """Listed infos carry the same size, generation and content type as stat."""
        store.write_bytes("l/one.png", b"12345", content_type="image/png", metadata={"a": "b"})
        (listed,) = store.list("l/")
        assert listed == store.stat("l/one.png")

    def test_delete(self, store: BlobStore) -> None:
        """delete removes the object; deleting a missing one is fine."""
        store.write_bytes("d/gone.txt", b"x")
        store.write_bytes("d/stays.txt", b"y")
        store.delete("d/gone.txt")
        store.delete("d/gone.txt")
        store.delete("never/existed.txt")
        assert store.stat("d/gone.txt") is None
        assert [info.name for info in store.list("d/")] == ["d/stays.txt"]

    def test_rewrite_after_delete_gets_new_generation(self, store: BlobStore) -> None:
        """A deleted and re-created object never reuses the old generation (claims depend on it)."""
        store.write_bytes("inbox/again.jsonl", b"same")
        first = store.stat("inbox/again.jsonl")
        store.delete("inbox/again.jsonl")
        store.write_bytes("inbox/again.jsonl", b"same")
        second = store.stat("inbox/again.jsonl")
        assert first is not None and second is not None
        assert first.generation != second.generation

    def test_copy(self, store: BlobStore) -> None:
        """copy duplicates bytes, content type and metadata; the source stays; the copy is independent."""
        store.write_bytes("src/p.jsonl", b"line\n", content_type="application/jsonl", metadata={"m": "1"})
        store.copy("src/p.jsonl", "dst/deep/p.jsonl")
        copied = store.stat("dst/deep/p.jsonl")
        assert copied is not None
        assert (copied.size, copied.content_type, dict(copied.metadata)) == (
            5,
            "application/jsonl",
            {"m": "1"},
        )
        store.write_bytes("src/p.jsonl", b"changed\n")
        assert store.read_bytes("dst/deep/p.jsonl") == b"line\n"

    def test_copy_of_missing_object_raises_not_found(self, store: BlobStore) -> None:
        """Copying nothing is an error, and creates nothing."""
        with pytest.raises(NotFoundError):
            store.copy("missing.txt", "copy.txt")
        assert store.stat("copy.txt") is None

    def test_copy_if_source_generation(self, store: BlobStore) -> None:
        """A copy conditional on the source's generation copies that generation, or nothing at all."""
        store.write_bytes("inbox/p.jsonl", b"first\n")
        first = store.stat("inbox/p.jsonl")
        assert first is not None
        store.write_bytes("inbox/p.jsonl", b"second\n")
        # That generation is gone (NotFoundError) or no longer the live one (PreconditionFailedError).
        with pytest.raises((NotFoundError, PreconditionFailedError)):
            store.copy("inbox/p.jsonl", "staged/p.jsonl", if_source_generation=first.generation)
        assert store.stat("staged/p.jsonl") is None
        second = store.stat("inbox/p.jsonl")
        assert second is not None
        store.copy("inbox/p.jsonl", "staged/p.jsonl", if_source_generation=second.generation)
        assert store.read_bytes("staged/p.jsonl") == b"second\n"

    def test_copy_many_copies_each_order_or_says_why_not(self, store: BlobStore) -> None:
        """copy_many: more orders than one batch request carries, each copied as ``copy`` would (bytes, type,
        metadata, that generation); an order whose source is gone or another generation says False and
        creates nothing, without stopping the others."""
        store.write_bytes("images/a.png", b"png-a", content_type="image/png", metadata={"m": "1"})
        store.write_bytes("images/b.png", b"old")
        a, old_b = store.stat("images/a.png"), store.stat("images/b.png")
        assert a is not None and old_b is not None
        store.write_bytes("images/b.png", b"new")
        orders = [
            CopyOrder("images/a.png", f"run/images/a-{n}.png", a.generation) for n in range(COPY_BATCH + 5)
        ]
        orders += [
            CopyOrder("images/missing.png", "run/images/missing.png"),
            CopyOrder("images/b.png", "run/images/b.png", old_b.generation),
            CopyOrder("images/a.png", "run/thumbs/a.webp"),
        ]
        assert list(store.copy_many(orders, share=True)) == [True] * (COPY_BATCH + 5) + [False, False, True]
        copied = store.stat(f"run/images/a-{COPY_BATCH + 4}.png")
        assert copied is not None
        assert (copied.size, copied.content_type, dict(copied.metadata)) == (5, "image/png", {"m": "1"})
        assert store.read_bytes("run/images/a-0.png") == store.read_bytes("run/thumbs/a.webp") == b"png-a"
        assert store.stat("run/images/missing.png") is None and store.stat("run/images/b.png") is None
        assert list(store.copy_many([])) == []

    def test_shared_copy_is_a_copy_of_that_generation(self, store: BlobStore) -> None:
        """``share`` (a hard link locally): the same bytes, type and metadata, a generation of its own, the
        source's generation or nothing; replacing the source later leaves the copy as it was."""
        store.write_bytes("images/a.png", b"png", content_type="image/png", metadata={"m": "1"})
        first = store.stat("images/a.png")
        assert first is not None
        store.copy("images/a.png", "other/images/a.png", if_source_generation=first.generation, share=True)
        copied = store.stat("other/images/a.png")
        assert copied is not None
        assert (copied.size, copied.content_type, dict(copied.metadata)) == (3, "image/png", {"m": "1"})
        store.write_bytes("images/a.png", b"png2")
        with pytest.raises((NotFoundError, PreconditionFailedError)):
            store.copy("images/a.png", "third/a.png", if_source_generation=first.generation, share=True)
        assert store.stat("third/a.png") is None
        assert store.read_bytes("other/images/a.png") == b"png"
        with pytest.raises(NotFoundError):
            store.copy("missing.png", "x.png", share=True)

    def test_delete_prefix_removes_everything_under_it(self, store: BlobStore) -> None:
        """delete_prefix empties a folder, nested objects included, and leaves its neighbours alone."""
        for name in ("run/_work/a.jsonl", "run/_work/jobs/j/b.jsonl", "run/manifest.jsonl"):
            store.write_bytes(name, b"x")
        store.delete_prefix("run/_work/")
        assert [info.name for info in store.list("run/")] == ["run/manifest.jsonl"]
        store.delete_prefix("run/_work/")  # nothing left: fine

    @pytest.mark.parametrize("name", UNSAFE_NAMES)
    def test_unsafe_names_are_refused(self, store: BlobStore, name: str) -> None:
        """Names that could escape the bucket's folder structure raise UnsafeNameError on every method."""
        calls: list[Callable[[], object]] = [
            lambda: store.write_bytes(name, b"x"),
            lambda: store.stat(name),
            lambda: store.read_bytes(name),
            lambda: store.delete(name),
            lambda: store.copy("ok.txt", name),
        ]
        store.write_bytes("ok.txt", b"x")
        for call in calls:
            with pytest.raises(UnsafeNameError):
                call()
        with pytest.raises(UnsafeNameError), store.open_write(name) as out:
            out.write(b"x")
        assert [info.name for info in store.list("")] == ["ok.txt"]
