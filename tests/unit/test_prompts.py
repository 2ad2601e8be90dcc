"""Prompt files and message items -> batch requests: line forms, defaults, key and path rules, limits."""

from __future__ import annotations

import io
import tracemalloc
from typing import Any, BinaryIO, cast

import orjson
import pytest

from promptdrop.errors import InputError
from promptdrop.outcomes import LineError
from promptdrop.prompts import (
    FileDefaults,
    InvalidLine,
    ParsedLine,
    ParseOptions,
    PromptRequest,
    RejectedLine,
    detect_format,
    fingerprint_form,
    parse_defaults,
    parse_prompt_file,
    parse_prompt_items,
    read_lines,
    request_line,
)

PRO = "gemini-3-pro-image"
FLASH_31 = "gemini-3.1-flash-image"
FLASH_25 = "gemini-2.5-flash-image"
OPTIONS = ParseOptions(default_model=PRO, bucket_name="own-bucket")


def jsonl(*lines: object) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def parse(data: bytes, options: ParseOptions = OPTIONS, fmt: str = "jsonl") -> list[ParsedLine]:
    return list(parse_prompt_file(io.BytesIO(data), fmt, options))  # type: ignore[arg-type]


def parse_one(line: dict[str, Any], options: ParseOptions = OPTIONS) -> ParsedLine:
    (parsed,) = parse(jsonl(line), options)
    return parsed


def valid(line: dict[str, Any], options: ParseOptions = OPTIONS) -> PromptRequest:
    parsed = parse_one(line, options)
    assert isinstance(parsed, PromptRequest), parsed
    return parsed


def simple_request(text: str, image_config: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    generation: dict[str, Any] = {"responseModalities": extra.pop("modalities", ["IMAGE"])}
    if image_config:
        generation["imageConfig"] = image_config
    request: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": generation,
    }
    request.update(extra)
    return request


def chunky(data: bytes, chunk: int) -> BinaryIO:
    return cast(BinaryIO, ChunkyStream(data, chunk))


