"""`dimflow report --html`: one self-contained page (images and plots embedded as data URIs).

Summary figures, the painters' weights licenses (rows per license), three plots (latency histogram,
throughput over time, failures by stage), the judge's figures when the run had a judge (an inline SVG
histogram of ``judge_overall``, mean scores per criterion and category, paints per row, the rejected rows),
a contact sheet of before/after thumbnails with instruction, blueprint and scores (one page of
``max_pairs`` ok and rejected rows, by id or worst score first; a masked row's cards carry its mask's outline
and locked figures, pipeline/report_mask.py), and every failed row with its stage and error.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.eval import NO_CATEGORY
from pipeline.report import RunReport, license_line
from pipeline.report_mask import MaskOutline, mask_outline, mask_text
from transforms.judge.scores import CRITERIA

THUMB_PX = 192
MAX_FAILED_LISTED = 2000

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.figures td:nth-child(2){text-align:right}.plots img{max-width:32%;margin-right:1%}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
.pair{border:1px solid #ccc;border-radius:6px;padding:8px}.pair img{width:192px;height:auto;margin-right:6px}
.none{display:inline-block;width:192px;height:120px;background:#eef;color:#557;font-size:12px;text-align:center}
.meta{font-size:12px;margin-top:6px}details{font-size:12px}.failed td{background:#fff4f2}
.scores{font-size:12px;margin-top:4px;color:#334}.rejected{border-color:#c0504d;background:#fff8f6}
.badge{background:#c0504d;color:#fff;border-radius:3px;padding:0 4px;font-size:11px}
.masked{position:relative;display:inline-block;margin-right:6px}.masked img{margin-right:0}
.pair img.outline{position:absolute;left:0;top:0;height:100%;image-rendering:pixelated;pointer-events:none}
.mask{font-size:12px;margin-top:4px;color:#334}.mask .uri{color:#778}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(uri: str | None) -> str | None:
    """A small JPEG data URI of the image at ``uri`` (None when it cannot be read: say so, do not fake)."""
    if not uri:
        return None
    from PIL import Image, ImageOps

    try:
        with FileSystems.open(uri) as handle:
            image = Image.open(io.BytesIO(handle.read()))
            image = ImageOps.exif_transpose(image).convert("RGB")
    except Exception:
        return None
    image.thumbnail((THUMB_PX, THUMB_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _outlined(image_html: str, mask: MaskOutline | None) -> str:
    """A thumbnail with the mask's outline laid over it (the thumbnail alone without a mask or an edge)."""
    if mask is None or mask.overlay is None:
        return image_html
    return f"<span class='masked'>{image_html}<img class='outline' alt='mask outline' src='{mask.overlay}'></span>"


def _plot(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2), dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return _data_uri(buffer.getvalue(), "image/png")


def plots(rows: list[dict[str, Any]], report: RunReport) -> list[tuple[str, str]]:
    """(title, data URI) of the three plots."""

    def latency(ax) -> None:
        for column, label in (("design_s", "design"), ("paint_s", "paint")):
            values = [
                r[column]
                for r in rows
                if r[column] is not None and (column != "design_s" or r["designer_attempts"])
            ]
            if values:
                ax.hist(values, bins=30, alpha=0.6, label=f"{label} (n={len(values)})")
        ax.set_xlabel("seconds per row")
        ax.set_ylabel("rows")
        ax.set_title("latency")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()

    def throughput(ax) -> None:
        times = sorted(r["finished_at"] for r in rows if r["finished_at"] is not None)
        if times:
            start = times[0]
            ax.plot([(t - start).total_seconds() for t in times], range(1, len(times) + 1))
        ax.set_xlabel("seconds since the first row finished")
        ax.set_ylabel("rows finished")
        ax.set_title("throughput over time")

    def failures(ax) -> None:
        stages = list(report.failures_by_stage)
        ax.bar(stages or ["none"], [report.failures_by_stage[s] for s in stages] or [0], color="#c0504d")
        ax.set_ylabel("failed rows")
        ax.set_title("failures by stage")

    return [("latency", _plot(latency)), ("throughput", _plot(throughput)), ("failures", _plot(failures))]


