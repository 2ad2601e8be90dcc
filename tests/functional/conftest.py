"""Fixtures for whole runs: the embedded adapters (folder bucket, SQLite) and the emulator over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.events import StorageObject
from promptdrop.models import BATCH_DISCOUNT, model_spec
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.testing.emulator import RunningEmulator, running_emulator
from promptdrop.usecases import poll, receive
from promptdrop.usecases.context import Context
from promptdrop.wiring import build_context


@dataclass
class Pipeline:
    """A local promptdrop deployment in a temp folder, wired to an in-process emulator."""

    home: Path
    emulator: RunningEmulator
    env: dict[str, str]
    ctx: Context

    @property
    def bucket(self) -> Path:
        return self.home / "bucket"

    def settings(self, **overrides: Any) -> Settings:
        return Settings.from_env(self.env, **overrides)

    def context(self, **overrides: Any) -> Context:
        return build_context(self.settings(**overrides)) if overrides else self.ctx

    def drop(self, name: str, data: bytes, ctx: Context | None = None) -> receive.Receipt:
        """Land a file in the inbox the way `promptdrop run` does, and claim it."""
        ctx = ctx or self.ctx
        object_name = ctx.settings.inbox_prefix + name
        ctx.blobs.write_bytes(object_name, data)
        info = ctx.blobs.stat(object_name)
        assert info is not None
        obj = StorageObject(ctx.settings.bucket_name, object_name, info.generation, info.size)
        return receive.receive_file(ctx, obj)

    def finish(self, run_id: str, ctx: Context | None = None, *, ticks: int = 200) -> Run:
        """Tick until the run ends."""
        ctx = ctx or self.ctx
        for _ in range(ticks):
            poll.tick(ctx, run_ids=[run_id])
            run = ctx.store.get_run(run_id)
            assert run is not None
            if run.state.terminal:
                return run
        raise AssertionError(f"run {run_id} did not finish: {ctx.store.get_run(run_id)}")

    def manifest(self, run: Run) -> list[dict[str, Any]]:
        return read_jsonl(self.bucket / run.output_folder / "manifest.jsonl")

    def outputs(self, run: Run) -> Path:
        return self.bucket / run.output_folder


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def billed(entries: list[dict[str, Any]], model: str) -> tuple[float, float]:
    """(batch, interactive) USD of the usage the manifest reports, at the model table's rates.

    ``model`` is the run's model, for entries that do not name their own.
    Worked out here from the table and the reported tokens, independently of ``promptdrop.cost``: prompt
    tokens at the text input rate, image tokens at the image output rate, other output at the text output
    rate; the Batch API bills half.
    """
    interactive = 0.0
    for entry in entries:
        usage = entry.get("usage")
        if not usage:
            continue
        spec = model_spec(entry.get("model") or model)
        assert spec is not None and spec.rates is not None, f"{entry.get('model') or model} has no prices"
        rates = spec.rates
        text_output = usage["output_tokens"] - usage["image_tokens"]
        interactive += (
            usage["prompt_tokens"] * rates.text_input
            + usage["image_tokens"] * rates.image_output
            + text_output * rates.text_output
        ) / 1_000_000
    return interactive * BATCH_DISCOUNT, interactive


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def pipeline_env(home: Path, emulator_url: str, **extra: str) -> dict[str, str]:
    return {
        "PROMPTDROP_HOME": str(home),
        "PROMPTDROP_BACKEND": "emulator",
        "PROMPTDROP_GEMINI_BASE_URL": emulator_url,
        "PROMPTDROP_LEASE_SECONDS": "30",
        "PROMPTDROP_POLL_INTERVAL": "0.2",
        "PROMPTDROP_SUBMIT_RETRY_BASE": "0.1",
        "NO_PROXY": "127.0.0.1,localhost",
        **extra,
    }


@pytest.fixture
def emulator_factory(tmp_path: Path) -> Iterator[Any]:
    """Start emulators with chosen options; all are stopped at the end of the test."""
    stack: list[Any] = []

    def start(name: str = "emulator", **options: Any) -> RunningEmulator:
        manager = running_emulator(tmp_path / name, **options)
        emulator = manager.__enter__()
        stack.append(manager)
        return emulator

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


def pipeline_for(home: Path, emulator: RunningEmulator) -> Pipeline:
    """The pipeline of the state folder ``home`` on ``emulator``."""
    env = pipeline_env(home, emulator.url)
    return Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))


@pytest.fixture
def pipeline(tmp_path: Path, emulator_factory: Any) -> Pipeline:
    return pipeline_for(tmp_path / "home", emulator_factory())
