"""A run's input: staged once into the run's folder, then read through the pure parser by every stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from promptdrop import prompts
from promptdrop.errors import NotFoundError, PermanentError, PreconditionFailedError
from promptdrop.prompts import ParseOptions
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.usecases.context import Context


def parse_options(settings: Settings, message_defaults: Mapping[str, Any] | None = None) -> ParseOptions:
    """How input is parsed: the deployment's defaults, and a message's own defaults over them."""
    defaults = prompts.FileDefaults()
    if message_defaults:
        defaults = prompts.parse_defaults(dict(message_defaults))  # InputError: the run is unusable
    return ParseOptions(
        default_model=settings.model,
        defaults=defaults,
        max_line_bytes=settings.max_line_bytes,
        bucket_name=settings.bucket_name if settings.bucket_is_gcs else None,
        default_priority=settings.priority,
        local_paths=not settings.bucket_is_gcs,
    )


@contextlib.contextmanager
def parsed_input(ctx: Context, run: Run) -> Iterator[Iterator[prompts.ParsedLine]]:
    """Stream the run's staged input through the pure parser (used by submit, retry and settle alike)."""
    options = parse_options(ctx.settings, run.source.defaults)
    with ctx.blobs.open_read(run.input_object) as stream:
        yield prompts.parse_prompt_file(stream, run.source.format, options)


def stage_input(ctx: Context, run: Run) -> None:
    """Copy the prompt file into the run's folder, so a later overwrite of the inbox object cannot change the run.

    The copy is conditional on the generation that was claimed: a file replaced in between is refused,
    never run in place of the one that was dropped.
    """
    if ctx.blobs.stat(run.input_object) is not None:
        return
    source = run.source
    if source.kind == "message" or source.object is None:
        raise PermanentError("the message's prompts were not staged")
    info = ctx.blobs.stat(source.object)
    if info is None or info.generation != source.generation:
        raise PermanentError(f"{source.object} was deleted or replaced before it could be read")
    if prompts.detect_format(source.object) is None:
        raise PermanentError(
            f"{source.object} is not a prompt file: use .jsonl (one JSON object per line) or .txt"
        )
    if info.size > ctx.settings.max_file_bytes:
        raise PermanentError(
            f"{source.object} is {info.size} bytes, over PROMPTDROP_MAX_FILE_BYTES={ctx.settings.max_file_bytes}"
        )
    try:
        ctx.blobs.copy(source.object, run.input_object, if_source_generation=source.generation)
    except (NotFoundError, PreconditionFailedError) as exc:  # gone or replaced meanwhile
        raise PermanentError(f"{source.object} was deleted or replaced before it could be read") from exc
