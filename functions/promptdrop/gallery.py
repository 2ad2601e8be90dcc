"""A run's gallery: manifest entries and input lines -> static HTML pages (pure).

The pages are self-contained (inline CSS, no script, nothing fetched from elsewhere) and link only
relatively, so the same object tree opens from the local folder, a synced copy of the bucket, or the Cloud
Storage authenticated browser URL. Everything that came from a user (prompts, keys, reasons) is escaped.
Filtering works without JavaScript: radio buttons and CSS within a page, and a second series of pages
(``problems.html``, ``problems-2.html``...) with only the failed and invalid lines of the whole run.
"""

from __future__ import annotations

import html
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final
from urllib.parse import quote

from promptdrop.prompts import InvalidLine, ParsedLine, PromptRequest, RejectedLine

THUMB_EXTENSION: Final = "webp"
THUMB_MIME_TYPE: Final = "image/webp"
DEFAULT_PAGE_SIZE: Final = 500
PROMPT_SHOWN_CHARS: Final = 400
PAGE_STEMS: Final = ("index", "problems")  # every page is <stem>.html or <page|problems>-N.html
STATUSES: Final = ("succeeded", "failed", "invalid")
PAYERS_SHOWN: Final = 5  # runs named in a page's line on who paid for its cached lines


def thumb_name(folder: str, image_name: str) -> str | None:
    """``outputs/r/images/<key>.png`` -> ``outputs/r/thumbs/<key>.webp``; None for a name outside images/."""
    images = folder + "images/"
    if not image_name.startswith(images) or "." not in image_name[len(images) :]:
        return None
    stem = image_name[len(images) :].rsplit(".", 1)[0]
    return f"{folder}thumbs/{stem}.{THUMB_EXTENSION}"


def page_name(stem: str, number: int) -> str:
    """Page 1 of a series is ``<stem>.html``; later ones ``page-N.html`` (``index``) or ``problems-N.html``."""
    if number == 1:
        return f"{stem}.html"
    return f"{'page' if stem == 'index' else stem}-{number}.html"


def is_page_name(name: str) -> bool:
    """A name (relative to the run folder) that a gallery page series may use."""
    for stem in PAGE_STEMS:
        if name == f"{stem}.html":
            return True
        prefix = f"{'page' if stem == 'index' else stem}-"
        if name.startswith(prefix) and name.endswith(".html") and name[len(prefix) : -5].isdigit():
            return True
    return False


@dataclass(frozen=True, slots=True)
class Card:
    """One manifest line as the page shows it. ``image`` and ``thumb`` are relative to the run folder."""

    line: int
    key: str | None
    status: str
    prompt: str | None = None
    image_size: str | None = None
    aspect_ratio: str | None = None
    model: str | None = None
    image: str | None = None
    thumb: str | None = None
    reason: str | None = None
    cached_from: str | None = None  # "<run_id>/<key>" of the line that paid, for a line served from the cache


def join_lines(
    entries: Iterable[Mapping[str, Any]], lines: Iterable[ParsedLine]
) -> Iterator[tuple[Mapping[str, Any], ParsedLine | None]]:
    """Pair each manifest entry with its input line; both are in input order, joined on line number."""
    source = iter(lines)
    pending: ParsedLine | None = next(source, None)
    for entry in entries:
        number = int(entry.get("line") or 0)
        while pending is not None and pending.line < number:
            pending = next(source, None)
        if pending is not None and pending.line == number:
            yield entry, pending
            pending = next(source, None)
        else:
            yield entry, None


def _prompt_of(line: ParsedLine | None) -> str | None:
    if line is None or isinstance(line, RejectedLine):
        return None
    form = line.input_form or {}
    if isinstance(form.get("prompt"), str):
        return str(form["prompt"])
    if isinstance(line, PromptRequest):
        texts = [
            part["text"]
            for content in line.request.get("contents", [])
            if isinstance(content, dict)
            for part in content.get("parts", [])
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts) or None
    return None


def _shortened(prompt: str | None) -> str | None:
    """A page shows the start of a long prompt (a 5 MB one would make a 5 MB page); the manifest has it whole."""
    if prompt is None or len(prompt) <= PROMPT_SHOWN_CHARS:
        return prompt
    return f"{prompt[:PROMPT_SHOWN_CHARS]}… ({len(prompt) - PROMPT_SHOWN_CHARS:,} more characters)"


