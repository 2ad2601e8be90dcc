#!/usr/bin/env python3
"""Drive a Gemini Batch API endpoint with nothing but the google-genai SDK and the standard library.

Uploads a JSONL of five image requests with different aspect ratios (one asks the emulator for a safety
block), creates a batch with a display name, polls until the job is done, downloads the results file to
disk, decodes the four images and checks from each PNG header that its shape matches the ratio asked for,
and reports the IMAGE_SAFETY line. Exits 0 only if all of that holds.

    python scripts/sdk-only-demo.py --base-url http://127.0.0.1:PORT --api-key anything

Base URL and key may also come from PROMPTDROP_GEMINI_BASE_URL / GEMINI_API_KEY.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

from google import genai
from google.genai import types

MODEL = "gemini-3-pro-image"
REQUESTS = [
    ("square", "1:1", "a lighthouse at dawn"),
    ("landscape", "16:9", "a wide valley with a river"),
    ("portrait", "9:16", "a tall redwood tree"),
    ("photo", "4:3", "a bowl of lemons on a table"),
    ("blocked", "3:2", "something the safety filter stops [[emulator:safety]]"),
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk of a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def ratio_matches(width: int, height: int, ratio: str) -> bool:
    """True if width:height is the ratio, allowing one pixel of rounding on the short side."""
    ratio_w, ratio_h = (int(part) for part in ratio.split(":"))
    return abs(width * ratio_h - height * ratio_w) <= max(ratio_w, ratio_h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("PROMPTDROP_GEMINI_BASE_URL"))
    parser.add_argument("--api-key", default=os.environ.get("GEMINI_API_KEY"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the job")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give --api-key (or set GEMINI_API_KEY)")
    client = genai.Client(
        api_key=args.api_key,
        http_options=types.HttpOptions(
            base_url=args.base_url,
            api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=5, initial_delay=0.2, max_delay=2.0),
        ),
    )
    with tempfile.TemporaryDirectory() as scratch:
        requests_path = Path(scratch) / "requests.jsonl"
        with requests_path.open("w") as out:
            for key, ratio, prompt in REQUESTS:
                config = {
                    "responseModalities": ["IMAGE"],
                    "imageConfig": {"aspectRatio": ratio, "imageSize": "1K"},
                }
                request = {
                    "contents": [{"role": "user", "parts": [{"text": prompt}]}],
                    "generationConfig": config,
                }
                out.write(json.dumps({"key": key, "request": request}) + "\n")
        uploaded = client.files.upload(
            file=requests_path, config=types.UploadFileConfig(display_name="sdk-only-demo", mime_type="jsonl")
        )
        print(f"uploaded {uploaded.name} ({uploaded.size_bytes} bytes)")
        # Creating a batch is not idempotent: no retries for this one call.
        job = client.batches.create(
            model=MODEL,
            src=str(uploaded.name),
            config={"display_name": "sdk-only-demo", "http_options": {"retry_options": {"attempts": 1}}},
        )
        print(f"created {job.name}: {job.state.value if job.state else None}")
        deadline = time.monotonic() + args.timeout
        while not job.done:
            if time.monotonic() > deadline:
                print(f"FAIL: {job.name} not done after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.5)
            job = client.batches.get(name=str(job.name))
        print(f"{job.name} ended {job.state.value if job.state else None}")
        if job.state != types.JobState.JOB_STATE_SUCCEEDED or not (job.dest and job.dest.file_name):
            print("FAIL: the job did not succeed with a results file", file=sys.stderr)
            return 1
        results_path = Path(scratch) / "results.jsonl"
        client.files.download(file=job.dest.file_name, destination=str(results_path))
        return check_results(results_path)


def check_results(results_path: Path) -> int:
    """Check every result line against what was asked; print one line per key."""
    wanted = {key: ratio for key, ratio, _ in REQUESTS}
    ok = True
    seen: set[str] = set()
    with results_path.open("rb") as results:
        for raw in results:
            line = json.loads(raw)
            key = line.get("key")
            seen.add(key)
            response = line.get("response") or {}
            candidate = (response.get("candidates") or [{}])[0]
            if key == "blocked":
                reason = candidate.get("finishReason")
                print(f"{key}: finishReason {reason}")
                ok &= reason == "IMAGE_SAFETY"
                continue
            parts = (candidate.get("content") or {}).get("parts") or []
            images = [
                part["inlineData"] for part in parts if "inlineData" in part and not part.get("thought")
            ]
            if not images:
                print(f"{key}: no image ({line.get('error') or candidate.get('finishReason')})")
                ok = False
                continue
            width, height = png_size(base64.b64decode(images[-1]["data"]))
            matches = ratio_matches(width, height, wanted[key])
            print(
                f"{key}: {images[-1]['mimeType']} {width}x{height} for {wanted[key]} {'ok' if matches else 'WRONG'}"
            )
            ok &= matches
    if seen != set(wanted):
        print(f"FAIL: result keys {sorted(seen)} differ from {sorted(wanted)}", file=sys.stderr)
        return 1
    print("all checks passed" if ok else "FAIL: some checks did not hold")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
