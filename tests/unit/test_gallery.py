"""The gallery pages: manifest entries and input lines -> HTML (pure)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from promptdrop import gallery
from promptdrop.outcomes import LineError
from promptdrop.prompts import InvalidLine, PromptRequest, RejectedLine

FOLDER = "outputs/run-1/"
SUMMARY: dict[str, Any] = {
    "run_id": "run-1",
    "state": "PARTIAL",
    "reason": None,
    "model": "gemini-3-pro-image",
    "finished_at": "2026-11-30T10:00:00Z",
    "counts": {"lines": 3, "succeeded": 1, "failed": 1, "invalid": 1},
    "jobs": [{"model": "gemini-3-pro-image"}, {"model": "gemini-2.5-flash-image"}],
    "cost": {"batch": 0.067, "interactive": 0.134, "saved": 0.067, "estimate": 0.2},
}


def _request(
    line: int, key: str, prompt: str, *, size: str = "1K", ratio: str | None = "1:1"
) -> PromptRequest:
    return PromptRequest(
        line=line,
        key=key,
        model="gemini-3-pro-image",
        request={"contents": [{"parts": [{"text": prompt}]}]},
        image_refs=(),
        image_size=size,
        aspect_ratio=ratio,
        estimated_input_tokens=10,
        input_form={"key": key, "prompt": prompt},
    )


def _entry(line: int, key: str | None, status: str, **fields: Any) -> dict[str, Any]:
    return {"line": line, "key": key, "status": status, "image": None, "error": None, **fields}


def _cards(html: str) -> list[str]:
    return re.findall(r'<article class="card (\w+)" id="line-(\d+)"', html)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("image", "thumb"),
    [
        (FOLDER + "images/a.png", FOLDER + "thumbs/a.webp"),
        (FOLDER + "images/sub/b.c.jpg", FOLDER + "thumbs/sub/b.c.webp"),
        (FOLDER + "images/noext", None),
        ("outputs/other/images/a.png", None),
        (FOLDER + "a.png", None),
    ],
)
def test_thumb_name(image: str, thumb: str | None) -> None:
    """A thumbnail's name follows from its image's: thumbs/<key>.webp, nothing outside images/."""
    assert gallery.thumb_name(FOLDER, image) == thumb


@pytest.mark.parametrize(
    ("stem", "number", "name"),
    [
        ("index", 1, "index.html"),
        ("index", 2, "page-2.html"),
        ("problems", 1, "problems.html"),
        ("problems", 3, "problems-3.html"),
    ],
)
def test_page_names(stem: str, number: int, name: str) -> None:
    """index.html, page-2.html...; problems.html, problems-2.html..., and only those are page names."""
    assert gallery.page_name(stem, number) == name
    assert gallery.is_page_name(name)


@pytest.mark.parametrize(
    "name", ["summary.json", "page-x.html", "page-.html", "images/index.html", "pages.html"]
)
def test_other_names_are_not_pages(name: str) -> None:
    """Stale-page clean-up never deletes anything else."""
    assert not gallery.is_page_name(name)


def test_join_pairs_entries_with_their_input_lines_by_line_number() -> None:
    """Blank lines and a defaults line have no entry; entries without an input line get None."""
    lines = [_request(2, "a", "x"), RejectedLine(4, LineError("bad_json", "no"), b"{"), _request(7, "c", "z")]
    entries = [
        _entry(2, "a", "succeeded"),
        _entry(4, None, "invalid"),
        _entry(5, "b", "failed"),
        _entry(7, "c", "failed"),
    ]
    joined = list(gallery.join_lines(entries, lines))
    assert [(e["line"], line.line if line else None) for e, line in joined] == [
        (2, 2),
        (4, 4),
        (5, None),
        (7, 7),
    ]


def test_succeeded_card_uses_the_thumbnail_when_it_exists_else_the_full_image() -> None:
    """A card links its thumbnail (or, without one, the image itself) to the full image, relatively."""
    entry = _entry(2, "a b#1", "succeeded", image=FOLDER + "images/a b#1.png")
    line = _request(2, "a b#1", "a cat", size="2K", ratio="16:9")
    with_thumb = gallery.card(entry, line, folder=FOLDER, thumbs={FOLDER + "thumbs/a b#1.webp"})
    assert (with_thumb.image, with_thumb.thumb) == ("images/a b#1.png", "thumbs/a b#1.webp")
    assert (with_thumb.prompt, with_thumb.image_size, with_thumb.aspect_ratio) == ("a cat", "2K", "16:9")
    assert with_thumb.reason is None
    without = gallery.card(entry, line, folder=FOLDER, thumbs=set())
    assert without.thumb == "images/a b#1.png"
    page = gallery.render_page([with_thumb], SUMMARY, stem="index", number=1, pages=1, has_next=False)
    assert '<a class="pic" href="images/a%20b%231.png"><img src="thumbs/a%20b%231.webp"' in page


def test_failed_and_invalid_cards_show_the_reason_instead_of_an_image() -> None:
    """The error's code and message replace the picture; a line with no input form still gets its card."""
    failed = gallery.card(
        _entry(3, "b", "failed", error={"code": "safety", "message": "blocked: IMAGE_SAFETY"}),
        _request(3, "b", "p"),
        folder=FOLDER,
        thumbs=set(),
    )
    invalid = gallery.card(
        _entry(4, None, "invalid", error={"code": "bad_json", "message": "line 4 is not JSON"}),
        RejectedLine(4, LineError("bad_json", "line 4 is not JSON"), b"{"),
        folder=FOLDER,
        thumbs=set(),
    )
    bad_ratio = gallery.card(
        _entry(5, "c", "invalid", error={"code": "bad_aspect_ratio", "message": "7:3"}),
        InvalidLine(5, "c", LineError("bad_aspect_ratio", "7:3"), {"prompt": "q", "aspect_ratio": "7:3"}),
        folder=FOLDER,
        thumbs=set(),
    )
    assert (failed.reason, failed.image) == ("safety: blocked: IMAGE_SAFETY", None)
    assert (invalid.reason, invalid.key, invalid.prompt) == ("bad_json: line 4 is not JSON", None, None)
    assert (bad_ratio.prompt, bad_ratio.aspect_ratio) == ("q", "7:3")
    page = gallery.render_page(
        [failed, invalid, bad_ratio], SUMMARY, stem="index", number=1, pages=1, has_next=False
    )
    assert "<img" not in page
    assert '<p class="why"><strong>failed</strong>safety: blocked: IMAGE_SAFETY</p>' in page
    assert '<p class="key">line 4</p>' in page


