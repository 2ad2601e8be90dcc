"""What a re-run served wholly from the pay-once cache adds to the local bucket (docs/PERFORMANCE.md, section h).

    .venv/bin/python scripts/bench_rerun_growth.py [--lines 5000] [--package DIR/functions] [--home DIR]

Runs one file of ``--lines`` lines twice through the CLI (a subprocess, the bundled emulator it starts, images
at 0.05 scale), then walks the bucket folder before and after the second run: every file counted once per inode
(a hard link is not counted again, as ``du`` does). Prints what grew, per file, and the net growth per line.
``--package`` times another checkout's package (e.g. an export of main) for a before/after figure.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


def files(bucket: Path) -> dict[int, tuple[str, int]]:
    """inode -> (a name relative to the bucket, bytes): a hard link counted once."""
    found: dict[int, tuple[str, int]] = {}
    for path in bucket.rglob("*"):
        if path.is_file():
            info = path.lstat()
            found.setdefault(info.st_ino, (path.relative_to(bucket).as_posix(), info.st_size))
    return found


def kind(name: str) -> str:
    """A run's files grouped: ``outputs/<run>/page-3.html`` -> ``outputs/*/gallery pages``."""
    parts = name.split("/")
    if parts[0] != "outputs" or len(parts) < 3:
        return name
    rest = "/".join(parts[2:])
    return "outputs/*/gallery pages" if rest.endswith(".html") else f"outputs/*/{rest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--package", type=Path, default=REPO / "functions")
    parser.add_argument("--home", type=Path, default=None, help="state folder (default: a temporary one)")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="promptdrop-rerun-"))
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(args.package),
        "PROMPTDROP_HOME": str(home),
        "PROMPTDROP_EMULATOR_IMAGE_SCALE": "0.05",
        "NO_PROXY": "127.0.0.1,localhost",
        "COLUMNS": "80",
    }
    prompts = home / "prompts.jsonl"
    prompts.write_bytes(
        b"".join(
            orjson.dumps({"key": f"item-{n:05d}", "prompt": f"a picture number {n} of a cat"}) + b"\n"
            for n in range(args.lines)
        )
    )

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "promptdrop.cli", "run", str(prompts), "--wait"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        return done.stdout

    run()
    before = files(home / "bucket")
    said = run()
    after = files(home / "bucket")
    print(*(line for line in said.splitlines() if line.startswith("cache:")), sep="\n")
    grown: collections.Counter[str] = collections.Counter()
    for inode, (name, size) in after.items():
        delta = size - before.get(inode, ("", 0))[1]
        if delta:
            grown[kind(name)] += delta
    for name, size in grown.most_common():
        print(f"{size:>12,} B  {name} (new or grown)")
    net = sum(size for _, size in after.values()) - sum(size for _, size in before.values())
    print(f"the bucket grew by {net:,} B: {net / args.lines:,.0f} B a line (state folder {home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
