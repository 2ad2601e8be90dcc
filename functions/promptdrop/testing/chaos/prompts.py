"""The prompt files (and messages) one chaos seed drops: every kind of line promptdrop has to handle.

Pure and seeded: the same seed gives the same files. Each file says which of its lines must end in a
manifest entry (every non-blank line but the defaults line).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

# The GA id: the emulator refuses unknown and retired preview ids.
MODEL = "gemini-3-pro-image"
# More lines than usecases/harvest.py's CHECKPOINT_LINES (200): its harvest passes a checkpoint.
BIG_LINES_SHORT = 600
BIG_LINES_FULL = 900

_SUBJECTS = ("a red fox", "a lighthouse", "two owls", "a teapot", "a glacier", "a bicycle", "a koi pond")
# Retryable per-request errors (INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE): resubmitted, then failed.
_RETRYABLE = ("[[emulator:error=13]]", "[[emulator:error=8]]", "[[emulator:error=14]]")
# Final per-request outcomes: a safety block, a blocked prompt, INVALID_ARGUMENT.
_FINAL = ("[[emulator:safety]]", "[[emulator:block]]", "[[emulator:error=3]]")
# Vertex AI: the prediction comes back without the labels that carry the line's key.
LOST_LABEL = "[[emulator:label=lost]]"


@dataclass(frozen=True, slots=True)
class PromptFile:
    """A file to drop into the inbox, and the 1-based line numbers that must get a manifest entry."""

    name: str
    data: bytes
    expected_lines: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """An inline request for the requests topic (Cloud path): ``{"name", "prompts"}``."""

    name: str
    prompts: tuple[str, ...]

    @property
    def body(self) -> bytes:
        return json.dumps({"name": self.name, "prompts": list(self.prompts)}).encode()

    @property
    def expected_lines(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.prompts) + 1))


def _prompt(rng: random.Random, marker: str = "") -> str:
    return f"{rng.choice(_SUBJECTS)} at dusk, watercolour {rng.randrange(10_000)} {marker}".strip()


def _file(name: str, lines: list[str]) -> PromptFile:
    """Number the lines; blank ones and a leading defaults line get no manifest entry."""
    expected = tuple(
        number
        for number, line in enumerate(lines, start=1)
        if line.strip() and not (number == 1 and line.startswith('{"defaults"'))
    )
    return PromptFile(name, ("\n".join(lines) + "\n").encode(), expected)


def mixed_file(
    rng: random.Random, name: str, size: int, *, fresh: bool = False, lost_label: bool = False
) -> PromptFile:
    """Good, retryable, final and invalid lines in a random order, with blank lines and a defaults line;
    two of them in the now lane (sent at once with generate_content), one of those final.

    ``fresh``: every line is submitted even if the pay-once cache holds its image (the defaults say so).
    ``lost_label`` (Vertex AI): one more line whose prediction comes back without its labels
    (``[[emulator:label=lost]]``): it cannot be joined to its line, which is retried, then failed.
    """
    kinds = ["ok"] * size + ["retryable", "final", "final", "invalid", "invalid", "blank", "now", "now-final"]
    kinds += ["lost"] if lost_label else []
    rng.shuffle(kinds)
    defaults: dict[str, Any] = {"model": MODEL, "aspect_ratio": "1:1"}
    if fresh:
        defaults["fresh"] = True
    lines = [json.dumps({"defaults": defaults})]
    invalid = [
        "{not json",
        json.dumps({"prompt": "a cat", "colour": "red"}),  # an unknown field
        json.dumps({"key": "../escape", "prompt": "a cat"}),  # a key that escapes the run folder
        json.dumps({"key": "dup", "prompt": "a cat"}),  # the second "dup" is a duplicate key
    ]
    lines.append(json.dumps({"key": "dup", "prompt": _prompt(rng)}))
    for index, kind in enumerate(kinds):
        if kind == "blank":
            lines.append(rng.choice(["", "   "]))
        elif kind == "invalid":
            lines.append(invalid[index % len(invalid)])
        else:
            final = rng.choice(_FINAL)
            marker = {"ok": "", "now": "", "retryable": rng.choice(_RETRYABLE), "lost": LOST_LABEL}.get(
                kind, final
            )
            line: dict[str, Any] = {"prompt": _prompt(rng, marker)}
            if kind.startswith("now"):
                line["lane"] = "now"
            if rng.random() < 0.7:  # the rest get the default key line-<n>
                line["key"] = f"k{index}"
            lines.append(json.dumps(line))
    return _file(name, lines)


def text_file(rng: random.Random, name: str, size: int) -> PromptFile:
    lines = [_prompt(rng) for _ in range(size)]
    lines.insert(rng.randrange(1, size), "")
    return _file(name, lines)


def big_file(rng: random.Random, name: str, size: int, *, fresh: bool = False) -> PromptFile:
    """One job of more than CHECKPOINT_LINES plain lines: its harvest checkpoints on the way.

    ``fresh``: every line is submitted even if the pay-once cache holds its image (a defaults line says so).
    """
    lines = [json.dumps({"key": f"b{n}", "prompt": _prompt(rng)}) for n in range(size)]
    return _file(name, [json.dumps({"defaults": {"fresh": True}}), *lines] if fresh else lines)


def expiring_file(rng: random.Random, name: str) -> PromptFile:
    """One line asks the whole job to end EXPIRED: every line is retried, then failed."""
    lines = [json.dumps({"prompt": _prompt(rng)}) for _ in range(3)]
    lines.insert(1, json.dumps({"key": "expires", "prompt": _prompt(rng, "[[emulator:job=expired]]")}))
    return _file(name, lines)


# Dropped once every run ended: the first file again under another name, so its lines that succeeded are
# served from the pay-once cache (the same requests) and the others are submitted again.
CACHE_REDROP = "cache-redrop.jsonl"


def cache_redrop(first: PromptFile) -> PromptFile:
    return PromptFile(CACHE_REDROP, first.data, first.expected_lines)


def big_lines(*, short: bool) -> int:
    return BIG_LINES_SHORT if short else BIG_LINES_FULL


def seed_files(seed: int, *, short: bool, lost_labels: bool = False) -> list[PromptFile]:
    """The files of one seed; a name listed twice is dropped twice (a re-upload: a new generation).

    ``lost_labels`` (Vertex AI): each mixed file has a line whose prediction loses its labels.
    """
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    files = [
        mixed_file(rng, "mixed-a.jsonl", 8 if short else 20, lost_label=lost_labels),
        mixed_file(rng, "mixed-b.jsonl", 6 if short else 16, lost_label=lost_labels),
        text_file(rng, "notes.txt", 5 if short else 12),
        expiring_file(rng, "expiring.jsonl"),
        big_file(rng, "big.jsonl", big_lines(short=short)),
    ]
    if not short:
        files += [mixed_file(rng, f"mixed-{c}.jsonl", 10, lost_label=lost_labels) for c in "cde"]
        files.append(big_file(rng, "big-2.jsonl", BIG_LINES_FULL))
    files.append(files[0])  # mixed-a again, later
    return files


def seed_messages(seed: int, *, short: bool) -> list[PromptMessage]:
    rng = random.Random(seed + 1)  # noqa: S311 - test data, not secrets
    count = 1 if short else 3
    return [
        PromptMessage(f"message-{n}", tuple(_prompt(rng, rng.choice(["", "", _FINAL[0]])) for _ in range(4)))
        for n in range(count)
    ]
