"""Provenance rows: successes and dead letters flatten into the same schema."""

from __future__ import annotations

import json

import pyarrow as pa

from transforms.provenance import RunContext, provenance_row, versions_json
from transforms.records import EditRecord, Failure, ManifestRow, RowRef
from transforms.schema import PROVENANCE_SCHEMA

CONTEXT = RunContext(run_id="r1", versions_json=versions_json())


def test_ok_row_carries_every_stage():
    row = ManifestRow("a", "white bg", "/data/a.png", 5, '{"sku": 1}', RowRef("/m.jsonl", 1))
    record = EditRecord(
        row,
        source_sha256="s",
        source_width=10,
        source_height=8,
        blueprint="bp",
        designer="none",
        design_key="dk",
        designer_attempts=0,
        seed=5,
        render_key="rk",
        paint={"painter": "dim", "width": 64},
        paint_s=0.5,
        output_uri="/o.png",
        output_sha256="h",
        started_at=1.0,
    )
    out = provenance_row(record, CONTEXT, now=2.0)
    assert out["status"] == "ok" and out["error"] is None and out["mode"] == "edit"
    assert (out["painter"], out["width"], out["seed"], out["render_key"]) == ("dim", 64, 5, "rk")
    assert out["started_at"].timestamp() == 1.0 and out["finished_at"].timestamp() == 2.0
    assert json.loads(out["versions"])["apache-beam"] == "2.77.0"
    pa.Table.from_pylist([out], schema=PROVENANCE_SCHEMA)  # fits the Arrow schema


def test_failures_before_and_after_validation():
    early = Failure(None, "validate", "m.jsonl row 3: line is not valid JSON", ref=RowRef("m.jsonl", 3))
    row = ManifestRow("b", "x", None, None, None, RowRef("m.jsonl", 4))
    late = Failure(EditRecord(row), "paint", "RuntimeError: out of memory")
    rows = [provenance_row(item, CONTEXT, now=3.0) for item in (early, late)]
    assert [(r["id"], r["status"], r["error_stage"]) for r in rows] == [
        (None, "failed", "validate"),
        ("b", "failed", "paint"),
    ]
    assert rows[1]["mode"] == "t2i" and rows[1]["output_uri"] is None
    table = pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA)
    assert table.num_rows == 2


def test_painter_license_follows_the_rows_mode_whatever_became_of_it():
    """Every row whose mode is known carries the license its mode is painted under (ok, skipped, failed at any
    stage after validation); rows that never became a manifest row, and modes the job has no checkpoint
    for, carry none."""
    context = RunContext(run_id="r1", versions_json="{}", painter_licenses={"edit": "dim-non-commercial"})
    edit = ManifestRow("e", "white bg", "/data/e.png", None, None, RowRef("m.jsonl", 1))
    t2i = ManifestRow("t", "a chair", None, None, None, RowRef("m.jsonl", 2))
    items = [
        EditRecord(edit, output_uri="/o.png"),  # ok
        EditRecord(edit, skipped=True),  # skipped: painted by an earlier run under the same render key
        Failure(EditRecord(edit), "fetch", "FileNotFoundError: /data/e.png not found"),
        Failure(EditRecord(edit), "paint", "RuntimeError: out of memory"),
        Failure(EditRecord(t2i), "validate", "source: missing, and painter.t2i_checkpoint is not set"),
        Failure(None, "read", "m.jsonl row 3: line is not valid JSON", ref=RowRef("m.jsonl", 3)),
    ]
    rows = [provenance_row(item, context, now=3.0) for item in items]
    assert [(r["status"], r["painter_license"]) for r in rows] == [
        ("ok", "dim-non-commercial"),
        ("skipped", "dim-non-commercial"),
        ("failed", "dim-non-commercial"),
        ("failed", "dim-non-commercial"),
        ("failed", None),
        ("failed", None),
    ]
    assert pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA).column("painter_license").null_count == 2