def _figures(report: RunReport) -> list[tuple[str, str]]:
    def num(value: Any, fmt: str = "{:,.1f}") -> str:
        return "n/a" if value is None else fmt.format(value)

    previous = report.previous or {}
    lines = [
        ("rows", f"{report.rows:,}"),
        *((status, f"{n:,}") for status, n in report.by_status.items()),
        ("wall time", num(report.wall_s, "{:,.1f} s")),
        ("rows / hour", num(report.rows_per_hour)),
        (
            "design p50 / p90 / p99",
            " / ".join(num(report.latency_s["design"][k], "{:.2f} s") for k in ("p50", "p90", "p99")),
        ),
        (
            "paint p50 / p90 / p99",
            " / ".join(num(report.latency_s["paint"][k], "{:.2f} s") for k in ("p50", "p90", "p99")),
        ),
        ("designer tokens in / out", f"{report.tokens_in:,} / {report.tokens_out:,}"),
        (
            "estimated cost",
            num(report.cost, "${:,.4f}") if report.cost is not None else "n/a (no price in the spec)",
        ),
        ("retried rows / retries", f"{report.retried_rows:,} / {report.retries:,}"),
    ]
    if previous:
        lines.append(
            (
                f"previous run {previous['run_id']}",
                f"{previous['rows']:,} rows, {previous['by_status']['ok']:,} ok, {previous['by_status']['failed']:,} failed, "
                f"{num(previous['rows_per_hour'])} rows/h",
            )
        )
    return lines


SVG_W, SVG_H, SVG_PAD = 440, 200, 28


def histogram_svg(bins: list[dict[str, Any]]) -> str:
    """An inline SVG bar chart of rows per ``judge_overall`` bin (no plotting library, nothing fetched)."""
    most = max((b["rows"] for b in bins), default=0) or 1
    width = (SVG_W - 2 * SVG_PAD) / len(bins)
    height = SVG_H - 2 * SVG_PAD
    parts = [
        f"<svg class='histogram' xmlns='http://www.w3.org/2000/svg' width='{SVG_W}' height='{SVG_H}' "
        f"role='img' aria-label='judge_overall distribution'>",
        f"<line x1='{SVG_PAD}' y1='{SVG_H - SVG_PAD}' x2='{SVG_W - SVG_PAD}' y2='{SVG_H - SVG_PAD}' stroke='#555'/>",
    ]
    for i, b in enumerate(bins):
        bar = height * b["rows"] / most
        x = SVG_PAD + i * width
        parts.append(
            f"<rect class='bin' data-rows='{b['rows']}' x='{x + 2:.1f}' y='{SVG_H - SVG_PAD - bar:.1f}' "
            f"width='{width - 4:.1f}' height='{bar:.1f}' fill='#4f81bd'><title>{b['from']:.1f}-{b['to']:.1f}: "
            f"{b['rows']:,} rows</title></rect>"
        )
        if b["rows"]:
            parts.append(
                f"<text x='{x + width / 2:.1f}' y='{SVG_H - SVG_PAD - bar - 3:.1f}' font-size='10' "
                f"text-anchor='middle'>{b['rows']:,}</text>"
            )
        parts.append(
            f"<text x='{x:.1f}' y='{SVG_H - SVG_PAD + 12}' font-size='10' text-anchor='middle'>{b['from']:.1f}</text>"
        )
    parts.append(
        f"<text x='{SVG_W - SVG_PAD:.1f}' y='{SVG_H - SVG_PAD + 12}' font-size='10' text-anchor='middle'>1.0</text>"
        f"<text x='{SVG_W / 2:.0f}' y='{SVG_H - 4}' font-size='11' text-anchor='middle'>judge_overall</text></svg>"
    )
    return "".join(parts)


