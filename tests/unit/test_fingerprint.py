"""Request fingerprints: equal for requests the API would see as equal, different otherwise (pure)."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest

from promptdrop import prompts
from promptdrop.fingerprint import ImageDigest, maker_identity, request_fingerprint

OPTIONS = prompts.ParseOptions(default_model="gemini-3-pro-image")
CAT = ImageDigest("a" * 64, "image/png")
DOG = ImageDigest("b" * 64, "image/png")


def parsed(*lines: dict[str, Any]) -> list[prompts.PromptRequest]:
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    out = list(prompts.parse_prompt_file(io.BytesIO(data), "jsonl", OPTIONS))
    assert all(isinstance(line, prompts.PromptRequest) for line in out), out
    return out  # type: ignore[return-value]


def fp(line: prompts.PromptRequest, images: tuple[ImageDigest, ...] = ()) -> str:
    return request_fingerprint(line.model, line.request, images, maker="emulator")


def test_the_key_priority_and_fresh_do_not_change_the_fingerprint() -> None:
    """What does not reach the model (key, batch priority, fresh) is not part of the request."""
    a, b = parsed(
        {"key": "a", "prompt": "a cat"}, {"key": "b", "prompt": "a cat", "priority": 5, "fresh": True}
    )
    assert fp(a) == fp(b)
    assert len(fp(a)) == 64


def test_defaults_resolve_before_the_fingerprint() -> None:
    """A size from the file's defaults and the same size on the line are one request."""
    (by_default,) = parsed({"defaults": {"image_size": "2K"}}, {"prompt": "a cat"})
    (by_line,) = parsed({"prompt": "a cat", "image_size": "2K"})
    (other,) = parsed({"prompt": "a cat", "image_size": "4K"})
    assert fp(by_default) == fp(by_line) != fp(other)


def test_a_native_line_in_snake_case_matches_the_simple_line_it_equals() -> None:
    """Spellings and field order are canonicalised: the native request in snake_case is the same request."""
    (simple,) = parsed({"prompt": "a cat", "aspect_ratio": "16:9"})
    native_request = {
        "generation_config": {"image_config": {"aspect_ratio": "16:9"}, "response_modalities": ["IMAGE"]},
        "contents": [{"parts": [{"text": "a cat"}], "role": "user"}],
    }
    (native,) = parsed({"request": native_request})
    assert fp(simple) == fp(native)


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "a cat!"},
        {"prompt": "a cat", "seed": 7},
        {"prompt": "a cat", "system": "be brief"},
        {"prompt": "a cat", "aspect_ratio": "1:1"},
        {"prompt": "a cat", "modalities": ["TEXT", "IMAGE"]},
    ],
)
def test_anything_the_model_sees_changes_the_fingerprint(changed: dict[str, Any]) -> None:
    """Prompt, seed, system text, ratio, modalities: each makes another request."""
    base, other = parsed({"key": "a", "prompt": "a cat"}, {"key": "b", **changed})
    assert fp(base) != fp(other)


def test_the_model_actually_used_is_part_of_it() -> None:
    """The same request on another model (e.g. a replacement) is another image."""
    (line,) = parsed({"prompt": "a cat"})
    assert request_fingerprint("gemini-3-pro-image", line.request, maker="emulator") != request_fingerprint(
        "gemini-2.5-flash-image", line.request, maker="emulator"
    )
    assert request_fingerprint("models/gemini-3-pro-image", line.request, maker="emulator") == fp(line)


def test_reference_images_count_by_content_and_order_not_path() -> None:
    """Two paths to the same bytes are one request; other bytes or another order are not."""
    a, b = parsed(
        {"key": "a", "prompt": "in this style", "images": ["refs/one.png"]},
        {"key": "b", "prompt": "in this style", "images": ["elsewhere/copy.png"]},
    )
    assert fp(a, (CAT,)) == fp(b, (CAT,))
    assert fp(a, (CAT,)) != fp(a, (DOG,))
    assert fp(a, (CAT, DOG)) != fp(a, (DOG, CAT))


@pytest.mark.parametrize(
    ("backend", "base_url", "identity"),
    [
        ("emulator", None, "emulator"),
        ("emulator", "http://127.0.0.1:41234", "emulator"),  # any port the bundled emulator gets
        ("gemini", None, "gemini-api"),
        ("gemini", "https://generativelanguage.googleapis.com", "gemini-api"),
        ("gemini", "HTTPS://GenerativeLanguage.googleapis.com:443/", "gemini-api"),
        ("gemini", "http://127.0.0.1:8080", "gemini@http://127.0.0.1:8080"),
        ("gemini", "https://gw.example.com:443/gemini/", "gemini@https://gw.example.com/gemini"),
        ("gemini", "https://user:s3cret@gw.example.com/g?key=s3cret#x", "gemini@https://gw.example.com/g"),
        # Vertex AI: its own maker, and an emulator serving its routes is never Google's Vertex AI.
        ("vertex", None, "vertex"),
        ("vertex", "http://127.0.0.1:41234/", "vertex@http://127.0.0.1:41234"),
    ],
)
def test_the_maker_names_backend_and_endpoint_never_a_secret(
    backend: str, base_url: str | None, identity: str
) -> None:
    """Emulators are one maker; the real API is one maker whatever the key; a gateway is its own endpoint,
    written without credentials, query or fragment."""
    assert maker_identity(backend, base_url) == identity


def test_the_same_request_from_another_maker_is_another_image() -> None:
    """An emulator's placeholder never stands for an image of the real API or of a gateway, nor the reverse."""
    (line,) = parsed({"prompt": "a cat"})
    prints = {
        request_fingerprint(line.model, line.request, maker=maker)
        for maker in (
            "emulator",
            "gemini-api",
            "gemini@http://127.0.0.1:8080",
            "gemini@http://127.0.0.1:8081",
        )
    }
    assert len(prints) == 4


def test_a_native_file_in_the_bucket_counts_by_content_not_by_its_uri() -> None:
    """Two URIs to objects with the same bytes are one request; the same URI to new bytes is another. A
    native line naming its bucket image at the end of the first content is the simple line with ``images``."""
    options = prompts.ParseOptions(default_model="gemini-3-pro-image", bucket_name="own")

    def native(uri: str) -> prompts.PromptRequest:
        part = {"fileData": {"fileUri": uri, "mimeType": "image/png"}}
        request = {"contents": [{"role": "user", "parts": [{"text": "a cat"}, part]}]}
        line = orjson.dumps({"request": {**request, "generationConfig": {"responseModalities": ["IMAGE"]}}})
        (parsed,) = prompts.parse_prompt_file(io.BytesIO(line), "jsonl", options)
        assert isinstance(parsed, prompts.PromptRequest), parsed
        return parsed

    def fingerprint(line: prompts.PromptRequest, images: tuple[ImageDigest, ...]) -> str:
        return request_fingerprint(line.model, prompts.fingerprint_form(line), images, maker="emulator")

    one, renamed = native("gs://own/refs/cat.png"), native("gs://own/elsewhere/cat-copy.png")
    assert fingerprint(one, (CAT,)) == fingerprint(renamed, (CAT,))
    assert fingerprint(one, (CAT,)) != fingerprint(one, (DOG,))
    (simple,) = parsed({"prompt": "a cat", "images": ["refs/cat.png"]})
    assert fingerprint(simple, (CAT,)) == fingerprint(one, (CAT,))
