"""The `promptdrop` command line: run, wait, serve, status, open, cancel, extract, emulator.

Exit codes (DESIGN "Lifecycle"): 0 for SUCCEEDED and PARTIAL (and a cancel that was recorded), 1 for
FAILED or CANCELLED (and errors), 2 for a usage or configuration error, 130 when Ctrl-C stops a wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import textwrap
import threading
import time
from collections.abc import Container, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from promptdrop.errors import ConfigurationError, PreconditionFailedError, PromptdropError
from promptdrop.states import RUN_ACTIVE, RUN_TERMINAL, JobPhase, RunState

# Start-up: `--help` and `status` must start in well under 0.3 s, so the package's heavier modules (pydantic's
# records and settings, the use cases, PIL through the gallery, the webhook listener, the emulator launcher)
# are imported inside the commands that use them, not here (the one exception to the rule of imports at the
# top, tests/unit/test_layering.py; they still count as this module's edges there).
if TYPE_CHECKING:
    from promptdrop import prompts
    from promptdrop.layout import RunLayout
    from promptdrop.models import ModelSpec, ServedModels
    from promptdrop.ports import JobStore
    from promptdrop.records import Run
    from promptdrop.settings import Settings
    from promptdrop.usecases.context import Context

app = typer.Typer(
    name="promptdrop",
    help="Turn prompt files into images at half price with the Gemini Batch API.",
    no_args_is_help=True,
    add_completion=False,
)
# Paths and ids stay whole on one line for copy and paste; no ":name:" in a key, prompt or path becomes an emoji
# (and rich's table of emoji codes is not loaded at start-up).
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)  # a command to copy stays on one line
log = logging.getLogger("promptdrop.cli")
PROBLEMS_PAGE = "problems.html"  # the gallery's page of failed and invalid lines


def _print_configuration_error(exc: ConfigurationError) -> None:
    # One line whatever the terminal's width, the values as given (never read as markup).
    err.print(f"[red]configuration error:[/red] {escape(str(exc))}", soft_wrap=True)


def _settings() -> Settings:
    from promptdrop.settings import Settings

    try:
        return Settings.from_env()
    except ConfigurationError as exc:
        _print_configuration_error(exc)
        raise typer.Exit(2) from None


def _launch_emulator(settings: Settings) -> str:
    """The bundled emulator serving this state folder: reused if running, else started in the background."""
    from promptdrop.emulator.launcher import ensure_emulator
    from promptdrop.emulator.options import EmulatorOptions

    options = EmulatorOptions(image_scale=settings.emulator_image_scale, idle_seconds=settings.emulator_idle)
    return ensure_emulator(settings.emulator_dir, options)


def _context(settings: Settings) -> Context:
    from promptdrop import logs
    from promptdrop.wiring import build_context

    logs.configure(settings.log_format, logging.INFO if settings.verbose else logging.WARNING)
    if settings.backend == "emulator":
        err.print(
            "[yellow]No GEMINI_API_KEY: using the bundled Gemini Batch API emulator. "
            "Images are placeholders drawn locally; nothing is billed.[/yellow]"
        )
    try:
        return build_context(settings, _launch_emulator)
    except ConfigurationError as exc:
        _print_configuration_error(exc)
        raise typer.Exit(2) from None


def _exit_code(state: RunState) -> int:
    return 0 if state in (RunState.SUCCEEDED, RunState.PARTIAL) else 1


# `report` reads at most this many ended runs (a year of a busy deployment: 100 runs a day).
REPORT_MAX_RUNS = 50_000


def _money(value: float | None, why: str = "no price recorded") -> str:
    """A dollar figure, or "unknown" with ``why``: callers that can tell say which reason (never a guess)."""
    return f"unknown ({why})" if value is None else f"${value:,.4f}"


def _price_why(models: Iterable[str], backend: str | None = None) -> str:
    """Why a cost over these models is unknown: the first one without a published price (on ``backend``)."""
    from promptdrop.models import VERTEX, model_spec

    for model in models:
        spec = model_spec(model, backend)
        if spec is None:
            return f"{model} is not in the price table"
        if spec.rates is None:
            where = " on Vertex AI" if backend == VERTEX else ""
            return f"{model}'s price{where} is not published"
    return "no price recorded"


def _run_models(run_record: Run) -> list[str]:
    chosen = [str(choice["model"]) for choice in run_record.model_choices if choice.get("model")]
    return chosen or [run_record.model]


def _cost_why(run_record: Run, backend: str | None = None) -> str:
    """Why a run's figure is unknown: it has not ended yet, or a model of it has no published price."""
    return _price_why(_run_models(run_record), backend) if run_record.state.terminal else "not finished yet"


def _estimate_why(run_record: Run, backend: str | None = None) -> str:
    if run_record.state is RunState.RECEIVED:
        return "not estimated until submitted"
    return _price_why(_run_models(run_record), backend)


def _print_model_notices(run_record: Run) -> None:
    """One line per model id the run replaced, refused or warned about (decided before its first batch)."""
    for choice in run_record.model_choices:
        if choice.get("code"):
            err.print(f"[red]model {choice['requested']}:[/red] {choice.get('message')} ({choice['code']})")
        elif choice.get("notice"):
            err.print(f"[yellow]model notice:[/yellow] {choice['notice']}")


WEBHOOK_PORT_HELP = (
    "Receive Gemini's batch webhooks on this port (0: any free port), on loopback; "
    "the bundled emulator is told to deliver there. Turns PROMPTDROP_WEBHOOKS on for this process."
)


