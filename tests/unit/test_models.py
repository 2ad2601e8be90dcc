"""The model table, and the choice of what a run's lines run on (pure: what the API serves is a value)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import MappingProxyType

import pytest

from promptdrop.errors import ConfigurationError
from promptdrop.models import (
    BATCH_GENERATE,
    GENERATE,
    MODELS,
    ModelChoice,
    ServedModels,
    backend_doubts,
    backend_problem,
    choose_model,
    enqueued_token_budget,
    lane_problem,
    model_spec,
    parse_model_map,
    predict_choice,
    served_by_schedule,
)
from promptdrop.settings import Settings

TODAY = date(2026, 12, 7)
REPO = Path(__file__).resolve().parents[2]
PRO, PRO_PREVIEW = "gemini-3-pro-image", "gemini-3-pro-image-preview"
FLASH, FLASH_PREVIEW = "gemini-3.1-flash-image", "gemini-3.1-flash-image-preview"
NANO = "gemini-nano-banana-2.1"


def api_serving(*ids: str, batch: bool = True) -> ServedModels:
    methods = frozenset({GENERATE, BATCH_GENERATE} if batch else {GENERATE})
    return ServedModels({model: methods for model in ids})


@pytest.mark.parametrize(
    ("requested", "serving", "policy", "model", "code"),
    [
        # Served: runs as asked, whatever the table says.
        (PRO, (PRO,), "aliases", PRO, None),
        (f"models/{PRO}", (PRO,), "aliases", PRO, None),
        ("brand-new-image", ("brand-new-image",), "aliases", "brand-new-image", None),
        (FLASH, (FLASH, NANO), "aliases", FLASH, None),  # deprecated but served
        # An alias no longer served follows its target (not under "refuse").
        (PRO_PREVIEW, (PRO,), "aliases", PRO, None),
        (PRO_PREVIEW, (PRO,), "upgrade", PRO, None),
        (PRO_PREVIEW, (PRO,), "refuse", None, "retired_model"),
        (FLASH_PREVIEW, (FLASH,), "aliases", FLASH, None),
        # A model no longer served with a successor: offered, taken only under "upgrade".
        (FLASH, (PRO, NANO), "aliases", None, "retired_model"),
        (FLASH, (PRO, NANO), "refuse", None, "retired_model"),
        (FLASH, (PRO, NANO), "upgrade", NANO, None),
        (FLASH_PREVIEW, (NANO,), "aliases", None, "retired_model"),  # alias, then a successor
        (FLASH_PREVIEW, (NANO,), "upgrade", NANO, None),
        # Not served and nothing to follow: unknown.
        ("gemini-9-imaginary-image", (PRO,), "aliases", None, "unknown_model"),
        (PRO, (), "aliases", None, "unknown_model"),
        (PRO_PREVIEW, (), "aliases", None, "unknown_model"),
        (FLASH, (PRO,), "upgrade", None, "unknown_model"),  # its successor is not served either
        # 2.5 Flash Image is not deprecated: not served means unknown, never a successor.
        ("gemini-2.5-flash-image", (FLASH,), "upgrade", None, "unknown_model"),
    ],
)
def test_choose_model(
    requested: str, serving: tuple[str, ...], policy: str, model: str | None, code: str | None
) -> None:
    choice = choose_model(requested, api_serving(*serving), policy=policy, today=TODAY)  # type: ignore[arg-type]
    assert (choice.model, choice.code) == (model, code)
    assert choice.requested == requested.removeprefix("models/")
    assert (choice.message is not None) == (code is not None)


def test_an_alias_says_so_with_the_shutdown_date() -> None:
    choice = choose_model(PRO_PREVIEW, api_serving(PRO), policy="aliases", today=TODAY)
    assert choice.replaced and str(choice.shutdown) == "2026-06-25"
    assert choice.notice == f"{PRO_PREVIEW} was shut down on 2026-06-25: its lines run on {PRO}"


def test_a_successor_is_offered_with_both_batch_prices() -> None:
    choice = choose_model(FLASH, api_serving(PRO, NANO), policy="aliases", today=TODAY)
    assert choice.message is not None
    assert f"successor is {NANO}" in choice.message
    assert (
        "$0.0336 per 1K image in batch" in choice.message
        and "$0.0168 per 1K image in batch" in choice.message
    )
    assert "PROMPTDROP_RETIRED_MODELS=upgrade" in choice.message
    assert f"PROMPTDROP_MODEL_MAP={FLASH}={NANO}" in choice.message


def test_a_typo_gets_the_closest_served_id() -> None:
    choice = choose_model("gemini-3-pro-imge", api_serving(PRO, NANO), policy="aliases", today=TODAY)
    assert choice.code == "unknown_model" and choice.message is not None
    assert choice.message.endswith(f"did you mean {PRO}?")
    far = choose_model("dall-e-3", api_serving(PRO, NANO), policy="aliases", today=TODAY)
    assert far.message is not None and "did you mean" not in far.message


def test_the_model_map_is_applied_first() -> None:
    mapping = parse_model_map(f" {FLASH}={NANO} , a=b")
    assert mapping == {FLASH: NANO, "a": "b"}
    choice = choose_model(FLASH, api_serving(FLASH, NANO), policy="refuse", today=TODAY, model_map=mapping)
    assert (choice.model, choice.replaced) == (NANO, True)
    unserved = choose_model("a", api_serving(PRO), policy="aliases", today=TODAY, model_map=mapping)
    assert unserved.code == "unknown_model"
    for bad in ("x", "=y", "x="):
        with pytest.raises(ConfigurationError, match="PROMPTDROP_MODEL_MAP"):
            parse_model_map(bad)
    with pytest.raises(ConfigurationError, match="PROMPTDROP_MODEL_MAP"):
        Settings.from_env({"PROMPTDROP_MODEL_MAP": "nonsense"})


def test_a_deprecated_model_still_served_runs_with_a_notice() -> None:
    choice = choose_model(FLASH, api_serving(FLASH, NANO), policy="refuse", today=TODAY)
    assert choice.model == FLASH and not choice.replaced and choice.code is None
    assert choice.notice == (
        f"{FLASH} is still served, but deprecated since 2026-10-06, shutdown announced, no date: move to {NANO}"
    )
    assert choose_model(PRO, api_serving(PRO), policy="aliases", today=TODAY).notice is None
    untabled = choose_model("new-image", api_serving("new-image"), policy="aliases", today=TODAY)
    assert untabled.notice is not None and "cost is unknown" in untabled.notice


def test_lanes_need_their_method() -> None:
    """A batch line needs batchGenerateContent (else no_batch, naming the now lane); a now line needs generate."""
    served = api_serving(NANO, batch=False)
    problem = lane_problem(NANO, served, "batch")
    assert problem is not None and problem[0] == "no_batch" and '"lane": "now"' in problem[1]
    assert lane_problem(NANO, served, "now") is None
    assert lane_problem(NANO, ServedModels({NANO: frozenset({BATCH_GENERATE})}), "now") == (
        "no_generate",
        f"{NANO} does not take generateContent calls, so the now lane cannot send it",
    )


def test_choice_round_trips_through_the_run_record() -> None:
    choice = choose_model(PRO_PREVIEW, api_serving(PRO), policy="aliases", today=TODAY)
    assert ModelChoice.from_json(choice.to_json()) == choice


def test_predict_from_the_table_alone() -> None:
    """Offline `run --dry-run`: the table's schedule stands for the API; an id it lacks is assumed served."""
    assert predict_choice(PRO_PREVIEW, policy="aliases", today=TODAY).model == PRO
    assert predict_choice(PRO_PREVIEW, policy="refuse", today=TODAY).code == "retired_model"
    unknown = predict_choice("someone-elses-model", policy="aliases", today=TODAY)
    assert unknown.model == "someone-elses-model" and unknown.notice is not None
    assert served_by_schedule(PRO, TODAY) and served_by_schedule(FLASH, TODAY)
    assert not served_by_schedule(PRO_PREVIEW, TODAY)
    assert served_by_schedule(PRO_PREVIEW, date(2026, 6, 24))