class ChunkyStream(io.RawIOBase):
    """A stream that returns at most ``chunk`` bytes per read, like a network body."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = memoryview(data)
        self._chunk = chunk
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        end = self._pos + min(self._chunk, size if size >= 0 else self._chunk)
        piece = bytes(self._data[self._pos : end])
        self._pos += len(piece)
        return piece


class LongLineStream(io.RawIOBase):
    """``size`` bytes of one line made up on the fly, then ``tail``: nothing big exists in memory."""

    def __init__(self, size: int, tail: bytes) -> None:
        self._left = size
        self._tail = tail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left > 0:
            n = min(size, self._left)
            self._left -= n
            return b"x" * n
        tail, self._tail = self._tail[:size], self._tail[size:]
        return tail


# --- files and lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("inbox/a.jsonl", "jsonl"),
        ("inbox/a.JSONL", "jsonl"),
        ("inbox/a.json", "jsonl"),
        ("inbox/a.ndjson", "jsonl"),
        ("inbox/a.txt", "txt"),
        ("inbox/a.csv", None),
        ("inbox/jsonl", None),
        ("inbox/a.jsonl.gz", None),
    ],
    ids=["jsonl", "upper", "json", "ndjson", "txt", "csv", "no-suffix", "gz"],
)
def test_detect_format(name: str, expected: str | None) -> None:
    """The suffix decides the format; anything else is an unusable file."""
    assert detect_format(name) == expected


READ_CASES = [
    (b"a\nb\n", [(1, b"a"), (2, b"b")]),
    (b"a\nb", [(1, b"a"), (2, b"b")]),
    (b"a\r\nb\r\n", [(1, b"a"), (2, b"b")]),
    (b"a\r\n\r\nb", [(1, b"a"), (2, b""), (3, b"b")]),
    (b"", []),
    (b"\n", [(1, b"")]),
    (b"x\ry\n", [(1, b"x\ry")]),
]


@pytest.mark.parametrize(
    ("data", "expected"),
    READ_CASES,
    ids=["lf", "no-final-lf", "crlf", "blank", "empty", "lf-only", "inner-cr"],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20], ids=["1b", "2b", "3b", "1MiB"])
def test_read_lines_splits_like_the_file_looks(
    data: bytes, expected: list[tuple[int, bytes]], chunk: int
) -> None:
    """Physical line numbers, no line ends, CRLF and a missing final newline, whatever the read sizes."""
    assert list(read_lines(chunky(data, chunk), 100)) == expected


def test_read_lines_joins_lines_that_span_blocks() -> None:
    """A line longer than one read block comes back whole when it is under the limit."""
    big = b"y" * (3 * 1024 * 1024 + 7)
    data = b"a\n" + big + b"\r\nb"
    assert list(read_lines(io.BytesIO(data), 4 * 1024 * 1024)) == [(1, b"a"), (2, big), (3, b"b")]


@pytest.mark.parametrize(
    ("line", "whole"),
    [(b"z" * 10, True), (b"z" * 10 + b"\r", True), (b"z" * 11, False), (b"z" * 11 + b"\r", False)],
    ids=["at-limit", "at-limit-crlf", "over", "over-crlf"],
)
@pytest.mark.parametrize("chunk", [1, 4, 1 << 20], ids=["1b", "4b", "1MiB"])
def test_read_lines_limit_is_exact(line: bytes, whole: bool, chunk: int) -> None:
    """max_line_bytes counts the line without its line end; one byte more gives None."""
    lines = list(read_lines(chunky(line + b"\nnext", chunk), 10))
    assert lines == [(1, line.rstrip(b"\r") if whole else None), (2, b"next")]


def test_over_long_line_is_skipped_without_buffering() -> None:
    """A 64 MiB line over a 1 MiB limit is skipped with flat memory, and the next line still parses."""
    tail = b"\n" + orjson.dumps({"prompt": "after", "key": "after"}) + b"\n"
    tracemalloc.start()
    try:
        parsed = list(
            parse_prompt_file(
                cast(BinaryIO, LongLineStream(64 * 1024 * 1024, tail)),
                "jsonl",
                ParseOptions(PRO, max_line_bytes=1024 * 1024),
            )
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    rejected, after = parsed
    assert isinstance(rejected, RejectedLine)
    assert (rejected.line, rejected.error.code) == (1, "line_too_long")
    assert rejected.raw == b"x" * 1024
    assert "first 1024" in rejected.error.message
    assert isinstance(after, PromptRequest)
    assert (after.line, after.key) == (2, "after")


def test_five_megabyte_line_over_one_megabyte_limit() -> None:
    """A 5 MB JSON line over a 1 MB limit is rejected as line_too_long; the lines around it still run."""
    big = {"prompt": "p" * (5 * 1024 * 1024), "key": "big"}
    data = jsonl({"prompt": "before"}, big, {"prompt": "after"})
    parsed = parse(data, ParseOptions(PRO, max_line_bytes=1024 * 1024))
    assert [type(p).__name__ for p in parsed] == ["PromptRequest", "RejectedLine", "PromptRequest"]
    assert parsed[1].line == 2
    assert isinstance(parsed[1], RejectedLine)
    assert parsed[1].error.code == "line_too_long"
    assert parsed[2].line == 3


def test_blank_lines_are_skipped_and_numbering_stays_physical() -> None:
    """Whitespace-only lines give nothing; later lines keep their physical numbers and default keys."""
    data = b"\n   \n" + jsonl({"prompt": "one"}) + b"\t\r\n" + jsonl({"prompt": "two"})
    parsed = parse(data)
    assert [(p.line, p.key) for p in parsed if isinstance(p, PromptRequest)] == [(3, "line-3"), (5, "line-5")]
    assert len(parsed) == 2


def test_utf8_bom_is_ignored() -> None:
    """A byte-order mark from a Windows editor does not break the first line."""
    parsed = parse(b"\xef\xbb\xbf" + jsonl({"prompt": "hi", "key": "k"}))
    assert isinstance(parsed[0], PromptRequest)
    assert parsed[0].key == "k"


def test_every_non_blank_line_gives_exactly_one_result() -> None:
    """Good, invalid and unparsable lines each give one entry, in line order."""
    data = b"".join(
        [
            jsonl({"prompt": "ok"}),
            b"{not json\n",
            b"\n",
            b"\xff\xfe\n",
            jsonl({"prompt": ""}),
            b"[1]\n",
            jsonl({"prompt": "ok too"}),
        ]
    )
    assert [p.line for p in parse(data)] == [1, 2, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "bad_json"),
        (b'{"prompt": "caf\xe9"}', "bad_utf8"),
        (b'["a", "b"]', "not_an_object"),
        (b"42", "not_an_object"),
        (b'"just a string"', "not_an_object"),
    ],
    ids=["bad-json", "latin1", "array", "number", "string"],
)
def test_unparsable_lines_are_rejected_with_their_bytes(raw: bytes, code: str) -> None:
    """Lines that are not a JSON object become RejectedLine carrying the raw bytes."""
    (parsed,) = parse(raw + b"\n")
    assert isinstance(parsed, RejectedLine)
    assert (parsed.line, parsed.error.code, parsed.raw) == (1, code, raw)
    assert parsed.error.retryable is False


# --- the simple form -----------------------------------------------------------------------------------

SIMPLE_CASES = [
    ("minimal", {"prompt": "a cat"}, PRO, simple_request("a cat"), "1K", None),
    (
        "snake-fields",
        {"prompt": "a cat", "key": "c", "aspect_ratio": "16:9", "image_size": "4K", "system": "be brief"},
        PRO,
        simple_request(
            "a cat",
            {"aspectRatio": "16:9", "imageSize": "4K"},
            systemInstruction={"parts": [{"text": "be brief"}]},
        ),
        "4K",
        "16:9",
    ),
    (
        "camel-fields",
        {"prompt": "a cat", "aspectRatio": "3:4", "imageSize": "2K", "responseModalities": ["TEXT", "IMAGE"]},
        PRO,
        simple_request("a cat", {"aspectRatio": "3:4", "imageSize": "2K"}, modalities=["TEXT", "IMAGE"]),
        "2K",
        "3:4",
    ),
    (
        "modalities",
        {"prompt": "a cat", "modalities": ["IMAGE", "TEXT"]},
        PRO,
        simple_request("a cat", modalities=["IMAGE", "TEXT"]),
        "1K",
        None,
    ),
    (
        "models-prefix",
        {"prompt": "a", "model": "models/" + FLASH_25},
        FLASH_25,
        simple_request("a"),
        "1K",
        None,
    ),
    (
        "flash-31-512-extreme-ratio",
        {"prompt": "a", "model": FLASH_31, "image_size": "512", "aspect_ratio": "1:8"},
        FLASH_31,
        simple_request("a", {"aspectRatio": "1:8", "imageSize": "512"}),
        "512",
        "1:8",
    ),
    (
        "flash-25-1k",
        {"prompt": "a", "model": FLASH_25, "image_size": "1K"},
        FLASH_25,
        simple_request("a", {"imageSize": "1K"}),
        "1K",
        None,
    ),
    (
        "unknown-model-any-known-size",
        {"prompt": "a", "model": "gemini-9-image", "image_size": "4K", "aspect_ratio": "8:1"},
        "gemini-9-image",
        simple_request("a", {"aspectRatio": "8:1", "imageSize": "4K"}),
        "4K",
        "8:1",
    ),
    (
        "error-field-ignored",
        {"prompt": "a", "error": {"code": "safety", "message": "x", "retryable": False}},
        PRO,
        simple_request("a"),
        "1K",
        None,
    ),
]


@pytest.mark.parametrize(
    ("line", "model", "expected", "size", "ratio"),
    [case[1:] for case in SIMPLE_CASES],
    ids=[case[0] for case in SIMPLE_CASES],
)
def test_simple_lines_become_requests(
    line: dict[str, Any], model: str, expected: dict[str, Any], size: str, ratio: str | None
) -> None:
    """Each simple-form spelling gives the documented GenerateContentRequest, model and cost size."""
    parsed = valid(line)
    assert parsed.request == expected
    assert (parsed.model, parsed.image_size, parsed.aspect_ratio) == (model, size, ratio)


def test_an_absolute_image_path_names_a_local_file_under_its_bucket_prefix() -> None:
    """A local bucket (``local_paths``): `/home/me/logo.png` is read from ``local-files/home/me/logo.png``,
    where `promptdrop run` copies it; `..` is still refused."""
    local = ParseOptions(default_model=PRO, local_paths=True)
    line = valid({"prompt": "a", "images": ["/home/me/logo.png"]}, local)
    assert line.image_refs == ("local-files/home/me/logo.png",)
    refused = parse_one({"prompt": "a", "images": ["/home/../etc/passwd"]}, local)
    assert isinstance(refused, InvalidLine) and refused.error.code == "bad_image_ref"


def test_simple_line_estimated_tokens_count_text_and_reference_images() -> None:
    """Text is ceil(chars/4) tokens (prompt and system), each reference image the model's image tokens."""
    parsed = valid({"prompt": "x" * 10, "system": "y" * 3, "images": ["a.png", "gs://own-bucket/b/c.png"]})
    assert parsed.estimated_input_tokens == 4 + 2 * 560
    assert parsed.image_refs == ("a.png", "b/c.png")