def _form_field(line: InvalidLine, name: str) -> str | None:
    value = (line.input_form or {}).get(name)
    return value if isinstance(value, str) else None


def _reason(entry: Mapping[str, Any]) -> str | None:
    error = entry.get("error")
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        return ": ".join(str(part) for part in (code, message) if part) or None
    if entry.get("finish_reason") and entry.get("finish_reason") != "STOP":
        return f"finish reason {entry['finish_reason']}"
    return None


def card(entry: Mapping[str, Any], line: ParsedLine | None, *, folder: str, thumbs: Container[str]) -> Card:
    """The card of one manifest entry. ``thumbs``: thumbnail object names that exist (else the full image)."""
    image_size = aspect_ratio = None
    if isinstance(line, PromptRequest):
        image_size, aspect_ratio = line.image_size, line.aspect_ratio
    elif isinstance(line, InvalidLine):
        image_size, aspect_ratio = _form_field(line, "image_size"), _form_field(line, "aspect_ratio")
    model = entry.get("model") or (line.model if isinstance(line, PromptRequest) else None)
    image = thumb = None
    name = entry.get("image")
    if entry.get("status") == "succeeded" and isinstance(name, str) and name.startswith(folder):
        image = name[len(folder) :]
        small = thumb_name(folder, name)
        thumb = small[len(folder) :] if small is not None and small in thumbs else image
    status = str(entry.get("status"))
    origin = entry.get("cached_from")
    return Card(
        line=int(entry.get("line") or 0),
        key=entry.get("key"),
        status=status if status in STATUSES else "invalid",
        prompt=_shortened(_prompt_of(line)),
        image_size=image_size,
        aspect_ratio=aspect_ratio,
        model=model,
        image=image,
        thumb=thumb,
        reason=None if status == "succeeded" else _reason(entry) or "no reason recorded",
        cached_from=f"{origin.get('run_id')}/{origin.get('key')}" if isinstance(origin, Mapping) else None,
    )


# Rendering


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(relative: str) -> str:
    """A relative link to an object: percent-encoded (keys may hold spaces, '#', '?'), then escaped."""
    return _e(quote(relative, safe="/"))


def _money(value: object) -> str:
    return "unknown" if not isinstance(value, int | float) else f"${value:,.4f}"


_CSS: Final = """
:root{--ok:#1b7f3b;--bad:#b3261e;--inv:#8a5a00;--mute:#5f6368;--line:#dadce0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#202124;background:#f8f9fa}
header{padding:16px 24px;background:#fff;border-bottom:1px solid var(--line)}
h1{margin:0 0 6px;font-size:20px;word-break:break-all}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0;color:var(--mute)}
.facts b{color:#202124;font-weight:600}
.state{display:inline-block;padding:1px 8px;border-radius:10px;background:#e8eaed;color:#202124;font-weight:600}
.state-SUCCEEDED{background:#e6f4ea;color:var(--ok)}.state-FAILED,.state-CANCELLED{background:#fce8e6;color:var(--bad)}
.state-PARTIAL{background:#fef7e0;color:var(--inv)}
.reason-run{margin:8px 0 0;color:var(--bad)}
nav{display:flex;flex-wrap:wrap;align-items:center;gap:8px;padding:10px 24px}
nav a,nav label{padding:3px 10px;border:1px solid var(--line);border-radius:14px;background:#fff;color:#1a73e8;text-decoration:none;cursor:pointer}
nav .here{background:#1a73e8;color:#fff;border-color:#1a73e8}
.filter{position:absolute;opacity:0;pointer-events:none}
#f-all:checked~.filters label[for=f-all],#f-succeeded:checked~.filters label[for=f-succeeded],
#f-failed:checked~.filters label[for=f-failed],#f-invalid:checked~.filters label[for=f-invalid]{background:#1a73e8;color:#fff;border-color:#1a73e8}
#f-succeeded:checked~main .card:not(.succeeded),#f-failed:checked~main .card:not(.failed),
#f-invalid:checked~main .card:not(.invalid){display:none}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px;padding:4px 24px 24px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden;display:flex;flex-direction:column}
.card.failed{border-color:#f4c7c3}.card.invalid{border-color:#fde293}
.pic{display:block;position:relative;aspect-ratio:1;overflow:hidden;background:#f1f3f4}
.pic img{position:absolute;inset:0;width:100%;height:100%;object-fit:contain}
.why{aspect-ratio:1;margin:0;padding:14px;overflow:auto;background:#fce8e6;color:var(--bad);word-break:break-word}
.invalid .why{background:#fef7e0;color:var(--inv)}
.why strong{display:block;margin-bottom:4px;text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.key{margin:0;padding:8px 10px 4px;font:600 13px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.prompt{margin:0;padding:0 10px 6px;white-space:pre-wrap;word-break:break-word;max-height:calc(7.5em + 6px);overflow:auto}
.meta{margin:0;padding:0 10px 10px;color:var(--mute);font-size:12px}
.empty{padding:24px;color:var(--mute)}
.paid{margin:0;padding:8px 24px 0;color:var(--mute)}
.cached{position:absolute;top:6px;left:6px;padding:1px 7px;border-radius:9px;background:#e8f0fe;color:#1967d2;font-size:11px;font-weight:600}
footer{padding:8px 24px 24px;color:var(--mute);font-size:12px}
"""