@contextlib.contextmanager
def _webhook_receiver(ctx: Context, port: int, host: str = "127.0.0.1") -> Iterator[threading.Event]:
    """Listen for webhook deliveries and advance runs on each; yields an event set on every genuine push.

    With the bundled emulator the listener registers itself as a static webhook (``webhooks.create``) and
    verifies with the secret that returns, removing the registration on the way out; with the real API,
    Google cannot reach this machine unless you forward a public URL here, registered with the secret in
    PROMPTDROP_WEBHOOK_SECRET.
    """
    from promptdrop import logs
    from promptdrop.adapters.webhook_listener import WebhookListener
    from promptdrop.usecases import webhook
    from promptdrop.webhooks import BATCH_EVENTS, Verifier

    pushed = threading.Event()
    holder: list[Verifier] = []

    def handle(body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        reply = webhook.deliver(ctx, holder[0] if holder else None, body, headers)
        if reply.status < 300:
            pushed.set()
        return reply.status, reply.message

    settings = ctx.settings
    with WebhookListener(handle, max_bytes=settings.webhook_max_bytes, host=host, port=port) as listener:
        registration = None
        if settings.backend == "emulator":
            registration = ctx.backend.create_webhook(
                listener.url, events=BATCH_EVENTS, name=f"promptdrop-{os.getpid()}-{listener.port}"
            )
            logs.register_secret(registration.secret)
            holder.append(Verifier(registration.secret))
        elif settings.webhook_secret is not None:
            holder.append(Verifier(settings.webhook_secret.get_secret_value()))
        else:
            raise ConfigurationError("receiving webhooks from the Gemini API needs PROMPTDROP_WEBHOOK_SECRET")
        err.print(f"receiving batch webhooks on {listener.url}")
        try:
            yield pushed
        finally:
            if registration is not None:
                with contextlib.suppress(PromptdropError):
                    ctx.backend.delete_webhook(registration.id)


def _with_webhooks(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhooks": "on"})


@app.command()
def run(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A .jsonl, .txt or .csv file"),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Drive the run to its end with a progress bar")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and estimate; submit nothing")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Submit every line, even those the pay-once cache holds")
    ] = False,
    new: Annotated[
        bool,
        typer.Option("--new", help="Start a new run even when an unfinished run has the same bytes"),
    ] = False,
    as_is: Annotated[
        bool,
        typer.Option(
            "--as-is",
            help="Read FILE as its extension says, even when it looks like a CSV (.txt) or a JSON array (.json)",
        ),
    ] = False,
    webhook_port: Annotated[int | None, typer.Option(help=WEBHOOK_PORT_HELP + " With --wait.")] = None,
) -> None:
    """Put FILE into the inbox and submit it; print the run id.

    When an unfinished run was started from the same bytes, this attaches to it instead (--new: a new run)."""
    settings = _settings()
    receiving = wait and (webhook_port is not None or settings.webhooks_on)
    if receiving:
        settings = _with_webhooks(settings)
    origin = file
    file, fmt = _prompt_file(settings, file, as_is=as_is)
    if dry_run:
        raise typer.Exit(_dry_run(settings, file, fmt, fresh=fresh, origin=origin))
    ctx = _context(settings)
    with contextlib.ExitStack() as stack:
        pushed = None
        if receiving:
            # Listening (and registered) before the batch exists, so its end cannot come first.
            try:
                pushed = stack.enter_context(_webhook_receiver(ctx, webhook_port or 0))
            except (PromptdropError, OSError) as exc:
                err.print(f"[red]cannot receive webhooks:[/red] {exc}")
                raise typer.Exit(2) from None
        attached = None if new else _attach(ctx, file, fmt, fresh=fresh)
        if attached is None:
            _copy_references(ctx, file, fmt, origin)
        run_record = attached or _submit(ctx, file, fresh=fresh)
        # Model notices are printed once: at submission when the run got that far, else at its end.
        noticed = attached is None and bool(run_record.model_choices)
        if not wait:
            err.print(
                f"state {run_record.state.value}; follow it to its end with "
                f"`promptdrop wait {run_record.run_id}` (or keep `promptdrop serve` running)"
            )
            raise typer.Exit(1 if run_record.state in (RunState.FAILED, RunState.CANCELLED) else 0)
        final = _follow(ctx, run_record.run_id, pushed)
    _print_result(ctx, final, notices=not noticed)
    raise typer.Exit(_exit_code(final.state))


@app.command("wait")
def wait_for(run_id: Annotated[str, typer.Argument(help="The run to follow")]) -> None:
    """Follow an existing run to its end with a progress bar (exit code as `run --wait`)."""
    ctx, record = _run_in_context(run_id)
    final = record if record.state.terminal else _follow(ctx, run_id)
    _print_result(ctx, final)
    raise typer.Exit(_exit_code(final.state))


def _run_in_context(run_id: str) -> tuple[Context, Run]:
    """The context a command on one run works in, and that run (exit 1 when there is no such run)."""
    ctx = _context(_settings())
    record = ctx.store.get_run(run_id)
    if record is None:
        err.print(f"no run {run_id}")
        raise typer.Exit(1)
    return ctx, record


def _attach(ctx: Context, file: Path, fmt: prompts.LineFormat, *, fresh: bool) -> Run | None:
    """The unfinished run started from FILE's exact bytes, its id printed; None when there is none."""
    from promptdrop.usecases import receive

    digest = hashlib.sha256()
    with file.open("rb") as source:
        while block := source.read(4 * 1024 * 1024):
            digest.update(block)
    try:
        twin = receive.unfinished_twin(ctx, file.stat().st_size, digest.hexdigest(), fmt, fresh=fresh)
    except PromptdropError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if twin is not None:
        out.print(twin.run_id, highlight=False)
        err.print(
            f"attached to unfinished run {twin.run_id} ({twin.state.value}), started from the same bytes; "
            "nothing submitted again (--new starts another run)"
        )
    return twin


