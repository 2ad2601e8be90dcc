"""The one line splitter: big blocks, no line-length cap unless asked (a 4K image is one multi-megabyte line)."""

from __future__ import annotations

from collections.abc import Iterator
from operator import itemgetter
from typing import BinaryIO

BLOCK = 4 * 1024 * 1024
HEAD = 1024  # bytes kept of a line over the limit, so people can tell which line it was


def split_lines(
    stream: BinaryIO, *, block: int = BLOCK, limit: int | None = None, head: int = HEAD
) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line, whole)`` for each line with its terminator (the last may lack one).

    Without ``limit`` every line is whole, and ``len(line)`` summed gives byte offsets for checkpoints.
    With ``limit``, a line longer than ``limit`` bytes (its ``\\n`` or ``\\r\\n`` not counted) is never held
    in memory: only its first ``head`` bytes are yielded, with ``whole`` False. Streams such as GCS's
    ``BlobReader`` implement ``readline`` byte by byte, so this never relies on it.
    """
    # The pieces of a line that spans blocks are views, so its bytes are copied once, by the join.
    pending: list[memoryview] = []
    pending_size = 0
    skipped_head: bytes | None = None  # set while the rest of an over-long line is being skipped
    while data := stream.read(block):
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                if start < len(data) and skipped_head is None:
                    pending.append(memoryview(data)[start:])
                    pending_size += len(data) - start
                    if limit is not None and pending_size > limit + 1:  # +1: a '\r' is not part of the line
                        skipped_head = _head(pending, head)
                        pending, pending_size = [], 0
                break
            if skipped_head is not None:
                yield skipped_head, False
                skipped_head = None
            elif pending:
                pending.append(memoryview(data)[start : end + 1])
                pending_size = 0
                # Joined and emptied before the yield: the blocks it spanned are freed while the caller works
                # on the line (no local name keeps either alive into the next read).
                yield _checked(_take(pending), limit, head)
            else:
                yield _checked(data[start : end + 1], limit, head)
            start = end + 1
    if skipped_head is not None:
        yield skipped_head, False
    elif pending:
        yield _checked(_take(pending), limit, head)


def iter_lines(stream: BinaryIO, block: int = BLOCK) -> Iterator[bytes]:
    """Every line with its terminator, however long.

    ``map``, not a loop: a generator's loop variable would keep each line alive until the next one has been
    read, so a harvest waiting for memory would hold a multi-megabyte line nobody uses any more.
    """
    return map(itemgetter(0), split_lines(stream, block=block))


def content(line: bytes) -> bytes:
    """A line without its ``\\n`` or ``\\r\\n``."""
    if line.endswith(b"\n"):
        line = line[:-1]
    return line[:-1] if line.endswith(b"\r") else line


def _checked(line: bytes, limit: int | None, head: int) -> tuple[bytes, bool]:
    if limit is not None and len(content(line)) > limit:
        return line[:head], False
    return line, True


def _take(pieces: list[memoryview]) -> bytes:
    """The pieces joined into one line; the list is emptied, releasing the blocks they viewed."""
    line = b"".join(pieces)
    pieces.clear()
    return line


def _head(pieces: list[memoryview], size: int) -> bytes:
    """The first ``size`` bytes of a line held in pieces, without joining all of it."""
    kept = b""
    for piece in pieces:
        kept += bytes(piece[: size - len(kept)])
        if len(kept) >= size:
            break
    return kept
