"""Prompt files and Pub/Sub prompt lists -> validated batch requests (pure: reads only the given stream).

Two JSONL line forms (DESIGN "Input"): simple ``{"prompt", "key"?, "aspect_ratio"?, "image_size"?, "model"?,
"images"?, "system"?, "modalities"?}`` and native ``{"key"?, "request": {GenerateContentRequest}, "model"?}``.
A ``.txt`` file is one prompt per line. An optional first line ``{"defaults": {...}}`` sets a file's defaults.

Every non-blank line gives exactly one ``ParsedLine``: a ``PromptRequest`` ready for the batch, an
``InvalidLine`` (parsed, but refused: it carries its input form so ``errors.jsonl`` can be dropped back in)
or a ``RejectedLine`` (not even a JSON object). A bad defaults line is an ``InvalidLine`` (code
``bad_defaults``), and every later line of that file is refused with ``bad_defaults`` too: running them with
defaults the user did not mean (another size, ratio or model) would spend money on the wrong images.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Final, Literal

import orjson

from promptdrop.errors import InputError, UnsafeNameError
from promptdrop.models import EXTREME_RATIOS, STANDARD_RATIOS, ModelSpec, model_spec
from promptdrop.names import check_key, check_relative_path
from promptdrop.outcomes import LineError
from promptdrop.request_schema import MESSAGES, SPELLINGS, TOP, unknown_fields
from promptdrop.streams import content as line_content
from promptdrop.streams import split_lines

LineFormat = Literal["jsonl", "txt"]
# Where a line runs: "batch" (the Batch API, half price, minutes to hours) or "now" (the standard API,
# one synchronous call, full price, seconds).
Lane = Literal["batch", "now"]
LANES: Final[tuple[Lane, ...]] = ("batch", "now")

_FORMATS: Final[dict[str, LineFormat]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".txt": "txt",
}
_READ_BLOCK: Final = 1 << 20
# How much of an over-long line is kept for rejected.jsonl, so people can tell which line it was.
_KEPT_HEAD: Final = 1024
_BOM: Final = b"\xef\xbb\xbf"

# What the SDK knows; an unknown model is checked against these, a known one against its row in models.py.
KNOWN_RATIOS: Final = frozenset(STANDARD_RATIOS + EXTREME_RATIOS)
KNOWN_SIZES: Final = frozenset({"512", "1K", "2K", "4K"})
MODALITIES: Final = frozenset({"TEXT", "IMAGE"})
# Tokens a reference image costs when the model is not in the table (the table's own default).
_UNKNOWN_MODEL_IMAGE_TOKENS: Final = 560
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def detect_format(object_name: str) -> LineFormat | None:
    """``jsonl`` for .jsonl/.ndjson/.json, ``txt`` for .txt, None for anything else (an unusable file)."""
    return _FORMATS.get(PurePosixPath(object_name).suffix.lower())


@dataclass(frozen=True, slots=True)
class FileDefaults:
    """What a line may leave out: from a file's defaults line, a message's ``defaults``, or configuration."""

    model: str | None = None
    image_size: str | None = None
    aspect_ratio: str | None = None
    modalities: tuple[str, ...] | None = None
    system: str | None = None
    priority: int | None = None  # batch priority: higher runs first
    fresh: bool | None = None  # submit even when the pay-once cache holds the image
    lane: Lane | None = None  # "batch" or "now"

    def over(self, base: FileDefaults) -> FileDefaults:
        """These defaults, with ``base`` filling the fields left unset."""
        return FileDefaults(
            model=self.model if self.model is not None else base.model,
            image_size=self.image_size if self.image_size is not None else base.image_size,
            aspect_ratio=self.aspect_ratio if self.aspect_ratio is not None else base.aspect_ratio,
            modalities=self.modalities if self.modalities is not None else base.modalities,
            system=self.system if self.system is not None else base.system,
            priority=self.priority if self.priority is not None else base.priority,
            fresh=self.fresh if self.fresh is not None else base.fresh,
            lane=self.lane if self.lane is not None else base.lane,
        )


@dataclass(frozen=True, slots=True)
class ParseOptions:
    default_model: str  # deployment default (settings.model)
    defaults: FileDefaults = field(default_factory=FileDefaults)  # deployment-wide; a file's override them
    max_line_bytes: int = 20 * 1024 * 1024
    bucket_name: str | None = None  # own bucket: "gs://<bucket_name>/path" image refs are accepted
    default_priority: int = 0  # batch priority for lines and files that set none
    # A local bucket: an absolute image path names a file of this machine, found in the bucket under
    # LOCAL_FILES_PREFIX + the path (`promptdrop run` copies it there).
    local_paths: bool = False


LOCAL_FILES_PREFIX: Final = "local-files/"


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """A valid line, ready to be written as ``{"key": key, "request": request}`` (see ``request_line``)."""

    line: int  # 1-based physical line (message: 1-based index in prompts)
    key: str
    model: str  # bare id as the line asks for it, e.g. "gemini-3-pro-image" (a run may replace a retired one)
    request: dict[str, Any]  # GenerateContentRequest, camelCase; reference images NOT yet included
    image_refs: tuple[str, ...]  # bucket object names (relative, checked) to add as image parts, in order
    image_size: str  # size class used for cost
    aspect_ratio: str | None
    estimated_input_tokens: int  # text tokens (ceil(chars/4)) + the model's tokens per reference image
    input_form: dict[str, Any]  # the line with defaults resolved into it: what errors.jsonl holds
    priority: int = 0  # batch priority (a job holds lines of one model and one priority)
    fresh: bool = False  # submit even when the pay-once cache holds this request's image
    lane: Lane = "batch"  # "now": sent at once with generate_content instead of in a batch
    # Native lines: where each of ``image_refs`` stands, (content, part) of its ``fileData`` part, which the
    # image replaces; empty for simple lines, whose images are appended to the first content.
    image_slots: tuple[tuple[int, int], ...] = ()
    # Native lines: Files API files the request names (``files/<id>``); their bytes are not ours to hash.
    api_files: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """Parsed but refused. ``key`` is None when the key itself is unsafe (or for a bad defaults line)."""

    line: int
    key: str | None
    error: LineError
    input_form: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """Not usable at all (bad JSON, non-UTF-8, over max_line_bytes, not an object)."""

    line: int
    error: LineError
    raw: bytes  # only the first bytes of an over-long line (its message says so)


ParsedLine = PromptRequest | InvalidLine | RejectedLine


class _Invalid(Exception):
    """Internal: a line broke a rule; carries the LineError it becomes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = LineError(code, message)