def test_missing_key_is_line_number() -> None:
    """A line without a key is keyed line-<n> after its physical line."""
    parsed = parse(b"\n\n" + jsonl({"prompt": "a"}))
    assert isinstance(parsed[0], PromptRequest)
    assert parsed[0].key == "line-3"


# --- the native form -----------------------------------------------------------------------------------

SNAKE_NATIVE = {
    "key": "n",
    "request": {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "restyle"},
                    {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}},
                    {
                        "file_data": {
                            "file_uri": "https://generativelanguage.googleapis.com/v1beta/files/x",
                            "mime_type": "image/jpeg",
                        }
                    },
                ],
            }
        ],
        "system_instruction": {"parts": [{"text": "sys"}]},
        "generation_config": {
            "response_modalities": ["TEXT", "IMAGE"],
            "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
            "thinking_config": {"include_thoughts": True, "thinking_budget": 128},
            "candidate_count": 1,
            "max_output_tokens": 4096,
            "top_p": 0.9,
            "top_k": 40,
            "response_mime_type": "text/plain",
        },
        "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "tool_config": {"function_calling_config": {"mode": "AUTO", "allowed_function_names": ["f"]}},
        "tools": [
            {
                "function_declarations": [
                    {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"max_tokens": {"type": "integer"}, "file_uri": {"type": "string"}},
                        },
                    }
                ]
            }
        ],
        "cached_content": "cachedContents/abc",
    },
}
CAMEL_NATIVE_REQUEST = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "restyle"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {
                    "fileData": {
                        "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/x",
                        "mimeType": "image/jpeg",
                    }
                },
            ],
        }
    ],
    "systemInstruction": {"parts": [{"text": "sys"}]},
    "generationConfig": {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 128},
        "candidateCount": 1,
        "maxOutputTokens": 4096,
        "topP": 0.9,
        "topK": 40,
        "responseMimeType": "text/plain",
    },
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}},
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "f",
                    # A free-form schema: its property names are the user's and stay as written.
                    "parameters": {
                        "type": "object",
                        "properties": {"max_tokens": {"type": "integer"}, "file_uri": {"type": "string"}},
                    },
                }
            ]
        }
    ],
    "cachedContent": "cachedContents/abc",
}


@pytest.mark.parametrize(
    "line",
    [SNAKE_NATIVE, {"key": "n", "request": CAMEL_NATIVE_REQUEST}],
    ids=["snake_case", "camelCase"],
)
def test_native_lines_are_normalised_to_camel_case(line: dict[str, Any]) -> None:
    """Known field names become camelCase; free-form schema keys are left alone."""
    parsed = valid(line)
    assert parsed.request == CAMEL_NATIVE_REQUEST
    assert (parsed.key, parsed.model, parsed.image_size, parsed.aspect_ratio) == ("n", PRO, "2K", "16:9")
    assert parsed.image_refs == ()
    # "restyle" + "sys" = 10 chars -> 3 tokens; two image parts.
    assert parsed.estimated_input_tokens == 3 + 2 * 560


def test_native_model_in_line_or_request() -> None:
    """The line's model wins the default; a model inside the request moves up to the line."""
    request = {"contents": [{"parts": [{"text": "a"}]}]}
    assert valid({"request": request, "model": FLASH_25}).model == FLASH_25
    inner = valid({"request": {**request, "model": "models/" + FLASH_31}})
    assert inner.model == FLASH_31
    assert "model" not in inner.request


def test_native_request_is_passed_through_without_defaults() -> None:
    """With no defaults configured a native request is not given modalities or an image config."""
    request = {"contents": [{"parts": [{"text": "a"}]}]}
    assert valid({"request": request}).request == request


def test_defaults_fill_only_what_a_native_request_leaves_out() -> None:
    """File defaults add imageConfig fields, modalities and a system instruction only where absent."""
    defaults = {
        "defaults": {"image_size": "4K", "aspect_ratio": "1:1", "modalities": ["IMAGE"], "system": "s"}
    }
    own = {
        "contents": [{"parts": [{"text": "a"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "9:16"}},
        "systemInstruction": {"parts": [{"text": "mine"}]},
    }
    bare = {"contents": [{"parts": [{"text": "b"}]}]}
    first, second = parse(jsonl(defaults, {"request": own}, {"request": bare}))
    assert isinstance(first, PromptRequest)
    assert isinstance(second, PromptRequest)
    assert first.request["generationConfig"] == {
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "9:16", "imageSize": "4K"},
    }
    assert first.request["systemInstruction"] == {"parts": [{"text": "mine"}]}
    assert second.request == {
        "contents": [{"parts": [{"text": "b"}]}],
        "systemInstruction": {"parts": [{"text": "s"}]},
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "1:1", "imageSize": "4K"},
        },
    }
    assert (second.image_size, second.aspect_ratio) == ("4K", "1:1")


# --- invalid lines -------------------------------------------------------------------------------------