def page_head(title: str, css: str) -> str:
    """The start of a static page up to ``<body>``: escaped title, inline CSS, and a policy that forbids any
    script (defence in depth: the pages need none, so none may run even if something slipped through)."""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'none'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'\">"
        f"<title>{_e(title)}</title><style>{css}</style></head><body>"
    )


def _run_models(summary: Mapping[str, Any]) -> list[str]:
    """The models the run's header names: the run's own and its jobs'."""
    return sorted(
        {str(m) for m in [summary.get("model"), *(j.get("model") for j in summary.get("jobs") or [])] if m}
    )


def _header(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    cost = summary.get("cost") or {}
    models = _run_models(summary)
    state = str(summary.get("state") or "")
    facts = [
        f'<span class="state state-{_e(state)}">{_e(state)}</span>',
        f"<span><b>{_e(counts.get('lines', 0))}</b> lines: <b>{_e(counts.get('succeeded', 0))}</b> succeeded, "
        f"<b>{_e(counts.get('failed', 0))}</b> failed, <b>{_e(counts.get('invalid', 0))}</b> invalid</span>",
        f"<span>batch cost <b>{_e(_money(cost.get('batch')))}</b></span>",
        f"<span>interactive <b>{_e(_money(cost.get('interactive')))}</b></span>",
        f"<span>saved <b>{_e(_money(cost.get('saved')))}</b></span>",
        *(
            [
                f"<span><b>{_e(cost['cached'])}</b> from the pay-once cache, saving "
                f"<b>{_e(_money(cost.get('saved_by_cache')))}</b></span>"
            ]
            if cost.get("cached")
            else []
        ),
        f"<span>model{'s' if len(models) > 1 else ''} <b>{_e(', '.join(models) or 'unknown')}</b></span>",
    ]
    if summary.get("finished_at"):
        facts.append(f"<span>finished {_e(summary['finished_at'])}</span>")
    reason = summary.get("reason")
    return (
        f'<header><h1>{_e(summary.get("run_id", "run"))}</h1><p class="facts">{"".join(facts)}</p>'
        + (f'<p class="reason-run">{_e(reason)}</p>' if reason else "")
        + "</header>"
    )


def _card_html(c: Card, run_model: str | None = None) -> str:
    """A card, lean: a page holds hundreds, and a re-run served from the cache writes them again (its images
    are links). What the header or the manifest already says is not repeated on every card: the model when
    the run has one (``run_model``), and the run and key a cached line was paid by (the manifest's
    ``cached_from``; the card says "cached")."""
    label = c.key if c.key is not None else f"line {c.line}"
    if c.image is not None and c.thumb is not None:
        visual = (
            f'<a class="pic" href="{_href(c.image)}"><img src="{_href(c.thumb)}" alt="{_e(label)}" '
            'loading="lazy">' + ('<span class="cached">cached</span>' if c.cached_from else "") + "</a>"
        )
    else:
        visual = f'<p class="why"><strong>{_e(c.status)}</strong>{_e(c.reason or "")}</p>'
    meta = [f"line {c.line}"]
    meta += [_e(v) for v in (c.image_size, c.aspect_ratio) if v]
    if c.model and c.model != run_model:
        meta.append(_e(c.model))
    prompt = f'<p class="prompt">{_e(c.prompt)}</p>' if c.prompt else ""
    return (
        f'<article class="card {c.status}" id="line-{c.line}">{visual}'
        f'<p class="key">{_e(label)}</p>{prompt}<p class="meta">{" · ".join(meta)}</p></article>'
    )


def _pager(stem: str, number: int, has_next: bool, pages: int) -> str:
    if number == 1 and not has_next:
        return ""
    links = []
    if number > 1:
        links.append(f'<a rel="prev" href="{page_name(stem, number - 1)}">← previous</a>')
    links.append(f"<span>page {number} of {max(pages, number)}</span>")
    if has_next:
        links.append(f'<a rel="next" href="{page_name(stem, number + 1)}">next →</a>')
    return f'<nav class="pager">{"".join(links)}</nav>'


def render_page(
    cards: list[Card], summary: Mapping[str, Any], *, stem: str, number: int, pages: int, has_next: bool
) -> str:
    """One page of the series ``stem`` (``index``: every line; ``problems``: failed and invalid only)."""
    counts = summary.get("counts") or {}
    problems = int(counts.get("failed") or 0) + int(counts.get("invalid") or 0)
    series = [
        f'<a class="{"here" if stem == "index" else ""}" href="index.html">all lines</a>',
        f'<a class="{"here" if stem == "problems" else ""}" href="problems.html">failed and invalid only '
        f"({problems})</a>"
        if problems
        else "",
        '<a href="summary.json">summary.json</a>',
        '<a href="manifest.jsonl">manifest.jsonl</a>',
    ]
    on_page = {status: sum(1 for c in cards if c.status == status) for status in STATUSES}
    radios = "".join(
        f'<input class="filter" type="radio" name="filter" id="f-{s}"{" checked" if s == "all" else ""}>'
        for s in ("all", *STATUSES)
    )
    labels = f'<label for="f-all">all on this page ({len(cards)})</label>' + "".join(
        f'<label for="f-{s}">{s} ({on_page[s]})</label>' for s in STATUSES if on_page[s]
    )
    models = _run_models(summary)
    run_model = models[0] if len(models) == 1 else None  # named once, in the header
    body = "".join(_card_html(c, run_model) for c in cards) or '<p class="empty">No lines to show.</p>'
    payers = sorted({c.cached_from.rpartition("/")[0] for c in cards if c.cached_from})
    paid = (
        f'<p class="paid">the lines marked cached on this page were paid for by run '
        f"{_e(', '.join(payers[:PAYERS_SHOWN]))}"
        + (f" and {len(payers) - PAYERS_SHOWN} more" if len(payers) > PAYERS_SHOWN else "")
        + " (each line's run and key: manifest.jsonl, cached_from)</p>"
        if payers
        else ""
    )
    pager = _pager(stem, number, has_next, pages)
    title = f"{summary.get('run_id', 'run')} · {summary.get('state', '')}"
    return (
        page_head(title, _CSS) + f'{_header(summary)}{paid}<nav class="series">{"".join(series)}</nav>{pager}'
        f'{radios}<nav class="filters">{labels}</nav><main>{body}</main>{pager}'
        f"<footer>promptdrop gallery · {len(cards)} card(s) on this page</footer></body></html>\n"
    )


def render_pages(
    cards: Iterable[Card],
    summary: Mapping[str, Any],
    *,
    stem: str = "index",
    page_size: int = DEFAULT_PAGE_SIZE,
    expected: int | None = None,
) -> Iterator[tuple[str, str]]:
    """(page name, HTML) for every page of a series; at most ``page_size`` cards each, streamed.

    ``expected``: how many cards the series should hold (for "page i of N"); the pages themselves follow
    the cards actually given. A series with no cards still has its first page.
    """
    size = max(1, page_size)
    pages = max(1, -(-(expected or 0) // size))
    source = iter(cards)
    batch = list(islice(source, size))
    number = 1
    while True:
        following = list(islice(source, size))
        yield (
            page_name(stem, number),
            render_page(batch, summary, stem=stem, number=number, pages=pages, has_next=bool(following)),
        )
        if not following:
            return
        batch, number = following, number + 1