def test_table_prices_match_the_published_per_image_figures() -> None:
    """Per image, interactive (batch is half): the figures the pages give, and unknown where they give none."""
    pro, flash, nano = MODELS[PRO], MODELS[FLASH], MODELS[NANO]
    assert round(pro.image_cost("1K", batch=False) or 0, 4) == 0.1344
    assert round(pro.image_cost("4K", batch=False) or 0, 2) == 0.24
    assert round(pro.image_cost("2K", batch=True) or 0, 4) == 0.0672
    assert round(flash.image_cost("1K", batch=False) or 0, 4) == 0.0672
    assert round(flash.image_cost("512", batch=False) or 0, 4) == 0.0448
    # Nano Banana 2.1: $30/M image output; $0.0336 per 1K image and $0.1134 per 4K (third-party notes).
    assert round(nano.image_cost("1K", batch=False) or 0, 4) == 0.0336
    assert round(nano.image_cost("4K", batch=False) or 0, 4) == 0.1134
    assert round(nano.image_cost("1K", batch=True) or 0, 4) == 0.0168
    assert nano.image_cost("2K", batch=True) is None  # accepted, no published token count
    assert nano.image_sizes == ("1K", "4K", "2K") and "512" not in nano.image_sizes
    assert len(nano.aspect_ratios) == 14 and nano.max_input_images == 14 and nano.batch is None
    assert str(nano.released) == "2026-10-06"
    assert MODELS["gemini-3.1-flash-lite-image"].image_cost("1K", batch=True) is None
    flash_25 = MODELS["gemini-2.5-flash-image"]
    assert flash_25.shutdown is None and flash_25.successor is None and flash_25.deprecated is None
    # Aliases keep their target's capabilities, so their lines validate the same way.
    assert model_spec(PRO_PREVIEW).aspect_ratios == pro.aspect_ratios  # type: ignore[union-attr]