def _prompt_file(settings: Settings, file: Path, *, as_is: bool) -> tuple[Path, prompts.LineFormat]:
    """The file to submit and its format: a .csv is converted to JSONL (in the state folder); a file that
    is not what its extension says is refused (exit 2) unless ``as_is``."""
    from promptdrop import prompts

    fmt = prompts.detect_format(file.name)
    if fmt is None and file.suffix.lower() == ".csv":
        data = file.read_bytes()
        target = settings.home / "converted" / hashlib.sha256(data).hexdigest()[:16] / f"{file.stem}.jsonl"
        try:
            converted = b"".join(prompts.csv_as_jsonl(data.decode("utf-8-sig").splitlines(keepends=True)))
        except (PromptdropError, UnicodeDecodeError) as exc:
            err.print(f"[red]{file.name}: not a prompt file[/red]: {exc}", highlight=False)
            raise typer.Exit(2) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(converted)
        err.print(f"{file.name}: read as CSV, one line per row (its JSONL form: {target})", highlight=False)
        return target, "jsonl"
    if fmt is None:
        err.print(
            f"[red]{file.name}: not a prompt file[/red] "
            "(use .jsonl, one JSON object per line, .txt, one prompt per line, or .csv with a prompt column)"
        )
        raise typer.Exit(2)
    with file.open("rb") as stream:
        problem = None if as_is else prompts.shape_problem(stream.read(64 * 1024), fmt)
    if problem is not None:
        err.print(
            f"[red]{escape(file.name)}[/red] {escape(problem)} (--as-is reads it as it is)", highlight=False
        )
        raise typer.Exit(2)
    return file, fmt


def _reference_source(origin: Path, name: str) -> Path:
    """The file of this machine a local run's reference image ``name`` comes from: beside the prompt file
    (relative paths), or the absolute path it was written as (``LOCAL_FILES_PREFIX`` + the path)."""
    from promptdrop import prompts

    if name.startswith(prompts.LOCAL_FILES_PREFIX):
        return Path("/" + name.removeprefix(prompts.LOCAL_FILES_PREFIX))
    return origin.parent / name


def _reference_names(settings: Settings, file: Path, fmt: prompts.LineFormat) -> set[str]:
    from promptdrop import prompts
    from promptdrop.usecases.inputs import parse_options

    names: set[str] = set()
    if not _mentions(file, b'"images"'):  # most files have none: no second parse of a big file
        return names
    with file.open("rb") as stream:
        for line in prompts.parse_prompt_file(stream, fmt, parse_options(settings)):
            if isinstance(line, prompts.PromptRequest):
                names.update(line.image_refs)
    return names


def _mentions(file: Path, needle: bytes) -> bool:
    carry = b""
    with file.open("rb") as stream:
        while block := stream.read(4 * 1024 * 1024):
            if needle in carry + block:
                return True
            carry = block[-len(needle) :]
    return False


def _copy_references(ctx: Context, file: Path, fmt: prompts.LineFormat, origin: Path) -> None:
    """A local run's reference images are read from the bucket: copy the ones found on this machine there
    (the bucket's own copy is kept when no such file exists)."""
    if ctx.settings.bucket_is_gcs:
        return
    copied = []
    for name in sorted(_reference_names(ctx.settings, file, fmt)):
        source = _reference_source(origin, name)
        if not source.is_file():
            continue
        data = source.read_bytes()
        info = ctx.blobs.stat(name)
        if info is not None and info.size == len(data) and ctx.blobs.read_bytes(name) == data:
            continue
        with ctx.blobs.open_write(name) as target:
            target.write(data)
        copied.append(name)
    if copied:
        err.print(
            f"copied {len(copied)} reference image(s) into the local bucket {ctx.blobs.url}: {', '.join(copied)}",
            highlight=False,
        )


def _follow(ctx: Context, run_id: str, pushed: threading.Event | None = None) -> Run:
    """``_wait``; Ctrl-C leaves the run going and says how to follow it again (exit 130)."""
    try:
        return _wait(ctx, run_id, pushed)
    except KeyboardInterrupt:
        where = (
            "its batch jobs on the Gemini API"
            if ctx.settings.backend == "gemini"
            else "its batch jobs at the bundled emulator, in the background"
        )
        err.print(
            f"\ninterrupted: run {run_id} goes on ({where}); follow it with `promptdrop wait {run_id}`",
            highlight=False,
        )
        raise typer.Exit(130) from None


def _submit(ctx: Context, file: Path, *, fresh: bool = False) -> Run:
    """Put FILE into the inbox and claim it as a run (submitted when small enough); print the run id.

    ``fresh`` (`--fresh`): every line is submitted, none served from the pay-once cache."""
    from promptdrop.events import StorageObject
    from promptdrop.usecases import receive

    settings = ctx.settings
    name = settings.inbox_prefix + file.name
    try:
        # Through a temporary name and a rename: `serve` never sees half a file.
        with file.open("rb") as source, ctx.blobs.open_write(name) as target:
            while block := source.read(4 * 1024 * 1024):
                target.write(block)
        info = ctx.blobs.stat(name)
        assert info is not None
        receipt = receive.receive_file(
            ctx, StorageObject(settings.bucket_name, name, info.generation, info.size), fresh=fresh
        )
    except PromptdropError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if receipt.run is None:
        err.print(f"[red]not submitted:[/red] {receipt.ignored}")
        raise typer.Exit(1)
    out.print(receipt.run.run_id)
    _print_model_notices(receipt.run)
    return receipt.run