def test_everything_from_users_is_escaped() -> None:
    """Prompts, keys and reasons are text: no tag, attribute or script of theirs reaches the page."""
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    entry = _entry(2, hostile, "succeeded", image=FOLDER + f"images/{hostile}.png")
    failed = _entry(3, "k", "failed", error={"code": "api_error", "message": hostile})
    cards = [
        gallery.card(entry, _request(2, hostile, hostile), folder=FOLDER, thumbs=set()),
        gallery.card(failed, None, folder=FOLDER, thumbs=set()),
    ]
    page = gallery.render_page(
        cards,
        {**SUMMARY, "run_id": hostile, "reason": hostile},
        stem="index",
        number=1,
        pages=1,
        has_next=False,
    )
    assert "<script" not in page
    assert page.count("<img") == 1  # the card's own thumbnail, nothing injected
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert (
        'href="images/%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E%3Cscript%3Ealert%282%29%3C/script%3E.png"'
        in page
    )


def test_header_has_state_counts_costs_and_models() -> None:
    """The run at a glance: state, counts, batch and interactive cost, saving, every model."""
    page = gallery.render_page([], SUMMARY, stem="index", number=1, pages=1, has_next=False)
    for text in (
        "PARTIAL",
        "<b>3</b> lines",
        "$0.0670",
        "$0.1340",
        "gemini-2.5-flash-image, gemini-3-pro-image",
    ):
        assert text in page
    assert "No lines to show." in page
    unknown = gallery.render_page(
        [], {**SUMMARY, "cost": {"batch": None}}, stem="index", number=1, pages=1, has_next=False
    )
    assert "batch cost <b>unknown</b>" in unknown


def test_page_is_self_contained_with_no_script() -> None:
    """Inline CSS, no script element, no absolute URL: it opens from a folder or through any host."""
    card = gallery.card(
        _entry(2, "a", "succeeded", image=FOLDER + "images/a.png"), None, folder=FOLDER, thumbs=set()
    )
    page = gallery.render_page([card], SUMMARY, stem="index", number=1, pages=1, has_next=False)
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "script-src 'none'" in page


def _numbered(count: int) -> list[gallery.Card]:
    statuses = ["succeeded", "failed", "invalid"]
    return [
        gallery.Card(line=n, key=f"k{n}", status=statuses[n % 3], reason="r") for n in range(1, count + 1)
    ]