def _mean(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def judge_section(judge: dict[str, Any]) -> list[str]:
    """The judge's figures: summary, histogram, means per criterion and category, paints, rejected ids."""
    esc = html.escape
    cost = "n/a (no price in the spec)" if judge["cost"] is None else f"${judge['cost']:,.4f}"
    paints = ", ".join(f"{n}: {rows:,}" for n, rows in judge["paints_per_row"].items()) or "-"
    figures = [
        ("judge", ", ".join(judge["judges"]) or "-"),
        ("rows judged", f"{judge['judged_rows']:,}"),
        ("judge errors", f"{judge['judge_errors']:,}"),
        ("judge calls", f"{judge['judge_calls']:,}"),
        ("judge tokens in / out", f"{judge['tokens_in']:,} / {judge['tokens_out']:,}"),
        ("judge estimated cost", cost),
        ("rows per number of paints", paints),
        ("rejected rows", f"{judge['rejected_rows']:,}"),
    ]
    parts = [
        "<h2>Judge</h2><table class='figures judge'>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in figures),
        "</table>",
        histogram_svg(judge["histogram"]),
        "<table class='means'><tr><th>category</th><th>judged / rows</th>"
        + "".join(f"<th>{esc(name.replace('_', ' '))}</th>" for name in CRITERIA)
        + "<th>overall</th></tr>",
    ]
    for line in judge["by_category"]:
        parts.append(
            f"<tr><td>{esc(line['category'] or NO_CATEGORY)}</td><td>{line['judged']:,} / {line['rows']:,}</td>"
            + "".join(f"<td>{_mean(line[name])}</td>" for name in CRITERIA)
            + f"<td>{_mean(line['judge_overall'], 3)}</td></tr>"
        )
    means = judge["means"]
    parts.append(
        f"<tr><td><b>all rows</b></td><td>{judge['judged_rows']:,}</td>"
        + "".join(f"<td>{_mean(means[name])}</td>" for name in CRITERIA)
        + f"<td>{_mean(means['judge_overall'], 3)}</td></tr></table>"
    )
    if judge["rejected_rows"]:
        shown = judge["rejected_ids"]
        more = judge["rejected_rows"] - len(shown)
        parts.append(
            f"<p class='rejected-ids'>Rejected rows to review ({judge['rejected_rows']:,}): "
            + esc(", ".join(shown))
            + (f" … and {more:,} more (dimflow status OUTPUT --status rejected)" if more else "")
            + "</p>"
        )
    return parts


def card_scores(row: dict[str, Any]) -> str:
    """A card's scores line: each criterion, the overall, the judge's reason or error; empty when unjudged."""
    esc = html.escape
    if row.get("judge_overall") is None:
        if row.get("judge_error"):
            return f"<div class='scores'>judge error: {esc(row['judge_error'])}</div>"
        return ""
    try:
        scores = json.loads(row.get("judge_scores") or "{}")
    except ValueError:
        scores = {}
    shown = " · ".join(
        f"{name.replace('_', ' ')} {esc(str(scores[name]))}" for name in CRITERIA if name in scores
    )
    reason = f"<br><i>{esc(row['judge_reason'])}</i>" if row.get("judge_reason") else ""
    return (
        f"<div class='scores' data-overall='{row['judge_overall']:.6f}'>{shown} · <b>overall "
        f"{row['judge_overall']:.3f}</b>{reason}</div>"
    )


def card_order(rows: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """The contact sheet's rows: by id, or by ``judge_overall`` worst first with unjudged rows last."""
    if sort == "score":
        return sorted(
            rows, key=lambda r: (r.get("judge_overall") is None, r.get("judge_overall") or 0.0, r["id"])
        )
    if sort != "id":
        raise ValueError(f"sort must be 'id' or 'score', got {sort!r}")
    return sorted(rows, key=lambda r: r["id"])


def render_html(
    report: RunReport, run_table: pa.Table, *, max_pairs: int = 48, page: int = 1, sort: str = "id"
) -> str:
    rows = run_table.to_pylist()
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>dimflow report {esc(report.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>dimflow run {esc(report.run_id)}</h1>",
        "<h2>Summary</h2><table class='figures'>",
        *(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _figures(report)),
        "</table>",
    ]
    if report.painter_licenses:
        parts.append(
            "<h2>Painter licenses</h2><table class='licenses'><tr><th>license</th><th>use</th><th>rows</th></tr>"
        )
        for entry in report.painter_licenses:
            name, use = license_line(entry)
            parts.append(f"<tr><td>{esc(name)}</td><td>{esc(use)}</td><td>{entry['rows']:,}</td></tr>")
        parts.append("</table>")
    if report.failures_by_kind:
        parts.append(
            "<h2>Failures by kind</h2><table><tr><th>stage</th><th>error kind</th><th>rows</th></tr>"
        )
        parts += [
            f"<tr><td>{esc(k['stage'])}</td><td>{esc(k['kind'])}</td><td>{k['rows']:,}</td></tr>"
            for k in report.failures_by_kind
        ]
        parts.append("</table>")
    parts.append("<h2>Plots</h2><div class='plots'>")
    parts += [f"<img class='plot' alt='{esc(title)}' src='{uri}'>" for title, uri in plots(rows, report)]
    parts.append("</div>")
    if report.judge:
        parts += judge_section(report.judge)

    ok = card_order([r for r in rows if r["status"] in ("ok", "rejected")], sort)
    first = (page - 1) * max_pairs
    shown = ok[first : first + max_pairs]
    order = "worst judge_overall first, unjudged last" if sort == "score" else "by id"
    parts.append(
        f"<h2>Before / after</h2><p>ok and rejected rows {first + 1 if shown else 0}–{first + len(shown)} of "
        f"{len(ok):,}, {order}{' (more with --page)' if first + len(shown) < len(ok) else ''}</p><div class='sheet'>"
    )
    for row in shown:
        before = thumbnail(row["source_uri"])
        after = thumbnail(row["output_uri"])
        mask = mask_outline(row["mask_uri"], report.spec, THUMB_PX) if row.get("mask_uri") else None
        if row["source_uri"] is None:
            before_html = "<span class='none'>text-to-image<br>(no source)</span>"
        elif before is None:
            before_html = "<span class='none'>source unreadable now</span>"
        else:
            before_html = _outlined(
                f"<img class='before' alt='before {esc(row['id'])}' src='{before}'>", mask
            )
        after_html = (
            _outlined(f"<img class='after' alt='after {esc(row['id'])}' src='{after}'>", mask)
            if after
            else "<span class='none'>output unreadable now</span>"
        )
        rejected = row["status"] == "rejected"
        badge = " <span class='badge'>rejected</span>" if rejected else ""
        category = f" <i>[{esc(row['category'])}]</i>" if row.get("category") else ""
        parts.append(
            f"<div class='pair{' rejected' if rejected else ''}' data-id='{esc(row['id'])}'>{before_html}{after_html}"
            f"<div class='meta'><b>{esc(row['id'])}</b>{badge}{category}: {esc(row['instruction'] or '')}</div>"
            f"{mask_text(row, mask) if mask else ''}{card_scores(row)}"
            f"<details><summary>blueprint ({esc(row['designer'] or '')})</summary>{esc(row['blueprint'] or '')}</details></div>"
        )
    parts.append("</div>")

    failed = [r for r in rows if r["status"] == "failed"]
    parts.append(
        f"<h2>Failed rows ({len(failed):,})</h2><table class='failed'><tr><th>id</th><th>stage</th><th>error</th></tr>"
    )
    for row in failed[:MAX_FAILED_LISTED]:
        parts.append(
            f"<tr class='failed-row'><td>{esc(row['id'] or '(unreadable row)')}</td><td>{esc(row['error_stage'] or '')}</td>"
            f"<td>{esc(row['error'] or '')}</td></tr>"
        )
    parts.append("</table>")
    if len(failed) > MAX_FAILED_LISTED:
        parts.append(f"<p>… and {len(failed) - MAX_FAILED_LISTED:,} more in the provenance.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