NATIVE_TEXT = {"contents": [{"parts": [{"text": "a"}]}]}
INVALID_CASES = [
    ("key-dotdot", {"prompt": "a", "key": "../x"}, "invalid_key", "segment"),
    ("key-dotdot-inside", {"prompt": "a", "key": "a/../../x"}, "invalid_key", "segment"),
    ("key-absolute", {"prompt": "a", "key": "/abs"}, "invalid_key", "starts with '/'"),
    ("key-backslash", {"prompt": "a", "key": "a\\b"}, "invalid_key", "backslash"),
    ("key-control-char", {"prompt": "a", "key": "a\x07b"}, "invalid_key", "control character"),
    ("key-newline", {"prompt": "a", "key": "a\nb"}, "invalid_key", "control character"),
    ("key-129-chars", {"prompt": "a", "key": "k" * 129}, "invalid_key", "128"),
    ("key-empty", {"prompt": "a", "key": ""}, "invalid_key", "empty"),
    ("key-number", {"prompt": "a", "key": 7}, "invalid_key", "string"),
    ("ratio-unknown", {"prompt": "a", "aspect_ratio": "16:10"}, "bad_aspect_ratio", "'16:10'"),
    ("ratio-extreme-on-pro", {"prompt": "a", "aspect_ratio": "1:8"}, "bad_aspect_ratio", PRO),
    (
        "ratio-extreme-on-25",
        {"prompt": "a", "model": FLASH_25, "aspect_ratio": "4:1"},
        "bad_aspect_ratio",
        FLASH_25,
    ),
    ("size-2k-lowercase", {"prompt": "a", "image_size": "2k"}, "bad_image_size", "'2K'"),
    ("size-2K-on-25-flash", {"prompt": "a", "model": FLASH_25, "image_size": "2K"}, "bad_image_size", "1K"),
    ("size-4K-on-25-flash", {"prompt": "a", "model": FLASH_25, "image_size": "4K"}, "bad_image_size", "1K"),
    ("size-512-on-pro", {"prompt": "a", "image_size": "512"}, "bad_image_size", PRO),
    ("size-8K", {"prompt": "a", "image_size": "8K"}, "bad_image_size", "not one of"),
    ("size-number", {"prompt": "a", "image_size": 1024}, "bad_image_size", "string"),
    ("empty-prompt", {"prompt": ""}, "empty_prompt", "empty"),
    ("blank-prompt", {"prompt": " \t\n "}, "empty_prompt", "empty"),
    ("missing-prompt", {"key": "k"}, "missing_prompt", "prompt"),
    ("prompt-not-string", {"prompt": ["a"]}, "bad_request", "string"),
    ("unknown-field", {"prompt": "a", "negative_prompt": "b"}, "unknown_field", "'negative_prompt'"),
    ("twice-spelled", {"prompt": "a", "aspect_ratio": "1:1", "aspectRatio": "1:1"}, "bad_request", "twice"),
    (
        "too-long-for-25-flash",
        {"prompt": "x" * (4 * 32_768 + 4), "model": FLASH_25},
        "prompt_too_long",
        "32768",
    ),
    ("image-other-bucket", {"prompt": "a", "images": ["gs://other/a.png"]}, "bad_image_ref", "bucket"),
    ("image-http", {"prompt": "a", "images": ["https://example.com/a.png"]}, "bad_image_ref", "path"),
    ("image-dotdot", {"prompt": "a", "images": ["refs/../../secret.png"]}, "bad_image_ref", "segment"),
    (
        "image-dotdot-in-gs",
        {"prompt": "a", "images": ["gs://own-bucket/../x.png"]},
        "bad_image_ref",
        "segment",
    ),
    (
        "image-absolute",
        {"prompt": "a", "images": ["/etc/passwd"]},
        "bad_image_ref",
        "in the cloud, name an object",
    ),
    ("images-not-list", {"prompt": "a", "images": "a.png"}, "bad_image_ref", "list"),
    ("modalities-text-only", {"prompt": "a", "modalities": ["TEXT"]}, "bad_modalities", "IMAGE"),
    ("modalities-lowercase", {"prompt": "a", "modalities": ["image"]}, "bad_modalities", "uppercase"),
    ("model-not-string", {"prompt": "a", "model": 3}, "bad_model_field", "string"),
    ("model-path", {"prompt": "a", "model": "../x"}, "bad_model_field", "model id"),
    ("native-with-prompt", {"prompt": "a", "request": NATIVE_TEXT}, "bad_request", "'prompt'"),
    ("native-unknown-field", {"request": NATIVE_TEXT, "extra": 1}, "unknown_field", "'extra'"),
    ("native-not-object", {"request": "a cat"}, "bad_request", "object"),
    ("native-sdk-config", {"request": {**NATIVE_TEXT, "config": {}}}, "bad_request", "generationConfig"),
    ("native-no-contents", {"request": {"generationConfig": {}}}, "bad_request", "contents"),
    ("native-no-parts", {"request": {"contents": [{"role": "user"}]}}, "bad_request", "parts"),
    (
        "native-empty-text",
        {"request": {"contents": [{"parts": [{"text": "  "}]}]}},
        "empty_prompt",
        "no text",
    ),
    (
        "native-inline-without-data",
        {"request": {"contents": [{"parts": [{"text": "a"}, {"inlineData": {"mimeType": "image/png"}}]}]}},
        "bad_request",
        "inlineData",
    ),
    (
        "native-bad-size",
        {"request": {**NATIVE_TEXT, "generationConfig": {"imageConfig": {"imageSize": "4k"}}}},
        "bad_image_size",
        "'4K'",
    ),
    (
        "native-bad-ratio-for-model",
        {
            "model": FLASH_25,
            "request": {**NATIVE_TEXT, "generation_config": {"image_config": {"aspect_ratio": "1:4"}}},
        },
        "bad_aspect_ratio",
        FLASH_25,
    ),
    (
        "native-text-only",
        {"request": {**NATIVE_TEXT, "generationConfig": {"responseModalities": ["TEXT"]}}},
        "bad_modalities",
        "IMAGE",
    ),
    (
        "native-models-differ",
        {"model": FLASH_25, "request": {**NATIVE_TEXT, "model": FLASH_31}},
        "bad_model_field",
        "differ",
    ),
    (
        "native-both-spellings",
        {"request": {**NATIVE_TEXT, "generationConfig": {}, "generation_config": {}}},
        "bad_request",
        "twice",
    ),
    # A field the API does not know fails the whole batch there (request_schema), so it fails this line here.
    (
        "native-unknown-request-field",
        {"request": {**NATIVE_TEXT, "temperature": 0.5}},
        "unknown_field",
        "request has a field the Gemini API does not know: 'temperature'",
    ),
    (
        "native-unknown-image-config-field",
        {"request": {**NATIVE_TEXT, "generationConfig": {"imageConfig": {"size": "2K"}}}},
        "unknown_field",
        "request.generation_config.image_config has a field the Gemini API does not know: 'size'",
    ),
    (
        "native-unknown-thinking-field",
        {"request": {**NATIVE_TEXT, "generation_config": {"thinking_config": {"budget": 0}}}},
        "unknown_field",
        "request.generation_config.thinking_config",
    ),
    (
        "native-unknown-part-field",
        {"request": {"contents": [{"parts": [{"text": "a"}, {"image": "x.png"}]}]}},
        "unknown_field",
        "request.contents[0].parts[1] has a field the Gemini API does not know: 'image'",
    ),
    # "Maximum images per prompt" per model (models.py): 3 for 2.5 Flash Image, 14 for the Gemini 3 ones.
    (
        "four-images-on-25-flash",
        {"prompt": "a", "model": FLASH_25, "images": ["a.png", "b.png", "c.png", "d.png"]},
        "too_many_images",
        f"{FLASH_25} takes at most 3",
    ),
    (
        "native-fifteen-images-on-pro",
        {"request": {"contents": [{"parts": [{"text": "a"}] + [{"fileData": {"fileUri": "files/f"}}] * 15}]}},
        "too_many_images",
        "15 reference images",
    ),
    (
        "native-vertex-only-image-field",
        {"request": {**NATIVE_TEXT, "generationConfig": {"imageConfig": {"outputMimeType": "image/png"}}}},
        "unknown_field",
        "'outputMimeType'",
    ),
]


