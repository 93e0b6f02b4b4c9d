"""`dimflow report --html`: one self-contained page (images and plots embedded as data URIs).

Summary figures, the painters' weights licenses (rows per license), three plots (latency histogram, throughput over time, failures by stage), a contact
sheet of before/after thumbnails with instruction and blueprint (one page of ``max_pairs`` ok rows),
and every failed row with its stage and error.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.report import RunReport, license_line

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


def render_html(report: RunReport, run_table: pa.Table, *, max_pairs: int = 48, page: int = 1) -> str:
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

    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["id"])
    first = (page - 1) * max_pairs
    shown = ok[first : first + max_pairs]
    parts.append(
        f"<h2>Before / after</h2><p>ok rows {first + 1 if shown else 0}–{first + len(shown)} of {len(ok):,}"
        f"{' (more with --page)' if first + len(shown) < len(ok) else ''}</p><div class='sheet'>"
    )
    for row in shown:
        before = thumbnail(row["source_uri"])
        after = thumbnail(row["output_uri"])
        if row["source_uri"] is None:
            before_html = "<span class='none'>text-to-image<br>(no source)</span>"
        elif before is None:
            before_html = "<span class='none'>source unreadable now</span>"
        else:
            before_html = f"<img class='before' alt='before {esc(row['id'])}' src='{before}'>"
        after_html = (
            f"<img class='after' alt='after {esc(row['id'])}' src='{after}'>"
            if after
            else "<span class='none'>output unreadable now</span>"
        )
        parts.append(
            f"<div class='pair' data-id='{esc(row['id'])}'>{before_html}{after_html}"
            f"<div class='meta'><b>{esc(row['id'])}</b>: {esc(row['instruction'] or '')}</div>"
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