def test_enqueued_token_budgets_per_model_and_tier() -> None:
    """Rate-limits page: Tier 1 1M (Flash) / 2M (Pro, Flash-Lite); Tier 2 250M/270M; Tier 3 750M/1B."""
    lite = "gemini-3.1-flash-lite-image"
    assert [enqueued_token_budget(FLASH, t) for t in (1, 2, 3)] == [1_000_000, 250_000_000, 750_000_000]
    assert [enqueued_token_budget(PRO, t) for t in (1, 2, 3)] == [2_000_000, 270_000_000, 1_000_000_000]
    assert [enqueued_token_budget(lite, t) for t in (1, 2, 3)] == [2_000_000, 270_000_000, 1_000_000_000]
    assert enqueued_token_budget(PRO_PREVIEW, 1) == 2_000_000  # an alias has its target's quota
    # No published figure: the smallest of the tier.
    assert [enqueued_token_budget(NANO, t) for t in (1, 2, 3)] == [1_000_000, 250_000_000, 750_000_000]
    settings = Settings.from_env({"PROMPTDROP_TIER": "2"})
    assert settings.enqueued_token_budget(PRO) == 270_000_000
    assert Settings.from_env({"PROMPTDROP_MAX_ENQUEUED_TOKENS": "5"}).enqueued_token_budget(PRO) == 5
    with pytest.raises(ConfigurationError):
        Settings.from_env({"PROMPTDROP_TIER": "4"})


