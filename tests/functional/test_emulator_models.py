"""The emulator refuses what Google refuses: unserved model ids, unreal MIME types; and speaks Google's header case."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import pytest
from google.genai import errors, types

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.emulator.server import is_real_mime_type
from promptdrop.errors import BackendTransientError
from promptdrop.models import BATCH_GENERATE, MODELS, TEXT_MODELS
from promptdrop.testing.emulator import running_emulator, upload_jsonl

GA = "gemini-3-pro-image"
RETIRED = "gemini-3-pro-image-preview"


def test_models_get_and_list_serve_current_ids_and_refuse_retired_ones(tmp_path: Path) -> None:
    """models.get answers a Model for a served id and the real 404 shape for a retired or unknown one."""
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        model = client.models.get(model=GA)
        assert model.name == f"models/{GA}"
        assert "batchGenerateContent" in (model.supported_actions or [])
        for missing in (RETIRED, "gemini-3.1-flash-image-preview", "no-such-model"):
            with pytest.raises(errors.ClientError) as caught:
                client.models.get(model=missing)
            assert caught.value.code == 404 and caught.value.status == "NOT_FOUND"
            assert f"models/{missing} is not found for API version v1beta" in str(caught.value.message)
        listed = {m.name for m in client.models.list(config={"page_size": 2})}
        served = {f"models/{name}" for name, spec in MODELS.items() if spec.shutdown is None}
        served |= {f"models/{name}" for name in TEXT_MODELS}
        assert listed == served  # paged 2 at a time; no retired id among them


def test_batch_create_on_a_retired_id_is_404_and_creates_nothing(tmp_path: Path) -> None:
    """batchGenerateContent on a shut-down id fails as Google's does: 404 NOT_FOUND, no job."""
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        name = upload_jsonl(
            client,
            tmp_path / "in.jsonl",
            [{"key": "a", "request": {"contents": [{"parts": [{"text": "x"}]}]}}],
        )
        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(model=RETIRED, src=name)
        assert caught.value.code == 404 and "is not supported for batchGenerateContent" in str(
            caught.value.message
        )
        assert list(client.batches.list(config={"page_size": 10})) == []


def test_serve_models_adds_ids_the_table_retired_or_lacks(tmp_path: Path) -> None:
    """--serve-models stands for a real API that still serves an id (or one our table lacks)."""
    with running_emulator(tmp_path / "emu", serve_models=(RETIRED, "brand-new-image")) as emu:
        client = emu.client()
        assert client.models.get(model=RETIRED).name == f"models/{RETIRED}"
        assert client.models.get(model="brand-new-image").name == "models/brand-new-image"


@pytest.mark.parametrize("mime_type", ["nonsense", "jsonl-ish", "application", "x-foo/bar", "text/"])
def test_upload_with_an_unreal_mime_type_is_refused_with_400(tmp_path: Path, mime_type: str) -> None:
    """Google refuses an upload whose MIME type is not a real one; so does the emulator."""
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as caught:
            client.files.upload(
                file=io.BytesIO(b"{}\n"), config=types.UploadFileConfig(mime_type=mime_type, display_name="x")
            )
        assert caught.value.code == 400
        assert "MIME type" in str(caught.value.message)


@pytest.mark.parametrize(
    "mime_type", ["jsonl", "application/jsonl", "application/json", "image/png", "text/plain"]
)
def test_real_mime_types_and_the_documented_jsonl_shorthand_are_accepted(
    tmp_path: Path, mime_type: str
) -> None:
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        uploaded = client.files.upload(
            file=io.BytesIO(b"{}\n"), config=types.UploadFileConfig(mime_type=mime_type, display_name="x")
        )
        assert uploaded.mime_type == mime_type


@pytest.mark.parametrize(
    ("value", "real"),
    [
        ("jsonl", True),
        ("application/jsonl", True),
        ("text/plain; charset=utf-8", True),
        ("image/svg+xml", True),
        ("json", True),
        ("", False),
        ("jsonl ", False),
        ("application/", False),
        ("foo/bar", False),
        ("application/json\nX-Injected: 1", False),
    ],
)
def test_mime_type_rule(value: str, real: bool) -> None:
    assert is_real_mime_type(value) is real


