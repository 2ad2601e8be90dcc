"""`promptdrop extract` as a subprocess: someone else's results file, hostile keys, and a 600 MB file in flat memory."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from tests.functional.conftest import read_jsonl

CLI = [sys.executable, "-m", "promptdrop.cli"]
MiB = 1024 * 1024


def extract(results: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, "extract", str(results), "--out", str(out)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def image_line(key: str | None, data: bytes, mime_type: str = "image/png") -> dict[str, Any]:
    """A successful result line as the Batch API writes it (camelCase, base64 image, usage)."""
    part = {"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode()}}
    line: dict[str, Any] = {
        "response": {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 12,
                "candidatesTokenCount": 1120,
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
            },
        }
    }
    return line if key is None else {"key": key, **line}


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_extract_writes_only_under_out_and_reports_hostile_keys(tmp_path: Path) -> None:
    """Images land only under DIR/images; hostile, duplicate and garbage lines are `invalid`; one entry per line."""
    png = encoded(Image.new("RGB", (24, 16), (200, 40, 40)), "PNG")
    jpeg = encoded(Image.new("RGB", (16, 24), (40, 200, 40)), "JPEG")
    lines: list[bytes] = [
        orjson.dumps(image_line("apple", png)),
        b"",
        orjson.dumps(image_line("pear", jpeg, "image/jpeg")),
        orjson.dumps(
            {"key": "blocked", "response": {"candidates": [{"finishReason": "IMAGE_SAFETY", "content": {}}]}}
        ),
        orjson.dumps({"key": "broken", "error": {"code": 13, "message": "internal error"}}),
        orjson.dumps(image_line("../../evil", png)),
        orjson.dumps(image_line("/etc/passwd", png)),
        orjson.dumps(image_line("..\\..\\windows", png)),
        orjson.dumps(image_line("apple", jpeg, "image/jpeg")),  # a duplicate must not overwrite apple.png
        b'{"key": "garbage", "response": {not json',
        orjson.dumps(image_line("shots/hero", png)),
        orjson.dumps(image_line(None, png)),
        orjson.dumps(image_line("tab\tkey", png)),
        b"   ",
    ]
    results = tmp_path / "downloaded" / "results.jsonl"
    results.parent.mkdir()
    results.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "work" / "out"
    before = files_under(tmp_path)

    done = extract(results, out, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "4 images, 2 failed, 6 invalid of 12 lines" in done.stdout
    created = files_under(tmp_path) - before
    assert all(path.is_relative_to(out) for path in created), sorted(map(str, created))
    assert not Path("/etc/passwd.png").exists()
    images = {
        str(p.relative_to(out / "images")): p.read_bytes()
        for p in files_under(out / "images")
        if not p.name.startswith(".")
    }
    assert images == {"apple.png": png, "pear.jpg": jpeg, "shots/hero.png": png, "line-12.png": png}

    entries = read_jsonl(out / "manifest.jsonl")
    assert [e["line"] for e in entries] == [i + 1 for i, raw in enumerate(lines) if raw.strip()]
    found = {e["line"]: (e["key"], e["status"], (e["error"] or {}).get("code")) for e in entries}
    assert found == {
        1: ("apple", "succeeded", None),
        3: ("pear", "succeeded", None),
        4: ("blocked", "failed", "safety"),
        5: ("broken", "failed", "api_error"),
        6: ("../../evil", "invalid", "invalid_key"),
        7: ("/etc/passwd", "invalid", "invalid_key"),
        8: ("..\\..\\windows", "invalid", "invalid_key"),
        9: ("apple", "invalid", "duplicate_key"),
        10: (None, "invalid", "bad_json"),
        11: ("shots/hero", "succeeded", None),
        12: ("line-12", "succeeded", None),
        13: ("tab\tkey", "invalid", "invalid_key"),
    }
    by_line = {e["line"]: e for e in entries}
    assert by_line[1]["image"] == "images/apple.png" and by_line[1]["bytes"] == len(png)
    assert by_line[1]["usage"] == {"prompt_tokens": 12, "output_tokens": 1120, "image_tokens": 1120}
    assert by_line[3]["mime_type"] == "image/jpeg" and by_line[3]["finish_reason"] == "STOP"
    assert by_line[4]["finish_reason"] == "IMAGE_SAFETY"
    assert by_line[5]["error"]["retryable"] is True
    assert all(by_line[n]["image"] is None for n in (4, 5, 6, 7, 8, 9, 10, 13))


def test_extract_with_no_image_exits_1(tmp_path: Path) -> None:
    """A results file that gives no image at all is a failure for the exit code, still with its manifest."""
    results = tmp_path / "results.jsonl"
    results.write_bytes(
        b"garbage\n" + orjson.dumps({"key": "e", "error": {"code": 3, "message": "bad"}}) + b"\n"
    )

    done = extract(results, tmp_path / "out", cwd=tmp_path)

    assert done.returncode == 1
    assert [e["status"] for e in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == ["invalid", "failed"]


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param("\u00e9" * 128, id="128-chars-260-bytes"),  # over the 255-byte file name limit
        pytest.param("a.png/c", id="folder-named-like-an-image"),  # needs a folder where images/a.png is
    ],
)
def test_extract_survives_a_key_the_file_system_refuses(tmp_path: Path, hostile: str) -> None:
    """A key the file system cannot take gives an entry with the reason, not a crash of the whole file."""
    png = encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    results = tmp_path / "results.jsonl"
    results.write_bytes(b"".join(orjson.dumps(image_line(key, png)) + b"\n" for key in ("a", hostile, "b")))

    done = extract(results, tmp_path / "out", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    entries = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert [e["key"] for e in entries] == ["a", hostile, "b"]
    assert entries[2]["status"] == "succeeded"
    # Either the key is refused up front (too many bytes), or of the two names that clash on disk one is
    # written and the other reported as write_failed (images are written in parallel, so either may win).
    codes = sorted((e["error"] or {}).get("code", "") for e in entries[:2])
    assert codes in (["", "invalid_key"], ["", "write_failed"]), entries


# Runs a command and prints its peak RSS (KiB): a fresh parent, so no earlier child of the test counts.
PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def test_extract_of_a_600_mb_results_file_peaks_under_150_mb(tmp_path: Path) -> None:
    """Streaming: a 600 MB results file of 1.5 MB lines is extracted with peak memory under 150 MB."""
    # Noise does not compress, so the PNG stays about 1.1 MB and its base64 about 1.5 MB, like a 2K image.
    noise = Image.frombytes("RGB", (612, 612), os.urandom(612 * 612 * 3))
    png = encoded(noise, "PNG")
    payload = base64.b64encode(png)
    results = tmp_path / "results.jsonl"
    out = tmp_path / "out"
    count = 0
    try:
        with results.open("wb") as stream:
            while stream.tell() < 600 * MiB:
                count += 1
                head, tail = orjson.dumps(image_line(f"image-{count:04d}", b"")).split(b'"data":""')
                stream.write(head + b'"data":"' + payload + b'"' + tail + b"\n")
        assert results.stat().st_size >= 600 * MiB

        measured = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *CLI, "extract", str(results), "--out", str(out)],
            env={"PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

        assert measured.returncode == 0, measured.stderr
        peak_mib = int(measured.stdout.split()[-1]) / 1024
        assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"
        sizes = {p.name: p.stat().st_size for p in (out / "images").iterdir() if not p.name.startswith(".")}
        assert sizes == {f"image-{n:04d}.png": len(png) for n in range(1, count + 1)}
        entries = read_jsonl(out / "manifest.jsonl")
        assert len(entries) == count and all(e["status"] == "succeeded" for e in entries)
    finally:
        results.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
