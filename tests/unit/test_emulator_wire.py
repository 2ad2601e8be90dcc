"""Pure wire rules of the emulator: key spelling, base64, paging, timestamps, routes and options."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from promptdrop.emulator.options import EmulatorOptions, argument_parser, options_from_args
from promptdrop.emulator.server import match_route
from promptdrop.emulator.wire import (
    ApiError,
    camel_case,
    camel_keys,
    decode_base64,
    encode_base64,
    page_size,
    paginate,
    rfc3339,
)
from promptdrop.rpc import rpc_status


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("display_name", "displayName"),
        ("displayName", "displayName"),
        ("response_modalities", "responseModalities"),
        ("image_config", "imageConfig"),
        ("file_uri", "fileUri"),
        ("@type", "@type"),
        ("key", "key"),
        ("a_1_b", "a1B"),
    ],
)
def test_camel_case(name: str, expected: str) -> None:
    """snake_case names become camelCase; camelCase and special names stay as they are."""
    assert camel_case(name) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"generation_config": {"image_config": {"aspect_ratio": "1:1"}}},
         {"generationConfig": {"imageConfig": {"aspectRatio": "1:1"}}}),
        ({"contents": [{"parts": [{"inline_data": {"mime_type": "x"}}]}]},
         {"contents": [{"parts": [{"inlineData": {"mimeType": "x"}}]}]}),
        ({"metadata": {"my_key": 1}, "request": {}}, {"metadata": {"my_key": 1}, "request": {}}),
        ({"displayName": "camel", "display_name": "snake"}, {"displayName": "camel"}),
        ({"display_name": "snake", "displayName": "camel"}, {"displayName": "camel"}),
        ([{"file_name": "f"}, 3, "s"], [{"fileName": "f"}, 3, "s"]),
    ],
)  # fmt: skip
def test_camel_keys(given: object, expected: object) -> None:
    """Keys are respelled recursively, caller-owned metadata is left alone, camelCase wins a clash."""
    assert camel_keys(given) == expected


RAW = b"\xfb\xff\xfe\x00\x01binary"


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode(),
        base64.urlsafe_b64encode(RAW).decode().rstrip("="),
        base64.b64encode(RAW).decode().rstrip("="),
        " " + base64.b64encode(RAW).decode()[:8] + "\n" + base64.b64encode(RAW).decode()[8:],
    ],
)
def test_decode_base64_accepts_both_alphabets(text: str) -> None:
    """Standard and URL-safe base64, padded or not, with whitespace, all decode to the same bytes."""
    assert decode_base64(text) == RAW


@pytest.mark.parametrize("text", ["%%%", "abc!", "a"])
def test_decode_base64_refuses_garbage(text: str) -> None:
    """Text outside both alphabets, or of impossible length, is a ValueError."""
    with pytest.raises(ValueError):
        decode_base64(text)


def test_encode_base64_is_standard() -> None:
    """Responses carry standard base64 ('+' and '/', padded)."""
    assert encode_base64(b"\xfb\xff\xfe") == "+//+"
    assert encode_base64(b"\xfb") == "+w=="


def test_rfc3339_is_utc_with_microseconds() -> None:
    """Timestamps read like the API's, in UTC with a Z."""
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250000Z"


@pytest.mark.parametrize(
    ("code", "expected"),
    [(3, ("INVALID_ARGUMENT", 400)), (8, ("RESOURCE_EXHAUSTED", 429)), (13, ("INTERNAL", 500)),
     (14, ("UNAVAILABLE", 503)), (99, ("UNKNOWN", 500))],
)  # fmt: skip
def test_rpc_status(code: int, expected: tuple[str, int]) -> None:
    """google.rpc codes map to their status names and HTTP statuses."""
    assert rpc_status(code) == expected


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 10), ("", 10), ("0", 10), ("3", 3), ("100", 100), ("5000", 100)]
)
def test_page_size(raw: str | None, expected: int) -> None:
    """pageSize defaults when absent or 0 and is capped at the maximum."""
    assert page_size(raw, default=10, maximum=100) == expected


@pytest.mark.parametrize("raw", ["ten", "-1"])
def test_page_size_refuses_nonsense(raw: str) -> None:
    """A non-numeric or negative pageSize is a 400."""
    with pytest.raises(ApiError) as caught:
        page_size(raw, default=10, maximum=100)
    assert caught.value.http_status == 400


