"""What became of one line: the value types every stage shares (pure).

``LineError`` says why a line failed; ``ImageOutcome`` is one parsed result (with the image bytes);
``Outcome`` is the final word on one key as the harvest checkpoints it and settle writes it down.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

Status = Literal["succeeded", "failed", "invalid"]


@dataclass(frozen=True, slots=True)
class LineError:
    """Why one line failed; ``code`` is ours and stable, ``message`` is for people."""

    code: str
    message: str
    retryable: bool = False

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    output_tokens: int  # includes image and thought tokens
    image_tokens: int

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "image_tokens": self.image_tokens,
        }


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """One result line or inline response, parsed: the image exactly as returned, or why there is none."""

    key: str | None
    succeeded: bool
    data: bytes | None  # the image bytes exactly as returned (no re-encoding)
    mime_type: str | None
    extension: str | None
    finish_reason: str | None  # the candidate's finishReason, or promptFeedback.blockReason
    text: str | None  # non-thought text parts joined with "\n"
    usage: Usage | None
    error: LineError | None  # None when succeeded


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final word on one request key, as the harvest checkpoints it (one JSON line per key)."""

    key: str
    status: Status
    attempt: int
    model: str | None = None
    image: str | None = None
    mime_type: str | None = None
    bytes: int | None = None
    finish_reason: str | None = None
    text: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None
    # Served from the pay-once cache: {"run_id", "key"} of the line that paid for the image.
    cached_from: dict[str, str] | None = None

    @property
    def retryable(self) -> bool:
        return self.status == "failed" and bool(self.error and self.error.get("retryable"))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status,
            "attempt": self.attempt,
            "model": self.model,
            "image": self.image,
            "mime_type": self.mime_type,
            "bytes": self.bytes,
            "finish_reason": self.finish_reason,
            "text": self.text,
            "usage": self.usage,
            "error": self.error,
            **({"cached_from": self.cached_from} if self.cached_from else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**{name: data.get(name) for name in cls.__slots__})  # type: ignore[arg-type]

    @classmethod
    def failure(
        cls, key: str, error: LineError, *, attempt: int, model: str | None, status: Status = "failed"
    ) -> Outcome:
        return cls(key=key, status=status, attempt=attempt, model=model, error=error.to_json())

    @classmethod
    def of_image(
        cls, parsed: ImageOutcome, key: str, *, image_name: str | None, attempt: int, model: str | None
    ) -> Outcome:
        """The outcome of a parsed result whose image (if any) is stored as ``image_name``."""
        return cls(
            key=key,
            status="succeeded" if parsed.succeeded else "failed",
            attempt=attempt,
            model=model,
            image=image_name if parsed.succeeded else None,
            mime_type=parsed.mime_type,
            bytes=len(parsed.data) if parsed.data is not None else None,
            finish_reason=parsed.finish_reason,
            text=parsed.text,
            usage=parsed.usage.to_json() if parsed.usage else None,
            error=parsed.error.to_json() if parsed.error else None,
        )

    def unwritten(self, reason: str) -> Outcome:
        """This outcome when its image was generated but cannot be stored under its name."""
        error = LineError("write_failed", f"the image could not be written: {reason}")
        return replace(self, status="failed", image=None, error=error.to_json())