@pytest.mark.parametrize(
    ("line", "code", "in_message"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
def test_invalid_lines_say_why(line: dict[str, Any], code: str, in_message: str) -> None:
    """Each broken rule gives an InvalidLine with our code, a message naming the problem, and the input form."""
    parsed = parse_one(line)
    assert isinstance(parsed, InvalidLine), parsed
    assert parsed.error.code == code
    assert in_message in parsed.error.message
    assert parsed.error.retryable is False
    assert parsed.input_form is not None


def test_unsafe_key_is_not_reported_as_a_key() -> None:
    """An unsafe key is kept in the input form (to fix it) but never handed on as the line's key."""
    parsed = parse_one({"prompt": "a", "key": "../x"})
    assert isinstance(parsed, InvalidLine)
    assert parsed.key is None
    assert parsed.input_form is not None
    assert parsed.input_form["key"] == "../x"


def test_long_values_are_not_echoed_in_messages() -> None:
    """A long offending value is described by its type, not copied into the message."""
    parsed = parse_one({"prompt": "a", "key": "k" * 500})
    assert isinstance(parsed, InvalidLine)
    assert "kkkk" not in parsed.error.message


def test_duplicate_keys_keep_the_first() -> None:
    """A key used twice leaves the first line valid and refuses the later ones, also against line-<n>."""
    parsed = parse(
        jsonl(
            {"prompt": "a", "key": "k"},
            {"prompt": "b", "key": "k"},
            {"prompt": "c", "key": "line-4"},
            {"prompt": "d"},
        )
    )
    assert isinstance(parsed[0], PromptRequest)
    assert [(type(p).__name__, p.line) for p in parsed[1:]] == [
        ("InvalidLine", 2),
        ("PromptRequest", 3),
        ("InvalidLine", 4),
    ]
    assert isinstance(parsed[1], InvalidLine)
    assert (parsed[1].key, parsed[1].error.code) == ("k", "duplicate_key")
    assert isinstance(parsed[3], InvalidLine)
    assert (parsed[3].key, parsed[3].error.code) == ("line-4", "duplicate_key")


# --- defaults ------------------------------------------------------------------------------------------


def test_defaults_line_sets_the_files_defaults() -> None:
    """A first line {"defaults": ...} gives no entry and fills what later lines leave out."""
    defaults = {
        "defaults": {
            "model": FLASH_31,
            "imageSize": "512",
            "aspectRatio": "4:1",
            "response_modalities": ["TEXT", "IMAGE"],
            "system": "house style",
        }
    }
    parsed = parse(
        b"\n" + jsonl(defaults, {"prompt": "a"}, {"prompt": "b", "image_size": "2K", "model": FLASH_31})
    )
    assert [p.line for p in parsed] == [3, 4]
    first, second = parsed
    assert isinstance(first, PromptRequest)
    assert isinstance(second, PromptRequest)
    assert first.model == FLASH_31
    assert first.request == simple_request(
        "a",
        {"aspectRatio": "4:1", "imageSize": "512"},
        modalities=["TEXT", "IMAGE"],
        systemInstruction={"parts": [{"text": "house style"}]},
    )
    assert (second.image_size, second.aspect_ratio) == ("2K", "4:1")


def test_file_defaults_override_deployment_defaults_field_by_field() -> None:
    """Deployment defaults fill what the file's defaults leave unset; the file's win where both are set."""
    options = ParseOptions(PRO, defaults=FileDefaults(image_size="4K", aspect_ratio="3:2", system="deploy"))
    parsed = parse(jsonl({"defaults": {"aspect_ratio": "2:3"}}, {"prompt": "a"}), options)
    (line,) = parsed
    assert isinstance(line, PromptRequest)
    assert line.request == simple_request(
        "a", {"aspectRatio": "2:3", "imageSize": "4K"}, systemInstruction={"parts": [{"text": "deploy"}]}
    )


def test_deployment_default_model_applies_when_nothing_names_one() -> None:
    """ParseOptions.default_model is used by lines and defaults that name no model."""
    assert valid({"prompt": "a"}, ParseOptions(FLASH_25)).model == FLASH_25
    options = ParseOptions(PRO, defaults=FileDefaults(model=FLASH_31))
    assert valid({"prompt": "a"}, options).model == FLASH_31


def test_defaults_line_later_in_the_file_is_an_unknown_field() -> None:
    """Only the first non-blank line may carry defaults."""
    parsed = parse(jsonl({"prompt": "a"}, {"defaults": {"image_size": "2K"}}))
    assert isinstance(parsed[1], InvalidLine)
    assert parsed[1].error.code == "unknown_field"


@pytest.mark.parametrize(
    "defaults_line",
    [
        {"defaults": {"image_size": "2k"}},
        {"defaults": {"aspect_ratio": "7:5"}},
        {"defaults": {"size": "2K"}},
        {"defaults": {"modalities": ["TEXT"]}},
        {"defaults": "2K"},
        {"defaults": {"image_size": "2K"}, "prompt": "a"},
    ],
    ids=["lowercase-size", "bad-ratio", "unknown-field", "text-only", "not-object", "with-prompt"],
)
def test_bad_defaults_line_refuses_the_file(defaults_line: dict[str, Any]) -> None:
    """A bad defaults line is an InvalidLine, and every later line is refused rather than run differently."""
    parsed = parse(jsonl(defaults_line, {"prompt": "a", "key": "a"}, {"prompt": "b"}))
    assert [(type(p).__name__, p.line) for p in parsed] == [
        ("InvalidLine", 1),
        ("InvalidLine", 2),
        ("InvalidLine", 3),
    ]
    head, second, third = parsed
    assert isinstance(head, InvalidLine)
    assert isinstance(second, InvalidLine)
    assert isinstance(third, InvalidLine)
    assert (head.key, head.error.code) == (None, "bad_defaults")
    assert head.input_form == {"defaults": defaults_line["defaults"]}
    assert (second.key, second.error.code) == ("a", "bad_defaults")
    assert "line 1" in second.error.message
    assert third.key == "line-3"


def test_defaults_ignore_an_error_field() -> None:
    """A defaults line copied back from errors.jsonl (with its error) is still a defaults line."""
    parsed = parse(jsonl({"defaults": {"image_size": "2K"}, "error": {"code": "x"}}, {"prompt": "a"}))
    assert len(parsed) == 1
    assert isinstance(parsed[0], PromptRequest)
    assert parsed[0].image_size == "2K"


def test_parse_defaults_for_configuration() -> None:
    """parse_defaults turns a JSON object into FileDefaults and refuses bad ones with InputError."""
    assert parse_defaults({"imageSize": "2K", "modalities": ["IMAGE"]}) == FileDefaults(
        image_size="2K", modalities=("IMAGE",)
    )
    with pytest.raises(InputError, match="2K"):
        parse_defaults({"image_size": "2k"})


# --- txt files -----------------------------------------------------------------------------------------


def test_txt_lines_are_prompts() -> None:
    """Each non-blank txt line is a stripped prompt keyed line-<n>; JSON-looking text stays text."""
    data = '  a red fox  \n\n{"prompt": "x"}\r\nthé\n'.encode()
    parsed = parse(data, fmt="txt")
    assert [
        (p.line, p.key, p.request["contents"][0]["parts"][0]["text"])
        for p in parsed
        if isinstance(p, PromptRequest)
    ] == [
        (1, "line-1", "a red fox"),
        (3, "line-3", '{"prompt": "x"}'),
        (4, "line-4", "thé"),
    ]


def test_txt_uses_defaults_and_rejects_bad_utf8() -> None:
    """txt prompts take the deployment defaults; a non-UTF-8 line is rejected and the rest run."""
    options = ParseOptions(PRO, defaults=FileDefaults(image_size="2K"))
    parsed = parse(b"caf\xe9\nok\n", options, fmt="txt")
    assert isinstance(parsed[0], RejectedLine)
    assert parsed[0].error.code == "bad_utf8"
    assert isinstance(parsed[1], PromptRequest)
    assert parsed[1].image_size == "2K"


# --- errors.jsonl round trip ---------------------------------------------------------------------------

ROUND_TRIP_LINES = [
    {"prompt": "plain"},
    {"prompt": "keyed", "key": "k1", "aspectRatio": "9:16"},
    {"prompt": "refs", "images": ["a.png", "gs://own-bucket/b.png"], "modalities": ["TEXT", "IMAGE"]},
    {"prompt": "own model", "model": FLASH_25, "image_size": "1K", "system": "own system"},
    SNAKE_NATIVE,
    {"key": "native-bare", "request": {"contents": [{"parts": [{"text": "x"}]}]}},
]


def test_input_form_parses_back_to_the_same_request() -> None:
    """The input form (defaults resolved, error attached) dropped into another deployment gives the same request."""
    options = ParseOptions(PRO, bucket_name="own-bucket", defaults=FileDefaults(system="deploy"))
    data = jsonl({"defaults": {"image_size": "2K", "aspect_ratio": "1:1"}}, *ROUND_TRIP_LINES)
    first = parse(data, options)
    assert all(isinstance(p, PromptRequest) for p in first)
    errors_jsonl = jsonl(
        *(
            {**p.input_form, "error": {"code": "safety", "message": "m", "retryable": False}}
            for p in first
            if isinstance(p, PromptRequest)
        )
    )
    elsewhere = ParseOptions(FLASH_31, bucket_name="own-bucket")
    again = parse(errors_jsonl, elsewhere)
    assert [
        (p.key, p.model, p.request, p.image_refs, p.image_size) for p in again if isinstance(p, PromptRequest)
    ] == [
        (p.key, p.model, p.request, p.image_refs, p.image_size) for p in first if isinstance(p, PromptRequest)
    ]


def test_invalid_line_input_form_keeps_the_line_and_resolved_defaults() -> None:
    """An invalid line's input form is what the user wrote plus its key and the defaults, ready to fix."""
    options = ParseOptions(PRO, defaults=FileDefaults(aspect_ratio="16:9"))
    parsed = parse(b"\n" + jsonl({"prompt": "a", "image_size": "2k", "error": {"code": "old"}}), options)
    (line,) = parsed
    assert isinstance(line, InvalidLine)
    assert line.key == "line-2"
    assert line.input_form == {
        "key": "line-2",
        "prompt": "a",
        "image_size": "2k",
        "model": PRO,
        "aspect_ratio": "16:9",
    }


# --- Pub/Sub items -------------------------------------------------------------------------------------


def test_parse_prompt_items_objects_and_strings() -> None:
    """Message prompts: objects as JSONL lines, strings as txt prompts, numbered by index, defaults applied."""
    items: list[object] = [{"prompt": "a", "key": "x"}, "  b  ", 5, "", {"request": NATIVE_TEXT}]
    parsed = list(parse_prompt_items(items, OPTIONS, {"image_size": "4K"}))
    assert [(type(p).__name__, p.line) for p in parsed] == [
        ("PromptRequest", 1),
        ("PromptRequest", 2),
        ("RejectedLine", 3),
        ("InvalidLine", 4),
        ("PromptRequest", 5),
    ]
    first, second, third, fourth, fifth = parsed
    assert isinstance(first, PromptRequest)
    assert isinstance(second, PromptRequest)
    assert isinstance(third, RejectedLine)
    assert isinstance(fourth, InvalidLine)
    assert isinstance(fifth, PromptRequest)
    assert first.image_size == "4K"
    assert (second.key, second.request["contents"][0]["parts"][0]["text"]) == ("line-2", "b")
    assert (third.error.code, third.raw) == ("not_an_object", b"5")
    assert fourth.error.code == "empty_prompt"
    assert fifth.request["generationConfig"] == {"imageConfig": {"imageSize": "4K"}}


def test_parse_prompt_items_bad_defaults_refuse_every_item() -> None:
    """Unusable message defaults refuse each prompt with bad_defaults."""
    parsed = list(parse_prompt_items(["a", {"prompt": "b"}], OPTIONS, {"image_size": "huge"}))
    assert [(type(p).__name__, p.error.code) for p in parsed if isinstance(p, InvalidLine)] == [
        ("InvalidLine", "bad_defaults"),
        ("InvalidLine", "bad_defaults"),
    ]
    assert "message's defaults" in parsed[0].error.message  # type: ignore[union-attr]


# --- request lines -------------------------------------------------------------------------------------


def test_request_line_appends_reference_images_to_the_first_content() -> None:
    """Extra parts go after the text of the first content; the parsed request is left unchanged."""
    req = valid({"prompt": "a", "key": "k", "images": ["a.png"]})
    before = orjson.dumps(req.request)
    image = {"fileData": {"fileUri": "https://example.invalid/files/a", "mimeType": "image/png"}}
    line = orjson.loads(request_line(req, [image]))
    assert line == {
        "key": "k",
        "request": {**req.request, "contents": [{"role": "user", "parts": [{"text": "a"}, image]}]},
    }
    assert orjson.dumps(req.request) == before
    assert orjson.loads(request_line(req)) == {"key": "k", "request": req.request}
    assert not request_line(req).endswith(b"\n")


def test_line_error_to_json() -> None:
    """LineError serialises to the manifest's error object."""
    assert LineError("bad_json", "m").to_json() == {"code": "bad_json", "message": "m", "retryable": False}


@pytest.mark.parametrize(
    ("lines", "options", "expected"),
    [
        ([{"prompt": "a"}], OPTIONS, 0),
        ([{"prompt": "a"}], ParseOptions(default_model=PRO, default_priority=3), 3),
        (
            [{"defaults": {"priority": 5}}, {"prompt": "a"}],
            ParseOptions(default_model=PRO, default_priority=3),
            5,
        ),
        ([{"defaults": {"priority": 5}}, {"prompt": "a", "priority": -2}], OPTIONS, -2),
        ([{"key": "n", "request": {"contents": [{"parts": [{"text": "x"}]}]}, "priority": 7}], OPTIONS, 7),
    ],
)
def test_priority_from_line_then_file_defaults_then_setting(
    lines: list[dict[str, Any]], options: ParseOptions, expected: int
) -> None:
    *_, last = parse(jsonl(*lines), options)
    assert isinstance(last, PromptRequest), last
    assert last.priority == expected


@pytest.mark.parametrize("value", ["5", 1.5, True, 2**63, None])
def test_priority_must_be_an_int64(value: object) -> None:
    line: dict[str, Any] = {"prompt": "a", "priority": value}
    parsed = parse_one(line)
    if value is None:
        assert isinstance(parsed, PromptRequest)
        return
    assert isinstance(parsed, InvalidLine) and parsed.error.code == "bad_priority"


def test_file_default_priority_is_written_into_the_input_form() -> None:
    """errors.jsonl dropped back in keeps the priority the file's defaults gave the line."""
    *_, line = parse(jsonl({"defaults": {"priority": 4}}, {"key": "k", "prompt": "a"}))
    assert isinstance(line, PromptRequest) and line.input_form["priority"] == 4


def test_fresh_and_seed_fields_on_lines_and_defaults() -> None:
    """``fresh`` comes from the line or the file's defaults; ``seed`` lands in generationConfig; both checked."""
    data = (
        b'{"defaults": {"fresh": true}}\n'
        b'{"key": "a", "prompt": "cat"}\n'
        b'{"key": "b", "prompt": "cat", "fresh": false, "seed": 42}\n'
        b'{"key": "c", "request": {"contents": [{"parts": [{"text": "cat"}]}]}, "fresh": false}\n'
        b'{"key": "d", "prompt": "cat", "fresh": "yes"}\n'
        b'{"key": "e", "prompt": "cat", "seed": 1.5}\n'
    )
    a, b, c, d, e = parse(data)
    assert isinstance(a, PromptRequest) and a.fresh and a.input_form["fresh"] is True
    assert isinstance(b, PromptRequest) and not b.fresh
    assert b.request["generationConfig"]["seed"] == 42
    assert isinstance(c, PromptRequest) and not c.fresh
    assert isinstance(d, InvalidLine) and d.error.code == "bad_fresh"
    assert isinstance(e, InvalidLine) and e.error.code == "bad_seed"


# Lanes


def _lanes(data: bytes) -> list[object]:
    options = ParseOptions(default_model="gemini-3-pro-image")
    return [
        line.lane if isinstance(line, PromptRequest) else line.error.code
        for line in parse_prompt_file(io.BytesIO(data), "jsonl", options)
    ]


def test_a_line_runs_in_the_batch_lane_unless_it_or_the_defaults_say_now() -> None:
    lines = [
        {"prompt": "a"},
        {"prompt": "b", "lane": "now"},
        {"request": {"contents": [{"parts": [{"text": "c"}]}]}, "lane": "now"},
        {"prompt": "d", "lane": "urgent"},
    ]
    assert _lanes(b"".join(orjson.dumps(line) + b"\n" for line in lines)) == [
        "batch",
        "now",
        "now",
        "bad_lane",
    ]
    with_defaults = [{"defaults": {"lane": "now"}}, {"prompt": "a"}, {"prompt": "b", "lane": "batch"}]
    assert _lanes(b"".join(orjson.dumps(line) + b"\n" for line in with_defaults)) == ["now", "batch"]


def test_the_documented_maximum_of_reference_images_is_allowed() -> None:
    """Exactly the maximum passes (the line fails only beyond it)."""
    assert valid({"prompt": "a", "model": FLASH_25, "images": ["a.png", "b.png", "c.png"]}).image_refs
    parts = [{"text": "a"}] + [{"fileData": {"fileUri": "files/f"}}] * 14
    assert valid({"request": {"contents": [{"parts": parts}]}}).model == PRO


# --- native file references ------------------------------------------------------------------------------


def native_with_file(uri: str, *, snake: bool = False) -> dict[str, Any]:
    part = (
        {"file_data": {"file_uri": uri}} if snake else {"fileData": {"fileUri": uri, "mimeType": "image/png"}}
    )
    return {
        "key": "n",
        "request": {"contents": [{"parts": [{"text": "restyle"}, part, {"text": "in blue"}]}]},
    }


@pytest.mark.parametrize("snake", [False, True], ids=["camelCase", "snake_case"])
def test_a_native_file_in_this_bucket_becomes_a_reference_image_in_its_place(snake: bool) -> None:
    """``gs://<this bucket>/path`` is an object of the bucket, sent like ``images`` (inlined or uploaded)
    where the fileData part stood; the cache hashes its content in that place, not the URI."""
    req = valid(native_with_file("gs://own-bucket/refs/style.png", snake=snake))
    assert (req.image_refs, req.image_slots, req.api_files) == (("refs/style.png",), ((0, 1),), ())
    inline = {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}
    sent = orjson.loads(request_line(req, [inline]))["request"]["contents"][0]["parts"]
    assert sent == [{"text": "restyle"}, inline, {"text": "in blue"}]
    hashed = fingerprint_form(req)["contents"][0]["parts"]
    assert hashed == [{"text": "restyle"}, {"referenceImage": 0}, {"text": "in blue"}]
    assert b"gs://" not in orjson.dumps(fingerprint_form(req))


@pytest.mark.parametrize(
    "uri",
    ["files/abc-123", "https://generativelanguage.googleapis.com/v1beta/files/abc-123"],
)
def test_a_native_files_api_file_is_passed_on(uri: str) -> None:
    """A Files API file (name or URI) is the API's to resolve: sent as written, listed in ``api_files``."""
    req = valid(native_with_file(uri))
    assert (req.image_refs, req.api_files) == ((), ("files/abc-123",))
    assert orjson.loads(request_line(req))["request"] == req.request


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("gs://other-bucket/refs/style.png", "is not in gs://own-bucket/..."),
        ("gs://own-bucket/../secrets.png", "gs://own-bucket/../secrets.png"),
        ("https://example.com/cat.png", "must name an object of this deployment's bucket"),
        ("https://generativelanguage.googleapis.com.evil.example/v1beta/files/abc", "Files API file"),
        ("http://generativelanguage.googleapis.com/v1beta/files/abc", "Files API file"),
        ("refs/style.png", "gs://BUCKET/path"),
        ("https://www.youtube.com/watch?v=x", "must name"),
    ],
)
def test_any_other_native_file_uri_is_a_bad_image_ref(uri: str, said: str) -> None:
    """Another bucket, any other URL, a bare path: invalid, ``bad_image_ref``, with what is accepted."""
    parsed = parse_one(native_with_file(uri))
    assert isinstance(parsed, InvalidLine)
    assert parsed.error.code == "bad_image_ref"
    assert said in parsed.error.message