# ---------------------------------------------------------------------------------------------------------
# Reading lines


def read_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Physical lines numbered from 1, without ``\\n``/``\\r\\n``; None for a line over ``max_line_bytes``."""
    for number, (line, whole) in enumerate(
        split_lines(stream, block=_READ_BLOCK, limit=max_line_bytes, head=_KEPT_HEAD), start=1
    ):
        yield number, line_content(line) if whole else None


# ---------------------------------------------------------------------------------------------------------
# Messages and small checks


def _show(value: object) -> str:
    """The value for a message if it is short and printable, else only its type (never echo big input)."""
    if isinstance(value, str) and len(value) <= 40 and value.isprintable():
        return repr(value)
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    return f"a {type(value).__name__}"


def _show_uri(uri: str) -> str:
    """A URI for a message: longer than ``_show`` allows (people need to see which), still bounded."""
    return repr(uri[:120] + ("..." if len(uri) > 120 else "")) if uri.isprintable() else "a string"


def _opt_str(value: object, what: str, code: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(code, f"{what} must be a string, not {_show(value)}")
    return value


def _check_model(value: object) -> str | None:
    model = _opt_str(value, "model", "bad_model_field")
    if model is None:
        return None
    bare = model.removeprefix("models/")
    if not _MODEL_ID.fullmatch(bare):
        raise _Invalid(
            "bad_model_field", f"model {_show(model)} is not a model id such as 'gemini-3-pro-image'"
        )
    return bare


# The API's priority is an int64.
_INT64: Final = range(-(2**63), 2**63)


def _check_priority(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT64:
        raise _Invalid("bad_priority", f"priority must be an integer (higher runs first), not {_show(value)}")
    return value


def _check_fresh(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _Invalid("bad_fresh", f"fresh must be true or false, not {_show(value)}")


def _check_seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in _INT32:
        raise _Invalid("bad_seed", f"seed must be a 32-bit integer, not {_show(value)}")
    return value


# The API's generationConfig.seed is an int32.
_INT32: Final = range(-(2**31), 2**31)


def _check_lane(value: object) -> Lane | None:
    if value is None:
        return None
    for lane in LANES:
        if value == lane:
            return lane
    raise _Invalid("bad_lane", f'lane must be "batch" or "now", not {_show(value)}')


def _check_size_form(value: object) -> str | None:
    size = _opt_str(value, "image_size", "bad_image_size")
    if size is None or size in KNOWN_SIZES:
        return size
    if size.upper() in KNOWN_SIZES:
        raise _Invalid(
            "bad_image_size", f"image_size {_show(size)} must be written {size.upper()!r} (uppercase K)"
        )
    raise _Invalid(
        "bad_image_size", f"image_size {_show(size)} is not one of {', '.join(sorted(KNOWN_SIZES))}"
    )


def _check_ratio_form(value: object) -> str | None:
    ratio = _opt_str(value, "aspect_ratio", "bad_aspect_ratio")
    if ratio is None or ratio in KNOWN_RATIOS:
        return ratio
    raise _Invalid(
        "bad_aspect_ratio",
        f"aspect_ratio {_show(ratio)} is not one of {', '.join(STANDARD_RATIOS + EXTREME_RATIOS)}",
    )


def _check_modalities(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid("bad_modalities", f'modalities must be a list such as ["IMAGE"], not {_show(value)}')
    unknown = [item for item in value if item not in MODALITIES]
    if unknown:
        raise _Invalid(
            "bad_modalities", f'modality {_show(unknown[0])} is not one of "IMAGE", "TEXT" (uppercase)'
        )
    if "IMAGE" not in value:
        raise _Invalid(
            "bad_modalities", 'modalities must include "IMAGE" (without it the model makes no image)'
        )
    return tuple(value)


def _check_for_model(model: str, spec: ModelSpec | None, ratio: str | None, size: str | None) -> None:
    """Ratio and size against what this model accepts (the form was checked already)."""
    if spec is None:
        return
    if size is not None and size not in spec.image_sizes:
        raise _Invalid(
            "bad_image_size", f"{model} accepts image_size {', '.join(spec.image_sizes)}, not {size!r}"
        )
    if ratio is not None and ratio not in spec.aspect_ratios:
        raise _Invalid(
            "bad_aspect_ratio",
            f"{model} does not accept aspect_ratio {ratio!r}; it takes {', '.join(spec.aspect_ratios)}",
        )


def _check_image_count(model: str, spec: ModelSpec | None, images: int) -> None:
    """No more reference images than the model's documented maximum (models.py)."""
    if spec is not None and spec.max_input_images is not None and images > spec.max_input_images:
        raise _Invalid(
            "too_many_images",
            f"the request has {images} reference images; {model} takes at most {spec.max_input_images}",
        )