def test_retired_ids_appear_only_in_the_table_tests_and_notes() -> None:
    """`git grep`: retired and deprecated ids live in the table, tests, and the docs that explain them."""
    for retired in ("image-preview", FLASH):
        found = subprocess.run(
            ["git", "grep", "-l", retired, "--", ".", ":!tests"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert set(found) <= {"functions/promptdrop/models.py", "README.md", "docs/MODELS.md"}, (
            retired,
            found,
        )


# Per backend: what Vertex AI batch takes (models.VertexBatch, sources in the module docstring). -----------


def vertex(model: str, location: str, size: str | None = None, lane: str = "batch") -> tuple[str, str] | None:
    return backend_problem(model, backend="vertex", location=location, lane=lane, size=size)


def vertex_doubts(model: str, location: str = "global", size: str | None = None) -> tuple[str, ...]:
    return backend_doubts(model, backend="vertex", location=location, lane="batch", size=size)


def test_vertex_table_lists_batch_locations_and_confirmed_sizes_as_the_sources_give_them() -> None:
    pro, flash = MODELS[PRO].vertex, MODELS[FLASH].vertex
    assert (pro.batch, pro.locations, pro.sizes) == (True, ("global",), ("1K",))
    assert (flash.batch, flash.locations, flash.sizes) == (True, ("global", "us", "eu"), ("1K",))
    # Listed for Vertex batch, but no location, size or price found; no page says for the other two.
    assert (MODELS[NANO].vertex.batch, MODELS[NANO].vertex.locations, MODELS[NANO].vertex.rates) == (
        True,
        None,
        None,
    )
    for other in ("gemini-3.1-flash-lite-image", "gemini-2.5-flash-image"):
        assert (MODELS[other].vertex.batch, MODELS[other].vertex.rates) == (None, None)
    # An old id is the same model: its Vertex facts follow it.
    assert MODELS[PRO_PREVIEW].vertex == pro


@pytest.mark.parametrize(
    ("model", "location", "refused"),
    [
        (PRO, "global", False),
        (PRO, "us", True),
        (PRO, "eu", True),
        (PRO, "us-central1", True),  # an online region of the model page, not a batch location
        (FLASH, "global", False),
        (FLASH, "us", False),
        (FLASH, "eu", False),
        (FLASH, "europe-west4", True),
        (NANO, "us-central1", False),  # no location listed: runs, with a notice
        ("gemini-2.5-flash-image", "eu", False),  # batch unconfirmed: runs, with a notice
        ("not-in-the-table", "eu", False),  # the table cannot check what it does not list
    ],
)
def test_vertex_refuses_a_batch_line_outside_the_listed_locations(
    model: str, location: str, refused: bool
) -> None:
    problem = vertex(model, location)
    assert (problem is not None) == refused
    if problem is not None:
        code, message = problem
        assert code == "location_unsupported"
        assert "Vertex AI" in message and f"PROMPTDROP_VERTEX_LOCATION={location}" in message


def test_vertex_location_message_names_the_backend_model_and_location() -> None:
    assert vertex(PRO, "us") == (
        "location_unsupported",
        "gemini-3-pro-image takes batch on Vertex AI only in location global; PROMPTDROP_VERTEX_LOCATION=us",
    )
    assert vertex(FLASH, "asia") == (
        "location_unsupported",
        "gemini-3.1-flash-image takes batch on Vertex AI only in locations global, us, eu; "
        "PROMPTDROP_VERTEX_LOCATION=asia",
    )


def test_the_gemini_api_and_the_now_lane_are_not_held_to_vertex_batch_locations() -> None:
    for backend in ("gemini", "emulator"):
        assert backend_problem(PRO, backend=backend, location="us", lane="batch", size="4K") is None
        assert backend_doubts(PRO, backend=backend, location="us", lane="batch", size="4K") == ()
    assert vertex(PRO, "us", lane="now") is None  # generate_content, not batch
    assert backend_doubts(PRO, backend="vertex", location="us", lane="now", size="4K") == ()


@pytest.mark.parametrize(("size", "doubted"), [(None, False), ("1K", False), ("2K", True), ("4K", True)])
def test_vertex_batch_sizes_no_page_confirms_run_with_a_notice(size: str | None, doubted: bool) -> None:
    assert vertex(PRO, "global", size) is None
    doubts = vertex_doubts(PRO, size=size)
    assert bool(doubts) == doubted
    if doubted:
        assert doubts == (
            f"gemini-3-pro-image: image_size {size} in Vertex AI batch is unconfirmed (Google's pages give no "
            "batch sizes; a July 2026 note says Vertex batch images came out 1K only); its lines run",
        )


def test_vertex_refuses_a_size_a_page_says_batch_does_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table has no such size today; when a page says so, the line is invalid, naming backend and location."""
    spec = MODELS[FLASH]
    refusing = replace(spec, vertex=replace(spec.vertex, refused_sizes=("4K",)))
    monkeypatch.setattr("promptdrop.models.MODELS", MappingProxyType({**MODELS, FLASH: refusing}))
    assert vertex(FLASH, "us", "4K") == (
        "size_unsupported",
        "gemini-3.1-flash-image takes no image_size 4K in batch on Vertex AI (location us); it takes 512, 1K, 2K",
    )
    assert vertex(FLASH, "us", "2K") is None


def test_vertex_doubts_for_a_model_without_listed_locations_or_confirmed_batch() -> None:
    nano = vertex_doubts(NANO, "us-central1", "1K")
    assert len(nano) == 2
    assert "no location" in nano[0] and "PROMPTDROP_VERTEX_LOCATION=us-central1" in nano[0]
    assert "image_size 1K" in nano[1] and "unconfirmed" in nano[1]
    (lite,) = vertex_doubts("gemini-3.1-flash-lite-image", "eu")
    assert "no Google page says whether Vertex AI batch takes it" in lite and "location eu" in lite


def test_vertex_prices_are_vertex_s_own_and_unknown_where_none_was_found() -> None:
    for model in (PRO, FLASH):
        gemini, on_vertex = model_spec(model), model_spec(model, "vertex")
        assert gemini is not None and on_vertex is not None
        assert on_vertex.rates == gemini.rates  # Vertex's published figures are the same (docstring)
        assert on_vertex.image_cost("1K", batch=True) == pytest.approx(0.0672 if model == PRO else 0.0336)
    for model in (NANO, "gemini-3.1-flash-lite-image", "gemini-2.5-flash-image"):
        on_vertex = model_spec(model, "vertex")
        assert on_vertex is not None and on_vertex.rates is None
        assert on_vertex.image_cost("1K", batch=True) is None
    gemini_25 = model_spec("gemini-2.5-flash-image", "gemini")
    assert gemini_25 is not None and gemini_25.rates is not None  # the Gemini API's price stays