def test_a_native_gs_uri_is_refused_where_the_bucket_is_a_folder() -> None:
    """The local path has no Cloud Storage bucket: no gs:// URI is this bucket's."""
    parsed = parse_one(native_with_file("gs://own-bucket/refs/style.png"), ParseOptions(default_model=PRO))
    assert isinstance(parsed, InvalidLine) and parsed.error.code == "bad_image_ref"


def test_a_file_data_part_that_is_not_an_object_is_a_bad_image_ref() -> None:
    line = {"request": {"contents": [{"parts": [{"text": "a"}, {"fileData": "gs://own-bucket/a.png"}]}]}}
    parsed = parse_one(line)
    assert isinstance(parsed, InvalidLine) and parsed.error.code == "bad_image_ref"


def test_a_file_in_the_system_instruction_is_a_bad_image_ref() -> None:
    """Files go in contents, where they are checked; one in the system instruction is refused."""
    system = {"parts": [{"file_data": {"file_uri": "gs://own-bucket/a.png"}}]}
    line = {"request": {"contents": [{"parts": [{"text": "a"}]}], "system_instruction": system}}
    parsed = parse_one(line)
    assert isinstance(parsed, InvalidLine) and parsed.error.code == "bad_image_ref"


def test_a_json_line_that_is_not_an_object_says_that_jsonl_is_expected() -> None:
    (line,) = parse(b'["a cat", "a dog"]\n')
    assert isinstance(line, RejectedLine) and line.error.code == "not_an_object"
    assert "one JSON object per line" in line.error.message
