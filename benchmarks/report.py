"""How long `dimflow report` takes on a large provenance table (default: 10,000 rows, two runs).

Synthesizes provenance in the real schema (ok / failed / skipped rows, design and paint latencies,
tokens, retries, varied errors) plus small images for the contact sheet, then times, in one process:
reading the provenance alone (the baseline: the least any report must do), the report's figures,
the text/JSON output, and the HTML page. Prints each and the ratio to the baseline.

    .venv/bin/python benchmarks/report.py [--rows 10000]

Last line: ``RESULT report_s=<figures> html_s=<html page> read_s=<baseline> ratio=<report÷read> rows=<n>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.report import build_report  # noqa: E402
from pipeline.report_html import render_html  # noqa: E402
from pipeline.run import read_provenance  # noqa: E402
from transforms.schema import PROVENANCE_SCHEMA  # noqa: E402

ERRORS = [
    ("fetch", "source not found: gs://catalog/images/{i}.jpg"),
    (
        "validate",
        "gs://catalog/m.jsonl row {i}, field 'instruction': empty (blank after stripping whitespace)",
    ),
    ("design", "HTTP 429 rate limited after 5 attempts (last: Retry-After 2 s)"),
    ("paint", "RuntimeError: CUDA out of memory (row sku-{i})"),
]


def synthesize(output: Path, rows: int, images: int) -> None:
    rng = random.Random(0)
    image_dir = output / "images"
    image_dir.mkdir(parents=True)
    thumbs = []
    for i in range(images):
        path = image_dir / f"{i}.png"
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), (i * 5 % 256, 90, 160)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        thumbs.append(str(path))
    start = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
    for run_index, run_id in enumerate(("20261123T020000Z-aaaaaa", "20261124T020000Z-bbbbbb")):
        records = []
        for i in range(rows // 2):
            status = rng.choices(["ok", "failed", "skipped"], [0.85, 0.05, 0.10])[0]
            t0 = start + dt.timedelta(days=run_index, seconds=i * 0.6)
            row = {name: None for name in PROVENANCE_SCHEMA.names}
            row.update(
                run_id=run_id,
                id=f"sku-{i:06d}",
                status=status,
                mode="edit",
                instruction="make the background white",
                started_at=t0,
                finished_at=t0 + dt.timedelta(seconds=rng.uniform(5, 40)),
                source_uri=thumbs[i % images],
            )
            if status == "failed":
                stage, message = rng.choice(ERRORS)
                row.update(error_stage=stage, error=message.format(i=i))
            else:
                attempts = rng.choices([1, 2, 3], [0.9, 0.08, 0.02])[0]
                row.update(
                    designer="openai:gpt-4o",
                    designer_attempts=attempts if status == "ok" else 0,
                    tokens_in=1100 if status == "ok" else 0,
                    tokens_out=rng.randint(200, 400) if status == "ok" else 0,
                    design_s=rng.lognormvariate(1.0, 0.4) if status == "ok" else 0.0,
                    blueprint="1. Edit instruction: ... 5. Edited image: ...",
                    paint_s=rng.lognormvariate(-0.5, 0.2) if status == "ok" else None,
                    output_uri=thumbs[(i + 1) % images],
                    render_key=f"{i:064x}",
                )
            records.append(row)
        folder = output / "provenance" / f"run={run_id}"
        folder.mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(records, schema=PROVENANCE_SCHEMA), folder / "part-00000-of-00001.parquet"
        )
        (output / "runs").mkdir(exist_ok=True)
        spec = {
            "prices": {"openai:gpt-4o": {"input_per_million_tokens": 2.5, "output_per_million_tokens": 10.0}}
        }
        record = {
            "run_id": run_id,
            "spec": spec,
            "counts": {},
            "started_at": start.isoformat(),
            "finished_at": start.isoformat(),
        }
        (output / "runs" / f"{run_id}.json").write_text(json.dumps(record))


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3, help="take the median of this many timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "out"
        synthesize(output, args.rows, args.images)
        reads, reports, pages = [], [], []
        for _ in range(args.repeat):  # interleaved, medians: the machine is noisy
            _table, read_s = timed(lambda: read_provenance(str(output)))
            (report, run_table), report_s = timed(lambda: build_report(str(output)))
            page, html_s = timed(lambda report=report, run_table=run_table: render_html(report, run_table))
            reads.append(read_s)
            reports.append(report_s)
            pages.append(html_s)
        median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        read_s, report_s, html_s = median(reads), median(reports), median(pages)
        print(
            f"provenance rows: {args.rows:,} in 2 runs; report of run {report.run_id} ({report.rows:,} rows)"
        )
        print(f"read provenance (baseline): {read_s:.3f} s")
        print(
            f"report figures (duckdb, incl. the read): {report_s:.3f} s = {report_s / read_s:.1f}x the read"
        )
        print(f"html page ({len(page) / 1e6:.1f} MB, {args.images} pairs, 3 plots): {html_s:.3f} s")
        print(
            f"RESULT report_s={report_s:.3f} html_s={html_s:.3f} read_s={read_s:.3f} "
            f"ratio={report_s / read_s:.2f} rows={args.rows}"
        )


if __name__ == "__main__":
    main()
