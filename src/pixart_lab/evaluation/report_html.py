"""The comparison report as one self-contained HTML file: PNGs inlined, tables, the headline ratio."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45 }
table { border-collapse: collapse; margin: 1em 0 } td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right }
th { background: #f3f3f3 } td:first-child, th:first-child { text-align: left }
.headline { font-size: 1.25em; background: #eef5ff; padding: 0.8em 1em; border-left: 4px solid #1f77b4 }
figure { margin: 1em 0 } figcaption { color: #555; font-size: 0.9em } img { max-width: 100% }
.grids { display: flex; flex-wrap: wrap; gap: 1em } .grids figure { flex: 1 1 300px }
"""


def fmt(value: Any) -> str:
    """Numbers to a few significant digits, None to an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """An HTML table of ``rows`` with ``columns`` (key -> header)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(k))}</td>" for k in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(path: str | Path, caption: str) -> str:
    """A figure with the PNG inlined as a data URI (the HTML file stands alone)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def render(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete page from (heading, HTML body) sections."""
    parts = "".join(f"<h2>{html.escape(h)}</h2>{body}" if h else body for h, body in sections)
    return f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{parts}</body></html>'


FINAL_COLUMNS = {
    "model": "model", "parameters": "parameters", "flops_per_sample": "FLOPs / sample", "training_flops": "training FLOPs",
    "a100_days": "A100-days (equiv.)", "usd": "$ (this device)", "emissions_kg_co2": "kg CO2eq", "size": "px",
    "fid": "FID", "fid_floor": "FID floor", "clip_score": "CLIP score", "compositional": "compositional",
}  # fmt: skip
PAPER_COLUMNS = {"model": "model", "a100_days": "A100-days", "usd": "$", "fid": "FID", "note": ""}


def comparison_page(title: str, comparison, figure: str | Path, grids: Mapping[str, str | Path], notes: Mapping[str, str]) -> str:
    """The report page of a :class:`~pixart_lab.evaluation.report.Comparison`."""
    first, *others = comparison.sentences()
    paper = comparison.paper
    paper_rows = [
        {"model": f"{name} (paper)", "a100_days": p["a100_days"], "usd": p["usd"], "fid": p["fid_30k_coco"], "note": p["note"]}
        for name, p in (("PixArt-alpha", paper["pixart_alpha"]), ("SD 1.5", paper["sd_1_5"]))
    ] + [
        {"model": r["model"], "a100_days": r["a100_days"], "usd": r["usd"], "fid": r["fid"], "note": "this run (embedded corpus)"}
        for r in (comparison.pixart_total, comparison.baseline_total)
    ]  # fmt: skip
    intro = (f'<p class="headline">{html.escape(first)}</p><p>The paper: {100 * comparison.paper_ratio():.1f}% '
             f'({fmt(paper["pixart_alpha"]["a100_days"])} vs {fmt(paper["sd_1_5"]["a100_days"])} A100-days). '
             f'{html.escape(" ".join(others))}</p>')  # fmt: skip
    samples = "".join(image(path, f"{label}: fixed prompts, same seed") for label, path in grids.items())
    return render(title, [
        ("", intro),
        ("Quality against training compute", image(figure, "periodic evaluations of the EMA weights; dotted lines: ends of PixArt's stages")),
        ("Final evaluation", table(comparison.final + ([comparison.ceiling] if comparison.ceiling else []), FINAL_COLUMNS) + f"<p>{html.escape(notes['final'])}</p>"),
        ("Cost beside the paper's", table(paper_rows, PAPER_COLUMNS) + f"<p>{html.escape(notes['paper'])}</p>"),
        ("Samples", f'<div class="grids">{samples}</div>'),
    ])  # fmt: skip
