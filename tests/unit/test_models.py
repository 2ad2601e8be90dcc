"""The model table's lifecycle and the choice of what a run's lines run on (pure: the API is a callable)."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

import pytest

from promptdrop.errors import BackendTransientError
from promptdrop.models import (
    MODELS,
    ModelChoice,
    choose_model,
    model_spec,
    predict_choice,
    served_by_schedule,
)

TODAY = date(2026, 11, 30)
REPO = Path(__file__).resolve().parents[2]


def api_serving(*ids: str):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def served(model: str) -> bool:
        calls.append(model)
        return model in ids

    served.calls = calls  # type: ignore[attr-defined]
    return served


@pytest.mark.parametrize(
    ("requested", "serving", "policy", "model", "code"),
    [
        # Served: runs as asked, whatever the table says.
        ("gemini-3-pro-image", ("gemini-3-pro-image",), "upgrade", "gemini-3-pro-image", None),
        ("models/gemini-3-pro-image", ("gemini-3-pro-image",), "upgrade", "gemini-3-pro-image", None),
        ("brand-new-image", ("brand-new-image",), "upgrade", "brand-new-image", None),
        # Retired and not served: the replacement, or refused.
        ("gemini-3-pro-image-preview", ("gemini-3-pro-image",), "upgrade", "gemini-3-pro-image", None),
        (
            "gemini-3.1-flash-image-preview",
            ("gemini-3.1-flash-image",),
            "upgrade",
            "gemini-3.1-flash-image",
            None,
        ),
        ("gemini-3-pro-image-preview", ("gemini-3-pro-image",), "refuse", None, "retired_model"),
        ("gemini-2.5-flash-image", ("gemini-3.1-flash-image",), "upgrade", "gemini-3.1-flash-image", None),
        # Not served and no replacement known: unknown.
        ("gemini-9-imaginary-image", ("gemini-3-pro-image",), "upgrade", None, "unknown_model"),
        ("gemini-3-pro-image", (), "upgrade", None, "unknown_model"),
        # A replacement the API does not serve either is no way out.
        ("gemini-3-pro-image-preview", (), "upgrade", None, "unknown_model"),
    ],
)
def test_choose_model(
    requested: str, serving: tuple[str, ...], policy: str, model: str | None, code: str | None
) -> None:
    choice = choose_model(requested, api_serving(*serving), policy=policy, today=TODAY)  # type: ignore[arg-type]
    assert (choice.model, choice.code) == (model, code)
    assert choice.requested == requested.removeprefix("models/")
    assert (choice.message is not None) == (code is not None)


def test_a_replacement_says_so_with_the_shutdown_date() -> None:
    choice = choose_model(
        "gemini-3-pro-image-preview", api_serving("gemini-3-pro-image"), policy="upgrade", today=TODAY
    )
    assert choice.replaced and str(choice.shutdown) == "2026-06-25"
    assert (
        choice.notice
        == "gemini-3-pro-image-preview was shut down on 2026-06-25: its lines run on gemini-3-pro-image"
    )


def test_served_past_its_shutdown_runs_as_asked_with_a_notice() -> None:
    choice = choose_model(
        "gemini-2.5-flash-image", api_serving("gemini-2.5-flash-image"), policy="refuse", today=TODAY
    )
    assert choice.model == "gemini-2.5-flash-image" and not choice.replaced and choice.code is None
    assert choice.notice is not None and "2026-10-02 has passed" in choice.notice
    before = choose_model(
        "gemini-2.5-flash-image",
        api_serving("gemini-2.5-flash-image"),
        policy="upgrade",
        today=date(2026, 9, 1),
    )
    assert before.notice is None


def test_a_failed_check_is_never_a_verdict() -> None:
    """A transient models.get failure propagates (the run backs off); it never becomes unknown_model."""

    def flaky(model: str) -> bool:
        raise BackendTransientError("get model failed: HTTP 503")

    with pytest.raises(BackendTransientError):
        choose_model("gemini-3-pro-image", flaky, policy="upgrade", today=TODAY)


def test_choice_round_trips_through_the_run_record() -> None:
    choice = choose_model(
        "gemini-3-pro-image-preview", api_serving("gemini-3-pro-image"), policy="upgrade", today=TODAY
    )
    assert ModelChoice.from_json(choice.to_json()) == choice


def test_predict_from_the_table_alone() -> None:
    """`run --dry-run` predicts without the API: the table's schedule stands for it."""
    assert (
        predict_choice("gemini-3-pro-image-preview", policy="upgrade", today=TODAY).model
        == "gemini-3-pro-image"
    )
    assert predict_choice("gemini-3-pro-image-preview", policy="refuse", today=TODAY).code == "retired_model"
    unknown = predict_choice("someone-elses-model", policy="upgrade", today=TODAY)
    assert unknown.model == "someone-elses-model" and unknown.notice is not None
    assert served_by_schedule("gemini-3-pro-image", TODAY)
    assert not served_by_schedule("gemini-3-pro-image-preview", TODAY)
    assert served_by_schedule("gemini-3-pro-image-preview", date(2026, 6, 24))


def test_table_prices_match_the_documented_per_image_figures() -> None:
    """$0.134 / $0.24 per 1K-2K / 4K image on gemini-3-pro-image (half in batch); the lite model's is unknown."""
    pro = MODELS["gemini-3-pro-image"]
    assert round(pro.image_cost("1K", batch=False) or 0, 4) == 0.1344
    assert round(pro.image_cost("4K", batch=False) or 0, 2) == 0.24
    assert round(pro.image_cost("2K", batch=True) or 0, 4) == 0.0672
    assert MODELS["gemini-3.1-flash-lite-image"].image_cost("1K", batch=True) is None
    # Retired ids keep their replacement's capabilities, so their lines validate the same way.
    assert model_spec("gemini-3-pro-image-preview").aspect_ratios == pro.aspect_ratios  # type: ignore[union-attr]


def test_retired_ids_appear_only_in_the_table_tests_and_notes() -> None:
    """`git grep image-preview`: the lifecycle table, tests, and the docs that explain the replacement."""
    found = subprocess.run(
        ["git", "grep", "-l", "image-preview", "--", ".", ":!tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert set(found) <= {"functions/promptdrop/models.py", "README.md", "docs/MODELS.md"}, found
