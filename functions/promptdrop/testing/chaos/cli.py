"""``scripts/chaos``: run seeds on the local and/or Cloud path, print each seed's figures and misses.

Exits 0 when no check missed on any seed, 1 otherwise (each miss named), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from promptdrop.testing.chaos.checks import CHECKS
from promptdrop.testing.chaos.cloud import run_cloud
from promptdrop.testing.chaos.common import REPO, Plan, SeedResult
from promptdrop.testing.chaos.local import run_local

VERTEX_PATH = "cloud-vertex"  # the Cloud path with PROMPTDROP_BACKEND=vertex: its results and work folder


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"seeds are integers separated by commas: {text!r}") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chaos",
        description="promptdrop under faults, stalls, kills and duplicate deliveries; exits 1 on any miss.",
    )
    p.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--short", action="store_true", help="small files and a shorter kill phase (scripts/test)")
    p.add_argument("--path", choices=("local", "cloud", "both"), default="both", help="which deployment")
    p.add_argument(
        "--backend",
        choices=("gemini", "vertex"),
        default="gemini",
        help="the batch API (vertex: the Cloud path only, PROMPTDROP_BACKEND=vertex)",
    )
    p.add_argument("--work", type=Path, default=REPO / ".chaos", help="scratch folder (emptied per seed)")
    return p


def table(results: list[SeedResult]) -> str:
    """Figures as a Markdown table: one row per figure, one column per (path, seed)."""
    names: list[str] = []
    for result in results:
        names += [name for name in result.figures if name not in names]
    header = "| figure | " + " | ".join(f"{r.path} seed {r.seed}" for r in results) + " |"
    rule = "|---|" + "---:|" * len(results)
    rows = [
        f"| {name} | " + " | ".join(str(r.figures.get(name, "")) for r in results) + " |" for name in names
    ]
    rows.append("| misses | " + " | ".join(str(len(r.misses)) for r in results) + " |")
    return "\n".join([header, rule, *rows])


def run_seed(path: str, seed: int, plan: Plan, work: Path) -> SeedResult:
    folder = work / f"{path}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "logs").mkdir(parents=True)
    # The harness's own warnings (deliveries answered 0 while a function was down...) go to a file.
    handler = logging.FileHandler(folder / "logs" / "harness.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        if path == "local":
            return run_local(seed, plan, folder)
        return run_cloud(seed, plan, folder, "vertex" if path == VERTEX_PATH else "gemini")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    plan = Plan.for_mode(short=args.short)
    paths = ["local", "cloud"] if args.path == "both" else [args.path]
    if args.backend == "vertex":
        if args.path == "local":
            p.error("--backend vertex runs the Cloud path only (a folder bucket has no gs:// for Vertex AI)")
        paths = [VERTEX_PATH]
    results: list[SeedResult] = []
    for seed in args.seeds:
        for path in paths:
            print(f"[{time.strftime('%H:%M:%S')}] chaos: {path} path, seed {seed}", flush=True)
            result = run_seed(path, seed, plan, args.work)
            results.append(result)
            print(table([result]), flush=True)
            for miss in result.misses:
                print(f"  MISS [{miss.check}] {miss.detail}", flush=True)
    print("\n" + table(results))
    failed = {miss.check for result in results for miss in result.misses}
    for check in CHECKS:
        seeds = [f"{r.path}/{r.seed}" for r in results if any(m.check == check for m in r.misses)]
        print(
            f"{'MISS' if check in failed else 'ok  '}  {check}" + (f"  ({', '.join(seeds)})" if seeds else "")
        )
    print(f"work folders under {args.work}", file=sys.stderr)
    return 1 if failed else 0