def test_paginate_walks_every_item_once_even_when_items_arrive_meanwhile() -> None:
    """Keyset tokens: pages cover all items once, and an item added between calls does not shift them."""
    items = [f"{n:03d}" for n in range(7, 0, -1)]
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = paginate(items, lambda item: item, 3, token)
        seen += page
        pages += 1
        if pages == 1:
            items = ["999", *items]  # a newer item lands on the first page, not between pages
        if token is None:
            break
    assert seen == [f"{n:03d}" for n in range(7, 0, -1)]
    assert pages == 3


def test_paginate_refuses_a_bad_token() -> None:
    """A token that is not ours is a 400."""
    with pytest.raises(ApiError):
        paginate(["a"], lambda item: item, 1, "%%%")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/upload/v1beta/files", ("upload", {"ver": "v1beta", "prefix": ""})),
        ("GET", "/v1/files", ("file_list", {"ver": "v1", "prefix": ""})),
        ("GET", "/v1beta/files/abc", ("file_get", {"ver": "v1beta", "id": "abc", "prefix": ""})),
        ("DELETE", "/v1beta/files/abc", ("file_delete", {"ver": "v1beta", "id": "abc", "prefix": ""})),
        ("GET", "/v1beta/files/batch-x:download", ("download", {"ver": "v1beta", "id": "batch-x", "prefix": ""})),
        ("GET", "/download/v1beta/files/ab:download", ("download", {"ver": "v1beta", "id": "ab", "prefix": ""})),
        ("POST", "/v1beta/models/gemini-3-pro-image:batchGenerateContent",
         ("create", {"ver": "v1beta", "model": "gemini-3-pro-image", "prefix": ""})),
        ("GET", "/v1beta/batches", ("list", {"ver": "v1beta", "prefix": ""})),
        ("GET", "/v1/batches/b1", ("get", {"ver": "v1", "id": "b1", "prefix": ""})),
        ("POST", "/v1beta/batches/b1:cancel", ("cancel", {"ver": "v1beta", "id": "b1", "prefix": ""})),
        ("DELETE", "/v1beta/batches/b1", ("delete", {"ver": "v1beta", "id": "b1", "prefix": ""})),
        ("POST", "/v1beta/batches/b1:delete", ("delete", {"ver": "v1beta", "id": "b1", "prefix": ""})),
        ("GET", "/proxy/x/v1beta/batches/b1", ("get", {"ver": "v1beta", "id": "b1", "prefix": "/proxy/x"})),
        ("GET", "/v2/batches/b1", None),
        ("PUT", "/v1beta/batches/b1", None),
    ],
)  # fmt: skip
def test_match_route(method: str, path: str, expected: tuple[str, dict[str, str]] | None) -> None:
    """Every route of the checklist is recognised, under a base path too; others are not."""
    assert match_route(method, path) == expected


def test_options_round_trip_through_flags_without_the_key() -> None:
    """to_argv renders every non-default control, the parser reads them back, and the key never appears."""
    options = EmulatorOptions(
        api_key="secret",
        pending_seconds=0.0,
        running_seconds=5.0,
        image_scale=0.0625,
        inline_responses_max=3,
        fault_rate=0.2,
        fault_codes=(429, 503),
        fault_routes=("create", "get"),
        stall_rate=0.1,
        stall_seconds=2.0,
        fault_seed=7,
        generate_refusals=2,
        generate_retry_seconds=3.5,
    )
    argv = options.to_argv()
    assert "secret" not in argv
    parsed = options_from_args(argument_parser().parse_args(argv))
    assert parsed == dataclasses.replace(options, api_key=None)


@pytest.mark.parametrize(
    "bad",
    [
        {"fault_rate": 1.5},
        {"fault_rate": 0.6, "stall_rate": 0.6},
        {"pending_seconds": -1},
        {"workers": 0},
        {"image_scale": 0},
        {"fault_codes": (200,)},
        {"fault_routes": ("upload_chunk",)},
    ],
)
def test_options_refuse_impossible_controls(bad: dict[str, Any]) -> None:
    """Controls out of range are refused when the options are built."""
    with pytest.raises(ValueError):
        EmulatorOptions(**bad)