@pytest.mark.parametrize(
    ("count", "size", "pages"), [(0, 5, 1), (1, 5, 1), (5, 5, 1), (6, 5, 2), (12, 5, 3), (1200, 500, 3)]
)
def test_pages_hold_at_most_n_cards_with_next_and_previous_links(count: int, size: int, pages: int) -> None:
    """Every card once, in order, at most ``size`` a page; each page links its neighbours."""
    rendered = list(gallery.render_pages(_numbered(count), SUMMARY, page_size=size, expected=count))
    assert [name for name, _ in rendered] == [gallery.page_name("index", n) for n in range(1, pages + 1)]
    seen = [int(line) for _, page in rendered for _, line in _cards(page)]
    assert seen == list(range(1, count + 1))
    for number, (_, page) in enumerate(rendered, start=1):
        assert len(_cards(page)) <= size
        assert ('rel="prev"' in page) == (number > 1)
        assert (f'rel="next" href="page-{number + 1}.html"' in page) == (number < pages)
        if pages > 1:
            assert f"page {number} of {pages}" in page


def test_problem_pages_link_among_themselves() -> None:
    """The failed-and-invalid series has its own names and links."""
    rendered = list(gallery.render_pages(_numbered(7), SUMMARY, stem="problems", page_size=3, expected=7))
    assert [name for name, _ in rendered] == ["problems.html", "problems-2.html", "problems-3.html"]
    assert 'rel="next" href="problems-2.html"' in rendered[0][1]
    assert 'rel="prev" href="problems.html"' in rendered[1][1]


def test_filters_work_without_javascript() -> None:
    """Radio buttons and CSS hide the other statuses; labels count this page's cards."""
    page = gallery.render_page(_numbered(6), SUMMARY, stem="index", number=1, pages=1, has_next=False)
    for status in ("succeeded", "failed", "invalid"):
        assert f'id="f-{status}"' in page
        assert f'<label for="f-{status}">{status} (2)</label>' in page
        assert f"#f-{status}:checked~main .card:not(.{status})" in page
    assert "main .card:not(.invalid){display:none}" in page


def test_a_cached_card_says_which_run_paid_and_the_header_counts_the_saving() -> None:
    """A line served from the pay-once cache is badged, the page names the run that paid; the header shows the
    saving."""
    entry = _entry(
        2, "a", "succeeded", image=FOLDER + "images/a.png", cached_from={"run_id": "old-run", "key": "a"}
    )
    cached = gallery.card(entry, _request(2, "a", "a cat"), folder=FOLDER, thumbs=set())
    paid = gallery.card(
        _entry(3, "b", "succeeded", image=FOLDER + "images/b.png"),
        _request(3, "b", "a dog"),
        folder=FOLDER,
        thumbs=set(),
    )
    assert (cached.cached_from, paid.cached_from) == ("old-run/a", None)
    summary = {**SUMMARY, "cost": {**SUMMARY["cost"], "cached": 1, "saved_by_cache": 0.067}}
    page = gallery.render_page([cached, paid], summary, stem="index", number=1, pages=1, has_next=False)
    assert page.count('<span class="cached">cached</span>') == 1
    # Which run paid: once on the page, not on every card (each line's run and key are in the manifest).
    assert page.count("old-run") == 1
    assert "paid for by run old-run (" in page
    assert "<b>1</b> from the pay-once cache, saving <b>$0.0670</b>" in page
    plain = gallery.render_page([paid], SUMMARY, stem="index", number=1, pages=1, has_next=False)
    assert "pay-once cache" not in plain


def test_a_run_of_one_model_names_it_once_not_on_every_card() -> None:
    """The header names the run's model; a card names a model only when the run has several (bytes: a page of
    500 cards, written again by every re-run served from the cache)."""
    cards = [
        gallery.card(
            _entry(n, f"k{n}", "succeeded", image=FOLDER + f"images/k{n}.png", model="gemini-3-pro-image"),
            _request(n, f"k{n}", "a cat"),
            folder=FOLDER,
            thumbs=set(),
        )
        for n in (1, 2, 3)
    ]
    one_model = {**SUMMARY, "jobs": [{"model": "gemini-3-pro-image"}]}
    page = gallery.render_page(cards, one_model, stem="index", number=1, pages=1, has_next=False)
    assert page.count("gemini-3-pro-image") == 1  # the header's
    assert '<p class="meta">line 2 · 1K · 1:1</p>' in page
    several = gallery.render_page(cards, SUMMARY, stem="index", number=1, pages=1, has_next=False)
    assert '<p class="meta">line 2 · 1K · 1:1 · gemini-3-pro-image</p>' in several