def _dry_run(settings: Settings, file: Path, fmt: prompts.LineFormat, *, fresh: bool, origin: Path) -> int:
    from promptdrop import prompts
    from promptdrop.cost import CapEstimate, CostTally
    from promptdrop.models import backend_doubts, backend_problem, lane_problem, model_spec, predict_choice
    from promptdrop.usecases import cache
    from promptdrop.usecases.inputs import parse_options
    from promptdrop.wiring import build_context

    money = CapEstimate(settings.backend)  # what the run's budget cap is held against, computed the same way
    saved = CostTally(settings.backend)
    valid = invalid = now_lines = cached = 0
    try:
        ctx = build_context(settings, _launch_emulator)  # the backend is built only when asked for
    except ConfigurationError as exc:
        _print_configuration_error(exc)
        return 2
    digests = cache.ImageDigests(ctx)
    options = parse_options(settings)
    today = datetime.now(UTC).date()
    noticed: set[str] = set()  # model ids and backend notices said already
    served = _served_or_table(ctx)
    unpriced: set[str] = set()
    with file.open("rb") as stream:
        for line in prompts.parse_prompt_file(stream, fmt, options):
            if isinstance(line, prompts.PromptRequest):
                # As the run will decide it: from what the API serves (or the table, offline).
                choice = predict_choice(
                    line.model,
                    policy=settings.retired_models,
                    today=today,
                    model_map=settings.model_mapping,
                    served=served,
                )
                if line.model not in noticed:
                    noticed.add(line.model)
                    if choice.notice:
                        err.print(f"[yellow]model notice:[/yellow] {choice.notice}")
                problem = (choice.code, choice.message) if choice.model is None else None
                if problem is None and served is not None:
                    problem = lane_problem(choice.model or "", served, line.lane)
                place = {"backend": settings.backend, "location": settings.vertex_location, "lane": line.lane}
                if problem is None:
                    problem = backend_problem(choice.model or "", **place, size=line.image_size)
                    for doubt in backend_doubts(choice.model or "", **place, size=line.image_size):
                        if doubt not in noticed:
                            noticed.add(doubt)
                            err.print(f"[yellow]model notice:[/yellow] {doubt}")
                if problem is not None:
                    invalid += 1
                    err.print(f"line {line.line}: [red]{problem[0]}[/red] {problem[1]}")
                    continue
                missing = [
                    ref
                    for ref in line.image_refs
                    if not (not settings.bucket_is_gcs and _reference_source(origin, ref).is_file())
                    and ctx.blobs.stat(ref) is None
                ]
                if missing:
                    invalid += 1
                    where = "not" if settings.bucket_is_gcs else f"neither beside {origin.name} nor"
                    err.print(
                        f"line {line.line}: [red]bad_image_ref[/red] reference image {missing[0]} is "
                        f"{where} in the bucket {ctx.blobs.url}",
                        highlight=False,
                    )
                    continue
                assert choice.model is not None
                valid += 1
                spec = model_spec(choice.model, settings.backend)
                if spec is None or spec.rates is None:
                    unpriced.add(choice.model)
                now_lines += line.lane == "now"
                money.add(line.lane, choice.model, line.image_size, line.estimated_input_tokens)
                if cache.would_serve(ctx, digests, line, choice.model, fresh=fresh):
                    cached += 1
                    saved.add_estimate(choice.model, line.image_size, line.estimated_input_tokens)
            else:
                invalid += 1
                err.print(f"line {line.line}: [red]{line.error.code}[/red] {line.error.message}")
    lanes = money.total
    batch = lanes.batch
    out.print(f"{valid} valid, {invalid} invalid line(s); {valid - now_lines} batch, {now_lines} now")
    why = _price_why(sorted(unpriced), settings.backend)
    out.print(f"estimated batch cost: {_money(batch.batch, why)} ({valid - now_lines} batch line(s))")
    out.print(
        f"same work on the interactive API: {_money(batch.interactive, why)} (saves {_money(batch.saved, why)})"
    )
    out.print(f"estimated now cost: {_money(lanes.now, why)} ({now_lines} now line(s), interactive price)")
    out.print(f"estimated total: {_money(money.amount)}")
    if (notice := money.notice()) is not None:
        out.print(f"note: {notice}")
    # Counted above too, as the budget cap counts them: it is checked before the cache is asked.
    out.print(
        f"{cached} line(s) served from the pay-once cache: not submitted, saving {_money(saved.total.batch, why)}"
    )
    refused = 0
    if now_lines > settings.max_now_lines:
        out.print(
            f"[red]{now_lines} now lines, over PROMPTDROP_MAX_NOW_LINES={settings.max_now_lines}: "
            "it would be refused[/red]"
        )
        refused = 1
    cap = settings.max_cost_usd
    if cap is not None and money.amount > cap:
        out.print(f"[red]over the budget cap PROMPTDROP_MAX_COST_USD=${cap}: it would be refused[/red]")
        refused = 1
    return refused or (0 if valid else 1)


def _served_or_table(ctx: Context) -> ServedModels | None:
    """What the API (or the emulator) serves; None offline (the table predicts then), said so."""
    try:
        return ctx.backend.served_models()
    except PromptdropError as exc:
        err.print(
            f"[yellow]could not ask the API which models it serves ({exc}): model checks below are "
            "predicted from promptdrop's model table[/yellow]"
        )
        return None


def _progress_numbers(ctx: Context, run_record: Run) -> tuple[int, int]:
    """Lines done of the run's lines: those served from the cache and the invalid ones count from the start,
    then each first-attempt job's finished requests."""
    done = run_record.cost.cached + run_record.counts.invalid
    submitted = 0
    for job in ctx.store.list_jobs(run_record.run_id):
        if job.attempt != 1:
            continue
        submitted += job.request_count
        if job.phase is JobPhase.DONE:
            done += job.request_count
        else:
            done += min(
                job.request_count,
                job.stats.get("successfulRequestCount", 0) + job.stats.get("failedRequestCount", 0),
            )
    total = run_record.counts.lines or submitted
    if run_record.state.terminal:
        done = total
    return min(done, total), total


