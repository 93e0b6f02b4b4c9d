"""Incremental skipping with a judge (by quality key) and the ``rejected`` status (never done), answered the
same by the local history index (embedded runner) and by the in-pipeline join (distributed runners)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms import images
from transforms.history import build_history_index
from transforms.incremental import SkipRendered
from transforms.records import EditRecord, ManifestRow, RowRef
from transforms.schema import PROVENANCE_SCHEMA

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
KEY = {name: name * 16 for name in "abcdef"}  # render keys (16+ hex digits)


def _table(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [{**dict.fromkeys(PROVENANCE_SCHEMA.names), **row} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=PROVENANCE_SCHEMA), path)
    return str(path)


def _record(row_id: str, render_key: str, quality_key: str | None = None) -> EditRecord:
    row = ManifestRow(id=row_id, instruction="x", source="/s.png", seed=1, metadata=None, ref=RowRef("m", 1))
    return EditRecord(row, seed=1, render_key=render_key, design_key=f"dk-{row_id}", quality_key=quality_key)


@pytest.fixture
def history(tmp_path):
    out = tmp_path / "out"

    def image(row_id: str, key: str, exists: bool = True) -> str:
        uri = images.output_uri(str(out), row_id, key, "png")
        if exists:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(f"{row_id} {key}".encode())
        return uri

    def row(row_id, status, key, quality, day, *, uri=None, **more):
        return {
            "run_id": f"r{day}",
            "id": row_id,
            "status": status,
            "render_key": key,
            "output_uri": uri or image(row_id, key),
            "output_sha256": f"sha-{row_id}-{day}",
            "quality_key": quality,
            "seed": 100 + day,
            "finished_at": T0 + dt.timedelta(days=day),
            "judge": "openai:judge",
            "judge_scores": json.dumps({"instruction_following": 9.0}),
            "judge_overall": 0.9,
            "judge_reason": f"fine on day {day}",
            **more,
        }

    rows = [
        # judged: ok with a repainted (second) image kept -> skipped, carrying that image, key and seed
        row("ok-repainted", "ok", KEY["b"], "q-ok", 1),
        # judged: rejected, then (a later run) ok -> the newest, ok, decides
        row("later-ok", "rejected", KEY["c"], "q-later-ok", 1),
        row("later-ok", "ok", KEY["c"], "q-later-ok", 2),
        # judged: ok, then rejected -> not done
        row("later-rejected", "ok", KEY["d"], "q-later-rejected", 1),
        row("later-rejected", "rejected", KEY["d"], "q-later-rejected", 2),
        # judged ok, but its image is gone -> not done
        row("image-gone", "ok", KEY["e"], "q-gone", 1, uri=image("image-gone", KEY["e"], exists=False)),
        # another id's row with the same quality key (same source, instruction, seed): not this row's image
        row("twin", "ok", KEY["f"], "q-twin", 1),
        # without a judge: the newest row of this image is rejected -> not done
        row("plain-rejected", "rejected", KEY["a"], "q-x", 1),
        # without a judge: rejected earlier, skipped later -> done
        row("plain-later-ok", "rejected", KEY["c"], "q-y", 1),
        row("plain-later-ok", "skipped", KEY["c"], None, 3),
    ]
    provenance = [_table(rows, out / "provenance" / "run=r1" / "part-00000-of-00001.parquet")]
    index = build_history_index(str(tmp_path / "history.sqlite"), provenance=provenance, blueprints=[])
    return out, provenance, index


def _outcome(record: EditRecord) -> tuple:
    judging = record.judging
    return (
        record.id,
        record.render_key,
        record.seed,
        record.output_sha256,
        judging.overall if judging else None,
        judging.reason if judging else None,
    )


@pytest.mark.parametrize("use_index", [False, True])
def test_judged_rows_are_skipped_by_quality_key_and_rejected_is_never_done(history, use_index):
    out, provenance, index = history
    records = [
        _record("ok-repainted", KEY["a"], "q-ok"),  # its first paint's key: the kept image is another key
        _record("later-ok", KEY["c"], "q-later-ok"),
        _record("later-rejected", KEY["d"], "q-later-rejected"),
        _record("image-gone", KEY["e"], "q-gone"),
        _record("not-twin", KEY["f"], "q-twin"),
        _record("new", KEY["a"], "q-new"),
    ]
    with beam.Pipeline("FnApiRunner") as pipeline:
        done = (
            pipeline
            | beam.Create(records)
            | SkipRendered(str(out), "png", provenance, index=index if use_index else None, judged=True)
        )
        assert_that(
            done.skipped | "S" >> beam.Map(_outcome),
            equal_to(
                [
                    ("ok-repainted", KEY["b"], 101, "sha-ok-repainted-1", 0.9, "fine on day 1"),
                    ("later-ok", KEY["c"], 102, "sha-later-ok-2", 0.9, "fine on day 2"),
                ]
            ),
            label="skipped",
        )
        assert_that(
            done.todo | "T" >> beam.Map(lambda r: r.id),
            equal_to(["later-rejected", "image-gone", "not-twin", "new"]),
            label="todo",
        )


@pytest.mark.parametrize("use_index", [False, True])
def test_without_a_judge_an_image_last_rejected_is_not_skipped(history, use_index):
    out, provenance, index = history
    records = [_record("plain-rejected", KEY["a"]), _record("plain-later-ok", KEY["c"])]
    with beam.Pipeline("FnApiRunner") as pipeline:
        done = (
            pipeline
            | beam.Create(records)
            | SkipRendered(str(out), "png", provenance, index=index if use_index else None)
        )
        assert_that(
            done.skipped | "S" >> beam.Map(lambda r: (r.id, r.output_sha256, r.judging)),
            equal_to([("plain-later-ok", "sha-plain-later-ok-3", None)]),
            label="skipped",
        )
        assert_that(done.todo | "T" >> beam.Map(lambda r: r.id), equal_to(["plain-rejected"]), label="todo")