_FILES_API_NAME: Final = re.compile(r"files/[a-z0-9][a-z0-9-]{0,39}")
_FILES_API_URI: Final = re.compile(
    r"https://generativelanguage\.googleapis\.com/v1(?:alpha|beta)?/(files/[a-z0-9][a-z0-9-]{0,39})"
)


@dataclass(frozen=True, slots=True)
class _FileReference:
    """What a native ``fileData.fileUri`` names: an object of this bucket, or a Files API file."""

    bucket_object: str | None = None  # relative object name, sent as the ``images`` field's are
    api_file: str | None = None  # "files/<id>", passed on to the API as written


def _file_reference(uri: object, bucket_name: str | None) -> _FileReference:
    """Check a native request's ``fileData.fileUri``: ``gs://<this bucket>/<object>``, a Files API URI
    (``https://generativelanguage.googleapis.com/v1beta/files/<id>``) or name (``files/<id>``); anything else
    (another bucket, any other URL) is refused, saying what is accepted."""
    if not isinstance(uri, str):
        raise _Invalid("bad_image_ref", f"fileData.fileUri must be a string, not {_show(uri)}")
    if uri.startswith("gs://"):
        bucket, _, path = uri.removeprefix("gs://").partition("/")
        if bucket_name is None or bucket != bucket_name:
            where = f"gs://{bucket_name}/..." if bucket_name else "this deployment's bucket (gs://...)"
            raise _Invalid(
                "bad_image_ref",
                f"fileData.fileUri {_show_uri(uri)} is not in {where}: only its objects are sent",
            )
        try:
            return _FileReference(bucket_object=check_relative_path(path, what="image path"))
        except UnsafeNameError as exc:
            raise _Invalid("bad_image_ref", f"fileData.fileUri {_show_uri(uri)}: {exc}") from None
    if _FILES_API_NAME.fullmatch(uri):
        return _FileReference(api_file=uri)
    match = _FILES_API_URI.fullmatch(uri)
    if match:
        return _FileReference(api_file=match.group(1))
    raise _Invalid(
        "bad_image_ref",
        f"fileData.fileUri {_show_uri(uri)} must name an object of this deployment's bucket (gs://BUCKET/path) "
        "or a Files API file (files/ID or https://generativelanguage.googleapis.com/v1beta/files/ID)",
    )


def _text_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _image_tokens(spec: ModelSpec | None) -> int:
    return spec.input_image_tokens if spec is not None else _UNKNOWN_MODEL_IMAGE_TOKENS


def _check_length(model: str, spec: ModelSpec | None, tokens: int) -> None:
    if spec is not None and tokens > spec.max_input_tokens:
        raise _Invalid(
            "prompt_too_long",
            f"the input is about {tokens} tokens; {model} takes at most {spec.max_input_tokens}",
        )


# ---------------------------------------------------------------------------------------------------------
# Defaults


_DEFAULT_FIELDS: Final = {
    "model": "model",
    "image_size": "image_size",
    "imageSize": "image_size",
    "aspect_ratio": "aspect_ratio",
    "aspectRatio": "aspect_ratio",
    "modalities": "modalities",
    "response_modalities": "modalities",
    "responseModalities": "modalities",
    "system": "system",
    "priority": "priority",
    "fresh": "fresh",
    "lane": "lane",
}