def _raw_head(port: int, request: bytes) -> list[bytes]:
    """The status line and header lines exactly as they crossed the wire."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_response_header_names_keep_their_canonical_case_on_the_wire(tmp_path: Path) -> None:
    """`Content-Type`, `Content-Length` and the upload headers are spelled as Google spells them."""
    with running_emulator(tmp_path / "emu") as emu:
        port = emu.server.port
        get = _raw_head(
            port,
            b"GET /v1beta/models/" + GA.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"x-goog-api-key: k\r\nConnection: close\r\n\r\n",
        )
        names = {line.split(b":", 1)[0] for line in get[1:]}
        assert get[0].startswith(b"HTTP/1.1 200")
        assert {b"Content-Type", b"Content-Length"} <= names
        body = b'{"file": {"mime_type": "jsonl", "display_name": "x"}}'
        start = _raw_head(
            port,
            b"POST /upload/v1beta/files HTTP/1.1\r\nHost: 127.0.0.1\r\nx-goog-api-key: k\r\n"
            b"X-Goog-Upload-Protocol: resumable\r\nX-Goog-Upload-Command: start\r\n"
            b"X-Goog-Upload-Header-Content-Length: 3\r\nX-Goog-Upload-Header-Content-Type: jsonl\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        )
        names = {line.split(b":", 1)[0] for line in start[1:]}
        assert {b"Content-Type", b"X-Goog-Upload-URL", b"X-Goog-Upload-Status"} <= names
        assert not {name for name in names if name.lower() == b"content-type" and name != b"Content-Type"}


def test_models_option_serves_exactly_those_ids_with_their_methods(tmp_path: Path) -> None:
    """--models shuts every other id down; --no-batch-models lists one without batchGenerateContent."""
    with running_emulator(
        tmp_path / "emu", models=(GA, "gemini-nano-banana-2.1", "brand-new-image"), no_batch_models=(GA,)
    ) as emu:
        client = emu.client()
        methods = {
            m.name: set(m.supported_actions or ()) for m in client.models.list(config={"page_size": 1})
        }
        assert set(methods) == {f"models/{GA}", "models/gemini-nano-banana-2.1", "models/brand-new-image"}
        assert BATCH_GENERATE not in methods[f"models/{GA}"] and "generateContent" in methods[f"models/{GA}"]
        assert BATCH_GENERATE in methods["models/gemini-nano-banana-2.1"]
        with pytest.raises(errors.ClientError) as caught:
            client.models.get(model="gemini-3.1-flash-image")
        assert caught.value.code == 404
        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(model=GA, src=[types.InlinedRequest(contents="x")])
        assert caught.value.code == 404


def test_text_models_answer_text_in_batch(tmp_path: Path) -> None:
    """gemini-2.5-flash (served by Google for batch) answers a batch of text requests with text."""
    with running_emulator(tmp_path / "emu", pending_seconds=0.05, running_seconds=0.05) as emu:
        client = emu.client()
        job = client.batches.create(model="gemini-2.5-flash", src=[types.InlinedRequest(contents="hello")])
        assert job.name is not None
        for _ in range(200):
            job = client.batches.get(name=job.name)
            if job.done:
                break
            time.sleep(0.05)
        assert job.dest is not None and job.dest.inlined_responses
        response = job.dest.inlined_responses[0].response
        assert response is not None and response.text is not None and "hello" in response.text
        assert not any(part.inline_data for part in response.candidates[0].content.parts)  # type: ignore[index,union-attr]


def test_backend_lists_served_models_once_per_process_window(tmp_path: Path) -> None:
    """GeminiBackend.served_models reads every page of models.list once, then answers from memory; a failed
    call is never a verdict."""
    with running_emulator(tmp_path / "emu", models=(GA, "gemini-nano-banana-2.1")) as emu:
        backend = GeminiBackend(emu.api_key, base_url=emu.url, retry_attempts=1)
        served = backend.served_models()
        assert set(served.methods) == {GA, "gemini-nano-banana-2.1"} and served.supports(GA, BATCH_GENERATE)
    # The emulator is gone: the cached answer still serves this process (another backend on it too).
    assert backend.served_models() is served
    again = GeminiBackend(emu.api_key, base_url=emu.url, retry_attempts=1)
    assert again.served_models() is served
    gone = GeminiBackend(emu.api_key, base_url=emu.url + "/elsewhere", retry_attempts=1)
    with pytest.raises(BackendTransientError, match="list models failed"):
        gone.served_models()
    for each in (backend, again, gone):
        each.close()
