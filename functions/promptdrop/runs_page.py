"""The page of all runs, ``<outputs>/index.html`` (pure): one row per run, newest first, paged.

The rows are kept in one index object beside it (``<outputs>/runs.jsonl``, one JSON object per run, updated
with a read-modify-write on the object's generation), so a run's end rewrites the pages from that object
alone: no run's summary is read. Like the galleries, the pages are self-contained (inline CSS, no script, a
CSP that forbids one), link only relatively (``<run_id>/index.html``) and escape everything that came
from a user (file names, reasons).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final
from urllib.parse import quote

import orjson

from promptdrop.gallery import page_head
from promptdrop.records import Run

INDEX_OBJECT: Final = "runs.jsonl"
FIRST_PAGE: Final = "index.html"
PAGE_SIZE: Final = 200


def page_name(number: int) -> str:
    """Page 1 is ``index.html``; later ones ``runs-N.html`` (all beside the run folders)."""
    return FIRST_PAGE if number == 1 else f"runs-{number}.html"


def row(run: Run) -> dict[str, Any]:
    """What the page shows of one run (and what the index object keeps)."""
    models = sorted({*run.by_model} or {str(c.get("model")) for c in run.model_choices if c.get("model")})
    return {
        "run_id": run.run_id,
        "name": run.source.object or run.source.name,
        "state": run.state.value,
        "lines": run.counts.lines,
        "succeeded": run.counts.succeeded,
        "failed": run.counts.failed,
        "invalid": run.counts.invalid,
        "batch": run.cost.batch,
        "now": run.cost.now,
        "estimate": run.cost.estimate,
        "cached": run.cost.cached,
        "saved_by_cache": run.cost.saved_by_cache,
        "models": models or [run.model],
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "gallery": run.state.terminal,
    }


def parse_index(data: bytes) -> dict[str, dict[str, Any]]:
    """The index object's rows by run id (a line that cannot be read is skipped: the next settle of that
    run writes it again)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("run_id"), str):
            rows[item["run_id"]] = item
    return rows


def upsert(data: bytes, new: Mapping[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    """The index object with ``new`` put in (replacing that run's row), and its rows newest first."""
    rows = parse_index(data)
    rows[str(new["run_id"])] = dict(new)
    ordered = sorted(
        rows.values(), key=lambda r: (float(r.get("created_at") or 0.0), r["run_id"]), reverse=True
    )
    return b"".join(orjson.dumps(r) + b"\n" for r in ordered), ordered


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _money(value: object) -> str:
    return "-" if not isinstance(value, int | float) else f"${value:,.4f}"


def _when(value: object) -> str:
    """The page is static: a UTC time, the same for every reader."""
    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")


_CSS: Final = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#202124;background:#f8f9fa}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #dadce0}
h1{margin:0 0 4px;font-size:20px}
.facts{margin:0;color:#5f6368}
table{border-collapse:collapse;margin:12px 24px;background:#fff;border:1px solid #dadce0}
th,td{padding:6px 10px;border-bottom:1px solid #eceff1;text-align:left;vertical-align:top}
th{background:#f1f3f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.run{font:600 13px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.name{color:#5f6368;word-break:break-all}
.state{display:inline-block;padding:1px 8px;border-radius:10px;background:#e8eaed;font-weight:600}
.state-SUCCEEDED{background:#e6f4ea;color:#1b7f3b}.state-FAILED,.state-CANCELLED{background:#fce8e6;color:#b3261e}
.state-PARTIAL{background:#fef7e0;color:#8a5a00}
nav{display:flex;gap:8px;padding:10px 24px}
nav a{padding:3px 10px;border:1px solid #dadce0;border-radius:14px;background:#fff;color:#1a73e8;text-decoration:none}
footer{padding:8px 24px 24px;color:#5f6368;font-size:12px}
"""


def _row_html(r: Mapping[str, Any]) -> str:
    run_id = str(r.get("run_id"))
    label = f'<span class="run">{_e(run_id)}</span>'
    if r.get("gallery"):
        label = f'<a class="run" href="{_e(quote(run_id, safe=""))}/index.html">{_e(run_id)}</a>'
    state = str(r.get("state") or "")
    cached = int(r.get("cached") or 0)
    saved = f"{cached} ({_money(r.get('saved_by_cache'))})" if cached else "-"
    cost = r.get("batch") if r.get("gallery") else None
    return (
        f'<tr><td>{label}<div class="name">{_e(r.get("name") or "")}</div></td>'
        f'<td><span class="state state-{_e(state)}">{_e(state)}</span></td>'
        f'<td class="num">{_e(r.get("lines", 0))}</td><td class="num">{_e(r.get("succeeded", 0))}</td>'
        f'<td class="num">{_e(r.get("failed", 0))}</td><td class="num">{_e(r.get("invalid", 0))}</td>'
        f'<td class="num">{_e(_money(cost) if r.get("gallery") else "estimate " + _money(r.get("estimate")))}</td>'
        f'<td class="num">{_e(_money(r.get("now")) if r.get("now") else "-")}</td>'
        f'<td class="num">{_e(saved)}</td><td>{_e(", ".join(r.get("models") or []))}</td>'
        f"<td>{_e(_when(r.get('created_at')))}</td><td>{_e(_when(r.get('finished_at')))}</td></tr>"
    )


def render_page(rows: list[Mapping[str, Any]], *, number: int, pages: int, total: int) -> str:
    links = []
    if number > 1:
        links.append(f'<a rel="prev" href="{page_name(number - 1)}">← newer</a>')
    if number < pages:
        links.append(f'<a rel="next" href="{page_name(number + 1)}">older →</a>')
    pager = f"<nav>{''.join(links)}<span>page {number} of {pages}</span></nav>"
    body = "".join(_row_html(r) for r in rows) or '<tr><td colspan="12">No runs yet.</td></tr>'
    return (
        page_head(f"promptdrop runs · page {number}", _CSS)
        + f'<header><h1>promptdrop runs</h1><p class="facts">{total} run(s), newest first</p></header>{pager}'
        "<table><thead><tr><th>run</th><th>state</th><th>lines</th><th>succeeded</th><th>failed</th>"
        "<th>invalid</th><th>batch</th><th>now</th><th>from cache (saved)</th><th>models</th>"
        f"<th>started (UTC)</th><th>ended (UTC)</th></tr></thead><tbody>{body}</tbody></table>{pager}"
        "<footer>promptdrop · this page is rewritten each time a run ends</footer></body></html>\n"
    )


def render_pages(
    rows: Iterable[Mapping[str, Any]], *, total: int, page_size: int = PAGE_SIZE
) -> Iterator[tuple[str, str]]:
    """(page name, HTML) for every page, ``page_size`` runs each; no runs still gives the first page."""
    size = max(1, page_size)
    pages = max(1, -(-total // size))
    source = iter(rows)
    for number in range(1, pages + 1):
        yield (
            page_name(number),
            render_page(list(islice(source, size)), number=number, pages=pages, total=total),
        )