def _wait(ctx: Context, run_id: str, pushed: threading.Event | None = None) -> Run:
    """Tick until the run ends; a webhook push (``pushed``) wakes the loop at once."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from promptdrop.usecases import poll

    interval = min(ctx.settings.poll_interval, 2.0)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as progress:
        task = progress.add_task(run_id, total=None)
        while True:
            try:
                poll.tick(ctx, run_ids=[run_id])
            except Exception as exc:  # the store could not be read: say so and try again
                log.warning("tick failed: %s", exc)
            current = ctx.store.get_run(run_id)
            if current is None:
                raise PromptdropError(f"run {run_id} disappeared from the store")
            done, total = _progress_numbers(ctx, current)
            progress.update(
                task, description=f"{run_id} {current.state.value}", completed=done, total=total or None
            )
            if current.state.terminal:
                return current
            # Sooner while a job is young: the emulator's end within a fraction of a second (poll.wait_seconds).
            pause = poll.wait_seconds(ctx.store.list_jobs(run_id), ctx.clock(), interval)
            if pushed is None:
                time.sleep(pause)
            elif pushed.wait(pause):
                pushed.clear()


def _print_result(ctx: Context, run_record: Run, *, notices: bool = True) -> None:
    """The run's end: counts, one line per kind of problem, cost and cache, then where each output is.

    ``notices``: the model notices, unless they were printed when the run was submitted."""
    layout = ctx.layout(run_record.run_id)
    counts = run_record.counts
    out.print(
        f"[bold]{run_record.state.value}[/bold]: {counts.succeeded} succeeded, {counts.failed} failed, "
        f"{counts.invalid} invalid of {counts.lines} lines"
    )
    if run_record.reason:
        out.print(f"reason: {run_record.reason}", highlight=False)
    problems = _problems(ctx, layout) if counts.failed or counts.invalid else {}
    for (status, code), (count, example) in sorted(problems.items(), key=lambda kv: (-kv[1][0], kv[0])):
        out.print(f"  {count} {status}: {code}  ({example})", markup=False, highlight=False)
    if notices:
        _print_model_notices(run_record)
    cost = run_record.cost
    why = _cost_why(run_record, ctx.settings.backend)
    out.print(
        f"cost: {_money(cost.batch, why)} batch (interactive would be {_money(cost.interactive, why)}, "
        f"saved {_money(cost.saved, why)})"
        + (
            f"; now lane {_money(cost.now, why)} ({run_record.counts.now} line(s), interactive price)"
            if run_record.counts.now
            else ""
        )
    )
    if cost.cached:
        out.print(
            f"cache: {cost.cached} line(s) served from the pay-once cache, not paid again "
            f"(saved {_money(cost.saved_by_cache, _price_why(_run_models(run_record), ctx.settings.backend))})"
        )
    base = ctx.blobs.url.rstrip("/") + "/"
    if counts.succeeded:  # no images/ folder is written without an image
        out.print(f"images:   {base}{layout.folder}images/", highlight=False)
    for label, name in (
        ("manifest", layout.manifest),
        ("summary", layout.summary),
        ("errors", layout.errors),
        ("rejected", layout.rejected),
    ):
        if ctx.blobs.stat(name) is not None:
            out.print(f"{label + ':':<9} {base}{name}", highlight=False)
    if ctx.blobs.stat(layout.folder + PROBLEMS_PAGE) is not None:
        out.print(
            f"problems: {gallery_location(ctx.settings, run_record.run_id, PROBLEMS_PAGE)}", highlight=False
        )
    if ctx.blobs.stat(layout.gallery) is not None:
        out.print(
            f"gallery:  {gallery_location(ctx.settings, run_record.run_id)}  (promptdrop open)",
            highlight=False,
        )


def _problems(ctx: Context, layout: RunLayout) -> dict[tuple[str, str], tuple[int, str]]:
    """(status, reason code) -> (lines, the first one's line number and message), from the manifest."""
    found: dict[tuple[str, str], tuple[int, str]] = {}
    if ctx.blobs.stat(layout.manifest) is None:
        return found
    with ctx.blobs.open_read(layout.manifest) as stream:
        for raw in stream:
            entry = orjson.loads(raw)
            if entry.get("status") == "succeeded":
                continue
            error = entry.get("error") or {}
            kind = (str(entry.get("status")), str(error.get("code") or "unknown"))
            count, example = found.get(kind, (0, ""))
            if not example:
                message = str(error.get("message") or "")
                example = f"first: line {entry.get('line')}: " + textwrap.shorten(
                    message, 100, placeholder="..."
                )
            found[kind] = (count + 1, example)
    return found


@app.command()
def serve(
    interval: Annotated[
        float | None, typer.Option(help="Seconds between ticks (PROMPTDROP_POLL_INTERVAL)")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One scan and one tick, then exit")] = False,
    webhook_port: Annotated[int | None, typer.Option(help=WEBHOOK_PORT_HELP)] = None,
    webhook_host: Annotated[
        str, typer.Option(help="Address the webhook listener binds instead of loopback")
    ] = "127.0.0.1",
) -> None:
    """Watch the local inbox and poll jobs on an interval: the local twin of the deployment."""
    settings = _settings()
    if webhook_port is not None:
        settings = _with_webhooks(settings)
    ctx = _context(settings)
    with contextlib.ExitStack() as stack:
        if webhook_port is not None:
            try:
                stack.enter_context(_webhook_receiver(ctx, webhook_port, webhook_host))
            except (PromptdropError, OSError) as exc:
                err.print(f"[red]cannot receive webhooks:[/red] {exc}")
                raise typer.Exit(2) from None
        _serve(ctx, settings, interval, once)


def _serve(ctx: Context, settings: Settings, interval: float | None, once: bool) -> None:
    from promptdrop.usecases import poll

    pause = settings.poll_interval if interval is None else interval
    watcher = InboxWatcher(ctx)
    err.print(f"serving {ctx.blobs.url} (inbox {settings.inbox_prefix}, every {pause:g}s); Ctrl-C stops")
    keep_emulator = settings.backend == "emulator" and not settings.gemini_base_url
    try:
        while True:
            try:
                if keep_emulator:
                    # A call each tick keeps the background emulator from stopping on its idle timer
                    # while `serve` may still need it (the backend keeps the URL it was built with).
                    _launch_emulator(settings)
                for run_id in watcher.scan():
                    err.print(f"claimed {run_id}")
                report = poll.tick(ctx)
                for run_id in report.runs_finished:
                    finished = ctx.store.get_run(run_id)
                    if finished is not None:
                        err.print(f"{run_id}: {finished.state.value}")
            except Exception as exc:  # each run's own failures are logged by the tick; this is the rest
                log.exception("tick failed")
                err.print(f"[yellow]tick failed, will retry: {exc}[/yellow]")
            if once:
                return
            time.sleep(pause)
    except KeyboardInterrupt:
        err.print("stopped")


class InboxWatcher:
    """Finds complete files in the local inbox: a file is taken once its size held still for one scan.

    What it remembers is pruned to what the inbox holds now, so a long-running `serve` does not grow.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sizes: dict[str, int] = {}
        self.done: set[tuple[str, str]] = set()

    def scan(self) -> list[str]:
        from promptdrop.events import StorageObject
        from promptdrop.usecases import receive

        settings = self.ctx.settings
        claimed = []
        present = list(self.ctx.blobs.list(settings.inbox_prefix))
        self.sizes = {info.name: size for info in present if (size := self.sizes.get(info.name)) is not None}
        self.done &= {(info.name, info.generation) for info in present}
        for info in present:
            if (info.name, info.generation) in self.done:
                continue
            if self.sizes.get(info.name) != info.size:
                self.sizes[info.name] = info.size  # still changing, or new: look again next scan
                continue
            obj = StorageObject(settings.bucket_name, info.name, info.generation, info.size)
            try:
                receipt = receive.receive_file(self.ctx, obj)
            except Exception:  # one file's failure (a full disk...) must not stop the others: next scan
                log.exception("could not take %s; will try again", info.name)
                continue
            self.done.add((info.name, info.generation))
            if receipt.created and receipt.run is not None:
                claimed.append(receipt.run.run_id)
        return claimed


@app.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; all recent runs when omitted")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Show runs, or one run with its jobs."""
    from promptdrop.wiring import job_store

    settings = _settings()
    store = job_store(settings)
    if run_id is None:
        runs = sorted(store.list_runs(None), key=lambda r: r.created_at, reverse=True)[:50]
        if as_json:
            out.print_json(
                orjson.dumps([r.model_dump(mode="json", exclude={"lease"}) for r in runs]).decode()
            )
            return
        if runs:
            for line in _runs_table(runs, out.width):
                out.print(line, markup=False, highlight=False)
        else:
            out.print("no runs yet: start one with `promptdrop run FILE`")
        _print_state_folder(settings)
        _print_spend(settings, store)
        return
    _print_run_status(settings, store, run_id, as_json=as_json)


def _print_run_status(settings: Settings, store: JobStore, run_id: str, *, as_json: bool) -> None:
    """`status RUN_ID`: one run with its jobs (the manifest's summary, for --json)."""
    from promptdrop.manifest import summary as run_summary
    from promptdrop.wiring import blob_store

    record = store.get_run(run_id)
    if record is None:
        err.print(f"no run {run_id}")
        raise typer.Exit(1)
    jobs = store.list_jobs(run_id)
    data: dict[str, Any] = run_summary(record, jobs, bucket_url=blob_store(settings).url)
    if as_json:
        out.print_json(orjson.dumps(data).decode())
    else:
        out.print(
            f"[bold]{record.run_id}[/bold] {record.state.value}"
            + (f" ({record.reason})" if record.reason else "")
        )
        _print_model_notices(record)
        c = record.counts
        out.print(f"lines {c.lines}: {c.succeeded} succeeded, {c.failed} failed, {c.invalid} invalid")
        why = _cost_why(record, settings.backend)
        out.print(
            f"cost: estimate {_money(record.cost.estimate, _estimate_why(record, settings.backend))}, "
            f"batch {_money(record.cost.batch, why)}"
            + (f", now {_money(record.cost.now, why)} ({c.now} now lines)" if c.now else "")
        )
        if record.state is not RunState.RECEIVED:
            out.print(
                f"cache: {record.cost.cached} line(s) served from the pay-once cache "
                f"(saved {_money(record.cost.saved_by_cache, _price_why(_run_models(record), settings.backend))})"
            )
        elif (would := _cache_would_serve(settings, record)) is not None:
            out.print(f"cache: {would} line(s) would be served from the pay-once cache if submitted now")
        if record.waiting:
            out.print(
                f"waiting: {record.waiting} line(s) wait for run(s) paying for them now: "
                f"{', '.join(record.waiting_on)} (served from their images, or sent once they end)"
            )
        if record.state.terminal:
            out.print(
                f"gallery: {gallery_location(settings, record.run_id)}  (promptdrop open {record.run_id})"
            )
        else:
            out.print("gallery: written when the run ends (promptdrop open)")
        for job in jobs:
            out.print(
                f"  {job.job_id}  {job.batch_name or '-'}  {job.phase.value}  {job.state.value}  "
                f"{job.request_count} requests"
            )
        _print_state_folder(settings)


def _print_state_folder(settings: Settings) -> None:
    """Where this CLI keeps its runs: the same folder from any working directory (PROMPTDROP_HOME)."""
    if settings.bucket_is_gcs and settings.store_is_firestore:
        out.print(f"bucket: {settings.bucket}; store: {settings.store}", highlight=False)
        return
    out.print(f"state folder: {settings.home.resolve()} (PROMPTDROP_HOME)", highlight=False)
    if not settings.bucket_is_gcs:
        out.print(f"local bucket: {Path(settings.bucket).resolve()}", highlight=False)


def _runs_table(runs: list[Run], width: int) -> list[str]:
    """The runs as aligned columns; the cost, the last column, folds (``_aligned``)."""
    header = ["run", "state", "lines", "ok", "failed", "invalid", "cost (batch)"]
    rows = [header]
    for r in runs:
        if r.state.terminal:
            cost = _money(r.cost.batch, _cost_why(r))
        elif r.cost.estimate is not None:
            cost = f"~${r.cost.estimate:,.4f} (estimate)"
        else:
            cost = "not estimated yet" if r.state is RunState.RECEIVED else _money(None, _estimate_why(r))
        counts = r.counts
        rows.append(
            [r.run_id, r.state.value]
            + [str(n) for n in (counts.lines, counts.succeeded, counts.failed, counts.invalid)]
            + [cost]
        )
    return _aligned(rows, width, numeric={2, 3, 4, 5})


def _aligned(rows: list[list[str]], width: int, *, numeric: Container[int] = ()) -> list[str]:
    """Rows (the header first) as aligned columns. Ids never cut, whatever the width: every cell stays whole
    on its line but the last column's, which folds into what is left (never narrower than 20 characters: a
    line wider than the terminal beats a cut id). Columns in ``numeric`` are right-aligned."""
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
    indent = sum(widths) + 2 * len(widths)
    room = max(width - indent, 20)
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        folded = textwrap.wrap(row[-1], room) or [""]
        lines.append("  ".join([*cells, folded[0]]).rstrip())
        lines.extend(" " * indent + part for part in folded[1:])
    return lines


def _print_rows(rows: list[list[str]], *, numeric: Container[int] = ()) -> None:
    for line in _aligned(rows, out.width, numeric=numeric):
        out.print(line, markup=False, highlight=False)


def _print_spend(settings: Settings, store: JobStore) -> None:
    """Today's and this month's spend (settled costs plus reservations) against the caps in force."""
    from promptdrop import spend

    caps = spend.caps_at(
        time.time(), per_day=settings.max_spend_usd_per_day, per_month=settings.max_spend_usd_per_month
    )
    spent = store.spent(spend.period_keys_of(caps)) if caps else {}
    for cap in caps:
        out.print(
            f"spend {cap.period} {cap.label}: {_money(spent.get(cap.key, 0.0))} of {_money(cap.limit)} "
            f"({cap.variable})"
        )


def _cache_would_serve(settings: Settings, record: Run) -> int | None:
    """Lines of a run not yet submitted that the cache holds now (models predicted from the table, as
    `--dry-run` does); None when its prompts cannot be read."""
    from promptdrop import prompts
    from promptdrop.models import predict_choice
    from promptdrop.usecases import cache
    from promptdrop.usecases.inputs import parse_options
    from promptdrop.wiring import build_context

    ctx = build_context(settings)  # the bucket and the cache; no backend is built
    name = record.input_object if ctx.blobs.stat(record.input_object) else record.source.object
    if name is None or ctx.blobs.stat(name) is None:
        return None
    digests = cache.ImageDigests(ctx)
    today = datetime.now(UTC).date()
    count = 0
    with ctx.blobs.open_read(name) as stream:
        options = parse_options(settings, record.source.defaults)
        for line in prompts.parse_prompt_file(stream, record.source.format, options):
            if isinstance(line, prompts.PromptRequest):
                model = predict_choice(
                    line.model, policy=settings.retired_models, today=today, model_map=settings.model_mapping
                ).model
                count += model is not None and cache.would_serve(
                    ctx, digests, line, model, fresh=record.fresh
                )
    return count


def gallery_location(settings: Settings, run_id: str, page: str = "index.html") -> str:
    """Where a run's gallery page opens: the local file, or the Cloud Storage authenticated browser URL."""
    from promptdrop.layout import RunLayout

    name = RunLayout.of(settings.output_prefix, run_id).folder + page
    if settings.bucket_is_gcs:
        return f"https://storage.cloud.google.com/{settings.bucket_name}/{quote(name)}"
    return str((Path(settings.bucket) / name).resolve())


@app.command("open")
def open_gallery(
    run_id: Annotated[str | None, typer.Argument(help="A run id; the latest run when omitted")] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only print where the page is")] = False,
) -> None:
    """Print where a run's gallery page is and open it in a browser when one is available."""
    import webbrowser

    from promptdrop.layout import RunLayout
    from promptdrop.wiring import blob_store, job_store

    settings = _settings()
    store = job_store(settings)
    if run_id is None:
        runs = store.list_runs(None)
        if not runs:
            err.print("no runs yet: start one with `promptdrop run FILE`")
            raise typer.Exit(1)
        record: Run | None = max(runs, key=lambda r: r.created_at)
    else:
        record = store.get_run(run_id)
    if record is None:
        err.print(f"no run {run_id}")
        raise typer.Exit(1)
    location = gallery_location(settings, record.run_id)
    page = RunLayout.of(settings.output_prefix, record.run_id).gallery
    if blob_store(settings).stat(page) is None:
        out.print(location, highlight=False, markup=False)
        why = (
            "it has no page (it ended before promptdrop wrote gallery pages)"
            if record.state.terminal
            else "its page is written when the run ends"
        )
        err.print(f"{record.run_id} is {record.state.value}: {why}")
        raise typer.Exit(1)
    out.print(location, highlight=False, markup=False)  # plain: for copy, paste and scripts
    # Only for a person at a terminal: tests, CI and pipes never get a browser window.
    if not no_browser and sys.stdout.isatty():
        target = location if settings.bucket_is_gcs else Path(location).as_uri()
        try:
            opened = webbrowser.open(target)
        except webbrowser.Error:
            opened = False
        if not opened:
            err.print("no browser available here: open the path above yourself")


@app.command()
def cancel(run_id: Annotated[str, typer.Argument(help="The run to cancel")]) -> None:
    """Cancel a run: its batch jobs are cancelled and every unfinished line is reported as cancelled."""
    from promptdrop.usecases import poll

    ctx, record = _run_in_context(run_id)
    if record.state.terminal:
        out.print(f"{run_id} already ended: {record.state.value}")
        raise typer.Exit(_exit_code(record.state))
    try:
        ctx.store.update_run(run_id, {"cancel_requested": True}, if_states=RUN_ACTIVE)
        poll.tick(ctx, run_ids=[run_id])
    except (PreconditionFailedError, PromptdropError) as exc:
        err.print(f"cancel recorded; the poller finishes it ({exc})")
    final = ctx.store.get_run(run_id)
    state = final.state.value if final else "unknown"
    out.print(f"{run_id}: cancel requested; state {state}")
    # The cancel is recorded (the poller finishes one not yet CANCELLED): it did what was asked.
    raise typer.Exit(0)


@app.command()
def report(
    since: Annotated[
        str, typer.Option(help="How far back: runs that ended in the last 30d, 12h, ...")
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """What the runs that ended cost, per UTC day and model: lines, images, batch and now cost, savings."""
    from promptdrop import reporting
    from promptdrop.settings import parse_duration
    from promptdrop.wiring import job_store

    settings = _settings()
    window = parse_duration(since)
    if window is None:
        err.print(f"error: --since {since!r}: expected a duration such as 30d, 12h or 90m", markup=False)
        raise typer.Exit(2)
    ended = job_store(settings).list_runs(RUN_TERMINAL, limit=REPORT_MAX_RUNS)
    table_rows = [row.to_json() for row in reporting.rows(ended, since=time.time() - window)]
    if as_json:
        out.print_json(orjson.dumps({"since": since, "rows": table_rows}).decode())
        return
    rows = [["day", "model", "runs", "lines", "images", "cached", "batch", "now", "saved", "saved by cache"]]
    for row in table_rows:
        rows.append(
            [row["day"], row["model"]]
            + [str(row[name]) for name in ("runs", "lines", "images", "cached")]
            + [
                _money(row[name], _price_why([row["model"]]))
                for name in ("batch", "now", "saved", "saved_by_cache")
            ]
        )
    _print_rows(rows, numeric={2, 3, 4, 5})
    if not table_rows:
        out.print(f"no run ended in the last {since}")


@app.command()
def extract(
    results_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A downloaded batch results file")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for images/ and manifest.jsonl")],
) -> None:
    """Turn an already downloaded batch results file into images plus a manifest (streaming)."""
    from promptdrop.adapters.localfs import LocalBlobStore
    from promptdrop.usecases.harvest import extract_results

    try:
        store = LocalBlobStore(out_dir)
        with results_file.open("rb") as stream:
            counts = extract_results(stream, store)
    except PromptdropError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out.print(
        f"{counts['succeeded']} images, {counts['failed']} failed, {counts['invalid']} invalid "
        f"of {counts['lines']} lines -> {out_dir}/images, {out_dir}/manifest.jsonl"
    )
    raise typer.Exit(0 if counts["succeeded"] else 1)


# `promptdrop models` ------------------------------------------------------------------------------------


def _model_row(name: str, served: ServedModels | None) -> dict[str, Any]:
    """One model as `promptdrop models --json` shows it: what the API says, and what the table knows."""
    from promptdrop.models import BATCH_GENERATE, model_spec

    spec = model_spec(name)
    if served is not None:
        batch: bool | None = served.supports(name, BATCH_GENERATE)
    else:
        batch = spec.batch if spec else None
    prices = (
        {
            size: {
                "batch": spec.image_cost(size, batch=True),
                "interactive": spec.image_cost(size, batch=False),
            }
            for size in spec.image_sizes
        }
        if spec
        else {}
    )
    return {
        "model": name,
        "in_table": spec is not None,
        "batch": batch,  # None: unknown (offline, and the table has it unconfirmed)
        "methods": sorted(served.methods.get(name, ())) if served is not None else None,
        "image_sizes": list(spec.image_sizes) if spec else None,
        "price_per_image": prices or None,  # USD; None inside: no confirmed figure
        "aspect_ratios": list(spec.aspect_ratios) if spec else None,
        "max_reference_images": spec.max_input_images if spec else None,
        "released": spec.released.isoformat() if spec and spec.released else None,
        "deprecated": spec.deprecated.isoformat() if spec and spec.deprecated else None,
        "shutdown": spec.shutdown.isoformat() if spec and spec.shutdown else None,
        "alias_of": spec.alias_of if spec else None,
        "successor": spec.successor if spec else None,
        "note": spec.note if spec else None,
        "vertex": _vertex_row(spec) if spec else None,
    }


def _vertex_row(spec: ModelSpec) -> dict[str, Any]:
    """What the table knows of the model on Vertex AI batch (None: no page says)."""
    from promptdrop.models import VERTEX

    vertex, priced = spec.vertex, spec.on(VERTEX)
    return {
        "batch": vertex.batch,
        "locations": list(vertex.locations) if vertex.locations is not None else None,
        "confirmed_sizes": list(vertex.sizes),
        "refused_sizes": list(vertex.refused_sizes),
        "price_per_image": {
            size: {
                "batch": priced.image_cost(size, batch=True),
                "interactive": priced.image_cost(size, batch=False),
            }
            for size in spec.image_sizes
        },
    }


@app.command("models")
def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout")] = False,
) -> None:
    """The models the API serves now: batch or not, prices per image, sizes, ratios, lifecycle."""
    from promptdrop.models import MODELS, served_by_schedule

    settings = _settings()
    ctx = _context(settings)
    served = _served_or_table(ctx)
    if served is None:
        today = datetime.now(UTC).date()
        names = [name for name in MODELS if served_by_schedule(name, today)]
    else:
        names = sorted(served.methods)
    rows = [_model_row(name, served) for name in names]
    if as_json:
        source = served.source if served is not None else "table"
        out.print_json(data={"source": source, "models": rows})
        return
    table = [
        ["model", "batch", "sizes", "batch $/image", "interactive $/image", "ratios", "refs", "lifecycle"]
    ]
    for row in rows:
        prices = row["price_per_image"] or {}
        lifecycle = ", ".join(
            f"{label} {row[key]}"
            for key, label in (
                ("deprecated", "deprecated"),
                ("shutdown", "shutdown"),
                ("successor", "->"),
                ("alias_of", "alias of"),
            )
            if row[key]
        )
        table.append(
            [
                row["model"] + ("" if row["in_table"] else " (not in table)"),
                {True: "yes", False: "no", None: "?"}[row["batch"]],
                ",".join(row["image_sizes"] or ["?"]),
                " ".join(f"{size}:{_price(p['batch'])}" for size, p in prices.items()) or "?",
                " ".join(f"{size}:{_price(p['interactive'])}" for size, p in prices.items()) or "?",
                str(len(row["aspect_ratios"])) if row["aspect_ratios"] else "?",
                str(row["max_reference_images"] or "?"),
                lifecycle or "-",
            ]
        )
    _print_rows(table, numeric={5, 6})


def _price(value: float | None) -> str:
    return "?" if value is None else f"${value:.4f}"


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help is the emulator's own: its real options
)
def emulator(ctx: typer.Context) -> None:
    """Run the bundled Gemini Batch API emulator in the foreground (all options: `promptdrop emulator --help`).

    Its data folder is the state folder's `emulator/` unless --data-dir names another; when an emulator
    already serves that folder, its URL and process id are printed (exit 0)."""
    args = list(ctx.args)
    if not any(arg == "--data-dir" or arg.startswith("--data-dir=") for arg in args):
        args = ["--data-dir", str(_settings().emulator_dir), *args]
    # The emulator's own process (same pid, same signals): the CLI never imports the server, so every other
    # command starts without it.
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "promptdrop.emulator", *args])  # noqa: S606 - no shell: argv as given


def main() -> None:  # pragma: no cover - console entry point
    # The emulator and the local cloud listen on loopback: never send that through a proxy.
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