def _canonical_fields(line: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """Rename accepted spellings to one name; an unknown field or one given twice breaks the line."""
    values: dict[str, Any] = {}
    for name, value in line.items():
        canonical = aliases.get(name)
        if canonical is None:
            raise _Invalid("unknown_field", f"unknown field {_show(name)}")
        if canonical in values:
            raise _Invalid("bad_request", f"field {canonical!r} is given twice (in two spellings)")
        values[canonical] = value
    return values


def _defaults_from(value: object) -> FileDefaults:
    if not isinstance(value, Mapping):
        raise _Invalid("bad_defaults", f"defaults must be an object, not {_show(value)}")
    try:
        fields = _canonical_fields(value, _DEFAULT_FIELDS)
        system = _opt_str(fields.get("system"), "system", "bad_defaults")
        return FileDefaults(
            model=_check_model(fields.get("model")),
            image_size=_check_size_form(fields.get("image_size")),
            aspect_ratio=_check_ratio_form(fields.get("aspect_ratio")),
            modalities=_check_modalities(fields.get("modalities")),
            system=system if system and system.strip() else None,
            priority=_check_priority(fields.get("priority")),
            fresh=_check_fresh(fields.get("fresh")),
            lane=_check_lane(fields.get("lane")),
        )
    except _Invalid as exc:
        raise _Invalid("bad_defaults", f"defaults: {exc.error.message}") from None


def parse_defaults(value: object) -> FileDefaults:
    """Defaults from a JSON object (a message's ``defaults``, configuration); raises InputError saying why."""
    try:
        return _defaults_from(value)
    except _Invalid as exc:
        raise InputError(exc.error.message) from None


# ---------------------------------------------------------------------------------------------------------
# Native requests: casing and unknown fields


def _check_known_fields(raw_request: dict[str, Any]) -> None:
    """Refuse a request with a field the API does not know: in a batch file, one such line fails the whole batch."""
    unknown = unknown_fields(raw_request)
    if unknown:
        first = unknown[0]
        where = f"request.{first.path}" if first.path else "request"
        raise _Invalid(
            "unknown_field",
            f"{where} has a field the Gemini API does not know: {_show(first.name)} "
            "(the API would refuse the whole batch for it)",
        )


def _camel_case(value: Any, message: str) -> Any:
    """``value`` (a message or a list of them) with its known field names in camelCase, recursively."""
    if isinstance(value, list):
        return [_camel_case(item, message) for item in value]
    if not isinstance(value, dict):
        return value
    spellings = SPELLINGS[message]
    children = MESSAGES[message]
    fields: dict[str, Any] = value
    out: dict[str, Any] = {}
    for name, item in fields.items():
        camel = spellings.get(name, name)
        if camel in out:
            raise _Invalid("bad_request", f"{message} field {camel!r} is given twice (in two spellings)")
        child = children.get(camel)
        out[camel] = item if child is None else _camel_case(item, child)
    return out


# ---------------------------------------------------------------------------------------------------------
# Lines


_SIMPLE_FIELDS: Final = {
    **_DEFAULT_FIELDS,
    "prompt": "prompt",
    "key": "key",
    "images": "images",
    "seed": "seed",
}
_NATIVE_FIELDS: Final = frozenset({"key", "request", "model", "priority", "lane", "fresh"})


class _LineParser:
    """JSON objects (lines or message items) -> ParsedLines; remembers keys and the defaults in force."""

    def __init__(self, options: ParseOptions) -> None:
        self._options = options
        self._defaults = options.defaults
        self._bad_defaults: str | None = None  # why every line is refused after unusable defaults
        self._seen: set[str] = set()

    def use_defaults(self, value: object, where: str) -> LineError | None:
        """Apply a file's or message's defaults; if they are unusable, refuse every line from now on."""
        try:
            self._defaults = _defaults_from(value).over(self._options.defaults)
        except _Invalid as exc:
            self.refuse_all(where, exc.error.message)
            return exc.error
        return None

    def refuse_all(self, where: str, reason: str) -> None:
        self._bad_defaults = f"{where} are invalid, so this line was not run: {reason}"

    def parse(self, line: int, obj: Mapping[str, Any]) -> PromptRequest | InvalidLine:
        """One JSON object -> a valid request, or the reason it is refused (with its input form)."""
        fields = {name: value for name, value in obj.items() if name != "error"}
        native = "request" in fields
        form = self._input_form(line, fields, native=native)
        key: str | None = None
        try:
            key = self._check_key(fields.get("key"), line)
            if key in self._seen:
                raise _Invalid("duplicate_key", f"key {_show(key)} is used by an earlier line of this input")
            self._seen.add(key)
            if self._bad_defaults is not None:
                raise _Invalid("bad_defaults", self._bad_defaults)
            if native:
                return self._native(line, key, fields, form)
            return self._simple(line, key, fields, form)
        except _Invalid as exc:
            return InvalidLine(line, key, exc.error, form)

    def _input_form(self, line: int, fields: dict[str, Any], *, native: bool) -> dict[str, Any]:
        """The line as written, its key made explicit and the defaults it relies on written in.

        Spellings the line used win. A native request gets its defaults once it is normalised (``_native``).
        """
        raw_key = fields.get("key")
        form: dict[str, Any] = {"key": f"line-{line}" if raw_key is None else raw_key}
        form.update((name, value) for name, value in fields.items() if name != "key")
        defaults = self._defaults
        model = defaults.model or self._options.default_model
        if native:
            form.setdefault("model", model)
            if defaults.priority is not None:
                form.setdefault("priority", defaults.priority)
            if defaults.fresh is not None:
                form.setdefault("fresh", defaults.fresh)
            if defaults.lane is not None:
                form.setdefault("lane", defaults.lane)
            return form
        present = {_SIMPLE_FIELDS.get(name) for name in fields}
        for name, value in (
            ("model", model),
            ("aspect_ratio", defaults.aspect_ratio),
            ("image_size", defaults.image_size),
            ("modalities", list(defaults.modalities) if defaults.modalities is not None else None),
            ("system", defaults.system),
            ("priority", defaults.priority),
            ("fresh", defaults.fresh),
            ("lane", defaults.lane),
        ):
            if name not in present and value is not None:
                form[name] = value
        return form

    def _check_key(self, raw_key: object, line: int) -> str:
        if raw_key is None:
            key = f"line-{line}"
        elif not isinstance(raw_key, str):
            raise _Invalid("invalid_key", f"key must be a string, not {_show(raw_key)}")
        else:
            key = raw_key
        try:
            check_key(key)
        except UnsafeNameError as exc:
            raise _Invalid("invalid_key", f"key {_show(key)} is unsafe: {exc}") from None
        return key

    def _model(self, value: object) -> tuple[str, ModelSpec | None]:
        model = _check_model(value) or self._defaults.model or self._options.default_model
        return model, model_spec(model)

    def _priority(self, value: object) -> int:
        priority = _check_priority(value)
        if priority is None:
            priority = self._defaults.priority
        return self._options.default_priority if priority is None else priority

    def _fresh(self, value: object) -> bool:
        fresh = _check_fresh(value)
        return bool(self._defaults.fresh) if fresh is None else fresh

    def _lane(self, value: object) -> Lane:
        return _check_lane(value) or self._defaults.lane or "batch"

    def _image_ref(self, ref: object) -> str:
        if not isinstance(ref, str):
            raise _Invalid("bad_image_ref", f"images entries must be strings, not {_show(ref)}")
        path = ref
        if ref.startswith("gs://"):
            bucket, _, path = ref.removeprefix("gs://").partition("/")
            if bucket != self._options.bucket_name:
                raise _Invalid("bad_image_ref", f"image {_show(ref)} is not in this deployment's bucket")
        elif "://" in ref:
            raise _Invalid("bad_image_ref", f"image {_show(ref)} must be a path in this deployment's bucket")
        elif ref.startswith("/"):
            if not self._options.local_paths:
                raise _Invalid(
                    "bad_image_ref",
                    f"image {_show(ref)} is a path on someone's machine: in the cloud, name an object of "
                    "this bucket (a path relative to the bucket, or gs://BUCKET/PATH)",
                )
            path = LOCAL_FILES_PREFIX + ref.lstrip("/")
        try:
            return check_relative_path(path, what="image path")
        except UnsafeNameError as exc:
            raise _Invalid("bad_image_ref", f"image {_show(ref)}: {exc}") from None

    def _simple(
        self, line: int, key: str, line_fields: dict[str, Any], form: dict[str, Any]
    ) -> PromptRequest:
        fields = _canonical_fields(line_fields, _SIMPLE_FIELDS)
        defaults = self._defaults
        model, spec = self._model(fields.get("model"))
        ratio = _check_ratio_form(fields.get("aspect_ratio")) or defaults.aspect_ratio
        size = _check_size_form(fields.get("image_size")) or defaults.image_size
        modalities = _check_modalities(fields.get("modalities")) or defaults.modalities or ("IMAGE",)
        system = _opt_str(fields.get("system"), "system", "bad_request")
        if system is None:
            system = defaults.system
        if "prompt" not in fields:
            raise _Invalid("missing_prompt", 'the line has no "prompt" (nor a native "request")')
        prompt = _opt_str(fields["prompt"], "prompt", "bad_request")
        if not prompt or not prompt.strip():
            raise _Invalid("empty_prompt", "the prompt is empty")
        images = fields.get("images")
        if images is None:
            images = []
        if not isinstance(images, list):
            raise _Invalid("bad_image_ref", f"images must be a list of paths, not {_show(images)}")
        refs = tuple(self._image_ref(ref) for ref in images)
        _check_for_model(model, spec, ratio, size)
        _check_image_count(model, spec, len(refs))
        tokens = _text_tokens(len(prompt) + len(system or "")) + len(refs) * _image_tokens(spec)
        _check_length(model, spec, tokens)

        generation: dict[str, Any] = {"responseModalities": list(modalities)}
        image_config = {}
        if ratio is not None:
            image_config["aspectRatio"] = ratio
        if size is not None:
            image_config["imageSize"] = size
        if image_config:
            generation["imageConfig"] = image_config
        seed = _check_seed(fields.get("seed"))
        if seed is not None:
            generation["seed"] = seed
        request: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": generation,
        }
        if system and system.strip():
            request["systemInstruction"] = {"parts": [{"text": system}]}
        return PromptRequest(
            line=line,
            key=key,
            model=model,
            request=request,
            image_refs=refs,
            image_size=_cost_size(size, spec),
            aspect_ratio=ratio,
            estimated_input_tokens=tokens,
            input_form=form,
            priority=self._priority(fields.get("priority")),
            fresh=self._fresh(fields.get("fresh")),
            lane=self._lane(fields.get("lane")),
        )

    def _native(self, line: int, key: str, fields: dict[str, Any], form: dict[str, Any]) -> PromptRequest:
        extra = [name for name in fields if name not in _NATIVE_FIELDS]
        if extra:
            if extra[0] in _SIMPLE_FIELDS:
                raise _Invalid(
                    "bad_request",
                    f"field {extra[0]!r} is not allowed next to a native request "
                    "(only key, model, priority, lane and fresh are)",
                )
            raise _Invalid("unknown_field", f"unknown field {_show(extra[0])}")
        raw_request = fields["request"]
        if not isinstance(raw_request, dict):
            raise _Invalid("bad_request", f"request must be an object, not {_show(raw_request)}")
        if "config" in raw_request:
            raise _Invalid(
                "bad_request", "request has 'config' (the SDK's name); the REST field is generationConfig"
            )
        _check_known_fields(raw_request)
        request = _camel_case(raw_request, TOP)
        # A batch takes its model from the job, so a model inside the request moves up to the line.
        inner_model = _check_model(request.pop("model", None))
        line_model = _check_model(fields.get("model"))
        if inner_model and line_model and inner_model != line_model:
            raise _Invalid(
                "bad_model_field", f"model {line_model!r} and request.model {inner_model!r} differ"
            )
        model, spec = self._model(line_model or inner_model)
        self._fill_native(request)
        form["model"] = model
        form["request"] = request

        text_chars, image_parts = _count_contents(request.get("contents"))
        refs, slots, api_files = self._file_parts(request["contents"])
        _no_file_in_system(request.get("systemInstruction"))
        system_chars = _count_system(request.get("systemInstruction"))
        generation = request.get("generationConfig", {})
        if not isinstance(generation, dict):
            raise _Invalid("bad_request", "request.generationConfig must be an object")
        _check_modalities(generation.get("responseModalities"))
        image_config = generation.get("imageConfig", {})
        if not isinstance(image_config, dict):
            raise _Invalid("bad_request", "request.generationConfig.imageConfig must be an object")
        ratio = _check_ratio_form(image_config.get("aspectRatio"))
        size = _check_size_form(image_config.get("imageSize"))
        _check_for_model(model, spec, ratio, size)
        _check_image_count(model, spec, image_parts)
        tokens = _text_tokens(text_chars + system_chars) + image_parts * _image_tokens(spec)
        _check_length(model, spec, tokens)
        return PromptRequest(
            line=line,
            key=key,
            model=model,
            request=request,
            image_refs=refs,
            image_size=_cost_size(size, spec),
            aspect_ratio=ratio,
            estimated_input_tokens=tokens,
            input_form=form,
            priority=self._priority(fields.get("priority")),
            fresh=self._fresh(fields.get("fresh")),
            lane=self._lane(fields.get("lane")),
            image_slots=slots,
            api_files=api_files,
        )

    def _file_parts(
        self, contents: list[dict[str, Any]]
    ) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[str, ...]]:
        """The request's ``fileData`` parts: (bucket objects, where each stands, Files API files)."""
        refs: list[str] = []
        slots: list[tuple[int, int]] = []
        api_files: list[str] = []
        for c, content in enumerate(contents):
            for p, part in enumerate(content["parts"]):
                if "fileData" not in part:
                    continue
                data = part["fileData"]
                if not isinstance(data, dict):
                    raise _Invalid("bad_image_ref", "a fileData part must be an object with a fileUri")
                reference = _file_reference(data.get("fileUri"), self._options.bucket_name)
                if reference.bucket_object is not None:
                    refs.append(reference.bucket_object)
                    slots.append((c, p))
                elif reference.api_file is not None:
                    api_files.append(reference.api_file)
        return tuple(refs), tuple(slots), tuple(api_files)

    def _fill_native(self, request: dict[str, Any]) -> None:
        """Defaults fill only what the request leaves out (the rest is the user's own request)."""
        defaults = self._defaults
        if defaults.system is not None and "systemInstruction" not in request:
            request["systemInstruction"] = {"parts": [{"text": defaults.system}]}
        if defaults.modalities is None and defaults.aspect_ratio is None and defaults.image_size is None:
            return
        generation = request.setdefault("generationConfig", {})
        if not isinstance(generation, dict):
            return  # the validation that follows reports it
        if defaults.modalities is not None:
            generation.setdefault("responseModalities", list(defaults.modalities))
        if defaults.aspect_ratio is None and defaults.image_size is None:
            return
        image_config = generation.setdefault("imageConfig", {})
        if not isinstance(image_config, dict):
            return
        if defaults.aspect_ratio is not None:
            image_config.setdefault("aspectRatio", defaults.aspect_ratio)
        if defaults.image_size is not None:
            image_config.setdefault("imageSize", defaults.image_size)


