"""Line streaming without a line-length cap: a 4K image is one multi-megabyte line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 4 * 1024 * 1024


def iter_lines(stream: BinaryIO, block: int = BLOCK) -> Iterator[bytes]:
    """Yield each line with its terminator (the last may lack one), reading big blocks.

    ``len(line)`` summed gives byte offsets for checkpoints. Streams such as GCS's ``BlobReader`` implement
    ``readline`` byte by byte, so this never relies on it.
    """
    # The pieces of a line that spans blocks are views, so its bytes are copied once, by the join.
    pending: list[memoryview] = []
    while True:
        data = stream.read(block)
        if not data:
            break
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                if start < len(data):
                    pending.append(memoryview(data)[start:])
                break
            if pending:
                pending.append(memoryview(data)[start : end + 1])
                yield b"".join(pending)
                pending.clear()
            else:
                yield data[start : end + 1]
            start = end + 1
    if pending:
        yield b"".join(pending)
