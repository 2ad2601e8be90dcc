"""The emulator's Files API driven by the real google-genai SDK (and by hand where the SDK cannot reach)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from google.genai import errors, types

from promptdrop.testing.emulator import running_emulator

NINE_MIB = 9 * 1024 * 1024


def _upload(client: object, path: Path, **config: object) -> types.File:
    return client.files.upload(  # type: ignore[attr-defined,no-any-return]
        file=path, config=types.UploadFileConfig(mime_type="jsonl", **config)
    )


def test_nine_mib_upload_arrives_intact_in_two_chunks(tmp_path: Path) -> None:
    """A 9 MiB file goes up as two chunks and comes back byte for byte through both download paths."""
    payload = os.urandom(NINE_MIB)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        uploaded = client.files.upload(
            file=source, config=types.UploadFileConfig(mime_type="application/octet-stream")
        )
        assert uploaded.size_bytes == NINE_MIB
        expected_hash = base64.b64encode(hashlib.sha256(payload).hexdigest().encode()).decode()
        assert uploaded.sha256_hash == expected_hash
        assert uploaded.name is not None
        destination = tmp_path / "back.bin"
        client.files.download(file=uploaded.name, destination=str(destination))
        assert destination.read_bytes() == payload
        file_id = uploaded.name.removeprefix("files/")
        raw = emu.request("GET", f"/download/v1beta/files/{file_id}:download?alt=media")
        assert raw.status == 200
        assert raw.body == payload


def test_upload_session_answers_with_absolute_url_and_status_headers(tmp_path: Path) -> None:
    """Start gives an absolute X-Goog-Upload-URL; each chunk answers X-Goog-Upload-Status active or final."""
    with running_emulator(tmp_path / "emu") as emu:
        start = emu.request(
            "POST",
            "/upload/v1beta/files",
            {"file": {"displayName": "camel", "mimeType": "text/plain"}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": "6",
            },
        )
        assert start.status == 200
        upload_url = start.headers["x-goog-upload-url"]
        assert upload_url.startswith(emu.url + "/upload/v1beta/files?upload_id=")
        path = upload_url.removeprefix(emu.url)
        first = emu.request(
            "POST",
            path,
            b"abc",
            headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"},
            with_key=False,
        )
        assert (first.status, first.headers["x-goog-upload-status"]) == (200, "active")
        last = emu.request(
            "POST",
            path,
            b"def",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "3"},
            with_key=False,
        )
        assert (last.status, last.headers["x-goog-upload-status"]) == (200, "final")
        file_json = last.json()["file"]
        assert file_json["displayName"] == "camel"
        assert file_json["sizeBytes"] == "6"
        assert file_json["source"] == "UPLOADED"
        assert "downloadUri" not in file_json
        downloaded = emu.request("GET", f"/v1beta/{file_json['name']}:download?alt=media")
        assert downloaded.body == b"abcdef"


def test_upload_size_mismatch_is_refused_without_sdk_retry_loop(tmp_path: Path) -> None:
    """A finalize whose bytes differ from the announced length is a 400 that still says the upload is final."""
    with running_emulator(tmp_path / "emu") as emu:
        start = emu.request(
            "POST",
            "/upload/v1/files",
            {"file": {"display_name": "snake", "mime_type": "text/plain"}},
            headers={"X-Goog-Upload-Command": "start", "X-Goog-Upload-Header-Content-Length": "10"},
        )
        path = start.headers["x-goog-upload-url"].removeprefix(emu.url)
        reply = emu.request(
            "POST",
            path,
            b"short",
            headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
            with_key=False,
        )
        assert reply.status == 400
        assert reply.headers["x-goog-upload-status"] == "final"
        assert reply.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_files_get_list_paging_and_delete(tmp_path: Path) -> None:
    """Files are listed newest first across pages of two, and a deleted file is a 404 afterwards."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "a"}\n')
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        names = [str(_upload(client, source, display_name=f"f{i}").name) for i in range(5)]
        pager = client.files.list(config={"page_size": 2})
        assert len(pager.page) == 2
        assert [f.name for f in pager] == list(reversed(names))
        fetched = client.files.get(name=names[0])
        assert fetched.display_name == "f0"
        assert fetched.expiration_time is not None and fetched.create_time is not None
        assert (fetched.expiration_time - fetched.create_time).total_seconds() == 48 * 3600
        client.files.delete(name=names[0])
        with pytest.raises(errors.ClientError) as caught:
            client.files.get(name=names[0])
        assert caught.value.code == 404
        assert caught.value.status == "NOT_FOUND"
        assert len(list(client.files.list())) == 4


def test_user_chosen_file_name_is_kept_and_duplicates_refused(tmp_path: Path) -> None:
    """``config.name`` names the file; uploading the same name again is a 409."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "a"}\n')
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        assert _upload(client, source, name="my-input").name == "files/my-input"
        with pytest.raises(errors.ClientError) as caught:
            _upload(client, source, name="my-input")
        assert caught.value.code == 409


@pytest.mark.parametrize("api_version", ["v1", "v1beta"])
def test_both_api_versions_serve_files(tmp_path: Path, api_version: str) -> None:
    """The SDK's default (v1) and the documented v1beta both reach the same files."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "a"}\n')
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client(api_version=api_version)
        uploaded = _upload(client, source)
        assert uploaded.name is not None
        assert client.files.get(name=uploaded.name).size_bytes == source.stat().st_size


def test_files_persist_across_restart(tmp_path: Path) -> None:
    """A file uploaded before a restart is still listed and downloadable after it."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "persist"}\n')
    with running_emulator(tmp_path / "emu") as emu:
        name = _upload(emu.client(), source).name
    assert name is not None
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        assert [f.name for f in client.files.list()] == [name]
        assert client.files.download(file=name) == source.read_bytes()


def test_second_emulator_on_one_folder_is_refused(tmp_path: Path) -> None:
    """Two emulators serving one data folder would corrupt it, so the second refuses to start."""
    from promptdrop.errors import ConfigurationError

    with (
        running_emulator(tmp_path / "emu"),
        pytest.raises(ConfigurationError),
        running_emulator(tmp_path / "emu"),
    ):
        pass