def _cost_size(size: str | None, spec: ModelSpec | None) -> str:
    if size is not None:
        return size
    return spec.default_size if spec is not None else "1K"


def _count_contents(contents: object) -> tuple[int, int]:
    """(text characters, image parts) of a native request's contents; checks their shape."""
    if not isinstance(contents, list) or not contents:
        raise _Invalid("bad_request", "request.contents must be a non-empty list")
    text_chars = 0
    images = 0
    has_text = False
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise _Invalid("bad_request", "every request.contents entry needs a non-empty parts list")
        for part in parts:
            if not isinstance(part, dict):
                raise _Invalid("bad_request", "request.contents parts must be objects")
            text = part.get("text")
            if isinstance(text, str):
                text_chars += len(text)
                has_text = has_text or bool(text.strip())
            elif "inlineData" in part:
                blob = part["inlineData"]
                if not isinstance(blob, dict) or not isinstance(blob.get("data"), str):
                    raise _Invalid("bad_request", "an inlineData part needs base64 data as a string")
                images += 1
            elif "fileData" in part:
                images += 1
    if not has_text and not images:
        raise _Invalid("empty_prompt", "the request has no text and no image")
    return text_chars, images


def _no_file_in_system(system: object) -> None:
    """A file in the system instruction would be fetched with the deployment's key, unchecked: refused."""
    parts = system.get("parts") if isinstance(system, dict) else None
    if isinstance(parts, list) and any(isinstance(part, dict) and "fileData" in part for part in parts):
        raise _Invalid(
            "bad_image_ref", "request.systemInstruction must not hold fileData: put images in contents"
        )


