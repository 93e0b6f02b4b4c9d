"""`dimflow status`: the latest state per id, computed from provenance rows of several runs."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

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


def test_a_rejected_row_is_shown_for_review_but_is_not_the_current_image():
    rows = [
        row("r1", "a", "ok", 1, output_uri="out/images/a/k1.png", render_key="k1"),
        row("r2", "a", "rejected", 5, output_uri="out/images/a/k2.png", render_key="k2", judge_overall=0.2),
        row("r2", "b", "rejected", 5, output_uri="out/images/b/k3.png", render_key="k3"),
        row("r2", "c", "failed", 5, error_stage="paint", error="boom"),
    ]
    latest = {
        r["id"]: r for r in latest_per_id(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA)).to_pylist()
    }
    a, b = latest["a"], latest["b"]
    assert (a["status"], a["latest_output_uri"]) == ("rejected", "out/images/a/k2.png")
    assert (a["current_output_uri"], a["current_run_id"]) == ("out/images/a/k1.png", "r1")  # the ok one
    assert (b["status"], b["latest_output_uri"], b["current_output_uri"]) == (
        "rejected",
        "out/images/b/k3.png",
        None,
    )
    assert latest["c"]["latest_output_uri"] is None


def test_cli_lists_rejected_ids_with_the_image_to_review(tmp_path, capsys):
    import pyarrow.parquet as pq

    from pipeline import cli

    rows = [
        row("r1", "a", "ok", 1, output_uri="out/images/a/k1.png"),
        row("r2", "a", "rejected", 5, output_uri="out/images/a/k2.png"),
        row("r2", "b", "ok", 5, output_uri="out/images/b/k3.png"),
        row("r2", "c", "failed", 5, error_stage="paint", error="boom"),
    ]
    folder = tmp_path / "provenance" / "run=r2"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA), folder / "part-00000-of-00001.parquet"
    )
    assert cli.main(["status", str(tmp_path), "--status", "rejected"]) == 0
    err = capsys.readouterr().err
    assert "1 rejected" in err and "1 ok" in err and "1 failed" in err and "2 have a current image" in err
    assert "to review: out/images/a/k2.png" in err
    assert "out/images/b/k3.png" not in err and "boom" not in err  # only the rejected ids are listed
    with pytest.raises(SystemExit):
        cli.main(["status", str(tmp_path), "--status", "unknown"])
