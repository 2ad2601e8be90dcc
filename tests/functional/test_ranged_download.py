"""Ranged downloads of a results file, as a copy resumed by a later tick asks for them."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from google.genai import types

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.adapters.localfs import LocalBlobStore
from promptdrop.layout import RunLayout
from promptdrop.states import JobPhase
from promptdrop.testing.emulator import running_emulator
from promptdrop.usecases.results_copy import open_copied_results
from tests.contract.job_store_contract import make_job


def test_a_download_resumes_at_any_byte_and_at_the_end_of_the_file(tmp_path: Path) -> None:
    """From byte N the rest arrives; from the end of the file nothing does, and that is not an error."""
    data = bytes(range(256)) * 1000
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        uploaded = client.files.upload(
            file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="jsonl")
        )
        assert uploaded.name is not None
        backend = GeminiBackend(emu.api_key, base_url=emu.url, retry_attempts=1)
        for start in (0, 1, 100_000, len(data) - 1, len(data)):
            out = io.BytesIO()
            backend.download_file(uploaded.name, out, start=start)
            assert out.getvalue() == data[start:], start
        backend.close()


def test_copied_parts_closed_short_read_back_as_the_file_from_any_byte(tmp_path: Path) -> None:
    """Parts closed short at a time budget (their sizes recorded) and a short last part: reading from any
    offset gives the file from that byte, as the harvest resuming at its checkpoint does."""
    blobs = LocalBlobStore(tmp_path / "bucket")
    layout = RunLayout.of("outputs/", "r-1")
    data = bytes(range(256)) * 2
    sizes = [5, 64, 3, 64, 64, 1, 64]
    sizes.append(len(data) - sum(sizes))
    offset = 0
    for part, size in enumerate(sizes):
        blobs.write_bytes(layout.job_results_part("r-1-a1-c0", part), data[offset : offset + size])
        offset += size
    job = make_job("r-1", phase=JobPhase.HARVESTING).model_copy(
        update={
            "results_part_size": 64,
            "results_parts": len(sizes),
            "results_copied": len(data),
            "results_short_parts": {str(part): size for part, size in enumerate(sizes) if size != 64},
        }
    )
    ctx = SimpleNamespace(blobs=blobs)
    for start in range(len(data) + 1):
        with open_copied_results(ctx, layout, job, start) as stream:  # type: ignore[arg-type]
            assert stream.read() == data[start:], start