def _count_system(system: object) -> int:
    if system is None:
        return 0
    parts = system.get("parts") if isinstance(system, dict) else None
    if not isinstance(parts, list):
        raise _Invalid("bad_request", 'request.systemInstruction must be {"parts": [{"text": ...}]}')
    return sum(
        len(part["text"]) for part in parts if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


# ---------------------------------------------------------------------------------------------------------
# Entry points


def _utf8_error(bad: UnicodeDecodeError) -> LineError:
    return LineError("bad_utf8", f"the line is not valid UTF-8 (byte {bad.start})")


def _decode_error(raw: bytes, exc: orjson.JSONDecodeError) -> LineError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return _utf8_error(bad)
    return LineError("bad_json", f"the line is not valid JSON: {exc}")


def parse_prompt_file(stream: BinaryIO, fmt: LineFormat, options: ParseOptions) -> Iterator[ParsedLine]:
    """Every non-blank line of a prompt file, in order, as a PromptRequest, InvalidLine or RejectedLine."""
    parser = _LineParser(options)
    first = True
    lines = split_lines(stream, block=_READ_BLOCK, limit=options.max_line_bytes, head=_KEPT_HEAD)
    for number, (line, whole) in enumerate(lines, start=1):
        raw = line_content(line) if whole else line
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if whole and (not raw or raw.isspace()):
            continue
        was_first, first = first, False
        if not whole:
            message = (
                f"the line is longer than {options.max_line_bytes} bytes; only its first {len(raw)} are kept"
            )
            yield RejectedLine(number, LineError("line_too_long", message), raw)
        elif fmt == "txt":
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError as bad:
                yield RejectedLine(number, _utf8_error(bad), raw)
                continue
            if text:
                yield parser.parse(number, {"prompt": text})
        else:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield RejectedLine(number, _decode_error(raw, exc), raw)
                continue
            if not isinstance(obj, dict):
                yield RejectedLine(
                    number,
                    LineError(
                        "not_an_object",
                        "the line is JSON but not an object (a prompt file is JSONL: one JSON object per line)",
                    ),
                    raw,
                )
            elif was_first and "defaults" in obj:
                problem = _defaults_line(parser, number, obj)
                if problem is not None:
                    yield problem
            else:
                yield parser.parse(number, obj)


def _defaults_line(parser: _LineParser, number: int, obj: dict[str, Any]) -> InvalidLine | None:
    """Apply a file's defaults line; an InvalidLine (bad_defaults) for it if it is unusable."""
    where = f"the file's defaults (line {number})"
    form = {"defaults": obj["defaults"]}
    extra = [name for name in obj if name not in {"defaults", "error"}]
    if extra:
        error = LineError("bad_defaults", f'a defaults line has only "defaults", not {_show(extra[0])}')
        parser.refuse_all(where, error.message)
        return InvalidLine(number, None, error, form)
    problem = parser.use_defaults(obj["defaults"], where)
    return None if problem is None else InvalidLine(number, None, problem, form)


def parse_prompt_items(
    items: Iterable[object], options: ParseOptions, defaults: Mapping[str, Any] | None = None
) -> Iterator[ParsedLine]:
    """A Pub/Sub message's ``prompts``: objects are JSONL lines, strings txt prompts; line = 1-based index.

    Unusable message ``defaults`` refuse every item (code ``bad_defaults``), as a bad defaults line does.
    """
    parser = _LineParser(options)
    if defaults is not None:
        parser.use_defaults(defaults, "the message's defaults")
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict):
            yield parser.parse(number, item)
        elif isinstance(item, str):
            yield parser.parse(number, {"prompt": item.strip()})
        else:
            error = LineError("not_an_object", "a prompt must be an object or a string")
            yield RejectedLine(number, error, orjson.dumps(item))


