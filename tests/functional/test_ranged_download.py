"""Ranged downloads of a results file, as a copy resumed by a later tick asks for them."""

from __future__ import annotations

import io
from pathlib import Path

from google.genai import types

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.testing.emulator import running_emulator


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
