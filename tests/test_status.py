"""`dimflow status`: the latest state per id, computed from provenance rows of several runs."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pipeline.status import latest_per_id
from transforms.schema import PROVENANCE_SCHEMA


def row(run: str, row_id: str | None, status: str, minute: int, **extra) -> dict:
    base = {name: None for name in PROVENANCE_SCHEMA.names}
    base.update(
        run_id=run,
        id=row_id,
        status=status,
        finished_at=dt.datetime(2026, 11, 24, 12, minute, tzinfo=dt.UTC),
        **extra,
    )
    return base


def test_latest_state_and_current_image():
    rows = [
        row("r1", "a", "ok", 1, output_uri="out/images/a/k1.png", render_key="k1" * 8),
        row("r1", "a", "failed", 2, error_stage="validate", error="duplicate id 'a'"),  # a later duplicate
        row("r1", "b", "failed", 1, error_stage="fetch", error="not found"),
        row("r1", None, "failed", 1, error_stage="read", error="not JSON"),
        row("r2", "a", "failed", 5, error_stage="paint", error="CUDA out of memory"),
        row("r2", "b", "ok", 5, output_uri="out/images/b/k2.png"),
        row("r3", "b", "skipped", 9, output_uri="out/images/b/k2.png"),
    ]
    latest = {
        r["id"]: r for r in latest_per_id(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA)).to_pylist()
    }
    assert set(latest) == {"a", "b"}
    assert (latest["a"]["status"], latest["a"]["error_stage"], latest["a"]["run_id"]) == (
        "failed",
        "paint",
        "r2",
    )
    assert (
        latest["a"]["current_output_uri"] == "out/images/a/k1.png" and latest["a"]["current_run_id"] == "r1"
    )
    assert (latest["b"]["status"], latest["b"]["run_id"], latest["b"]["current_run_id"]) == (
        "skipped",
        "r3",
        "r3",
    )


def test_a_duplicate_does_not_hide_the_processed_row():
    rows = [
        row("r1", "a", "failed", 3, error_stage="validate", error="duplicate id 'a'"),
        row("r1", "a", "ok", 1, output_uri="out/images/a/k.png"),
    ]
    (latest,) = latest_per_id(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA)).to_pylist()
    assert latest["status"] == "ok" and latest["current_output_uri"] == "out/images/a/k.png"