def with_images(req: PromptRequest, image_parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The request with its reference images' parts (one per ``image_refs``, in order) in place: each in
    place of its ``fileData`` part (native lines), else appended to the first content (simple lines)."""
    request = req.request
    if not image_parts:
        return request
    contents = [{**content, "parts": list(content["parts"])} for content in request["contents"]]
    if req.image_slots:
        for (c, p), part in zip(req.image_slots, image_parts, strict=True):
            contents[c]["parts"][p] = part
    else:
        contents[0]["parts"].extend(image_parts)
    return {**request, "contents": contents}


def fingerprint_form(req: PromptRequest) -> dict[str, Any]:
    """The request as the pay-once cache hashes it: each reference image a placeholder where it stands
    (``{"referenceImage": n}``; its content is hashed beside, by number), never its path or URI."""
    return with_images(req, [{"referenceImage": n} for n in range(len(req.image_refs))])


def request_line(
    req: PromptRequest, extra_parts: Sequence[dict[str, Any]] = (), labels: Mapping[str, str] | None = None
) -> bytes:
    """The JSONL line ``{"key", "request"}`` (no newline), with ``extra_parts``, the reference images'
    parts, in place (``with_images``); ``labels`` go in the request (Vertex AI echoes them with its answer)."""
    request = with_images(req, extra_parts)
    if labels:
        request = {**request, "labels": dict(labels)}
    return orjson.dumps({"key": req.key, "request": request})


# ---------------------------------------------------------------------------------------------------------
# Files that are not what their extension says, and CSV


_HEADER_CELL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The README's one-line converter of a JSON array file to JSONL.
JSON_ARRAY_CONVERTER: Final = "python -c 'import json,sys; [print(json.dumps(o)) for o in json.load(sys.stdin)]' < FILE.json > FILE.jsonl"


def shape_problem(head: bytes, fmt: LineFormat) -> str | None:
    """Why the start of a file says it is not what its extension claims (a JSON array in a .json/.jsonl, a
    CSV header in a .txt: every line would be billed as a prompt), or None."""
    text = head.removeprefix(_BOM).lstrip()
    if fmt == "jsonl" and text.startswith(b"["):
        return (
            "is a JSON array, but prompt files are JSONL (one JSON object per line); convert it with "
            + JSON_ARRAY_CONVERTER
        )
    if fmt == "txt":
        first = text.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
        cells = [cell.strip() for cell in first.split(",")]
        if len(cells) >= 2 and all(_HEADER_CELL.fullmatch(cell) for cell in cells):
            return (
                f"starts with what looks like a CSV header ({first!r}), and every line of a .txt file is billed "
                "as a prompt; name it .csv (its `prompt` column is read as rows) or convert it to .jsonl"
            )
    return None


_CSV_INTEGERS: Final = frozenset({"priority", "seed"})


def csv_as_jsonl(rows: Iterable[str]) -> Iterator[bytes]:
    """A CSV prompt file's lines as JSONL lines: one object per row, its columns the simple-line fields
    (`prompt`, `key`, `aspect_ratio`...; `images` separated by ';'); empty cells are left out. The header
    becomes a blank line, so line numbers stay the CSV's (for rows on one line)."""
    reader = csv.DictReader(rows)
    names = [name.strip() for name in reader.fieldnames or []]
    if "prompt" not in names:
        raise InputError(
            f"a .csv prompt file needs a `prompt` column (columns found: {', '.join(names) or 'none'})"
        )
    yield b"\n"
    for row in reader:
        line: dict[str, Any] = {}
        for name, cell in row.items():
            if name is None:  # more cells than the header names: kept, so the line says what is wrong
                line["extra_cells"] = cell
                continue
            value = cell.strip() if isinstance(cell, str) else ""
            if not value:
                continue
            name = name.strip()
            if name in _CSV_INTEGERS and re.fullmatch(r"-?\d+", value):
                line[name] = int(value)
            elif name == "fresh" and value.lower() in {"true", "false"}:
                line[name] = value.lower() == "true"
            elif name == "images":
                line[name] = [part.strip() for part in value.split(";") if part.strip()]
            else:
                line[name] = value
        yield orjson.dumps(line) + b"\n"
