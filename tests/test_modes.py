"""Routing rows by mode: edits need painter.checkpoint, rows without a source need painter.t2i_checkpoint."""

from __future__ import annotations

import apache_beam as beam

from pipeline.edit import FAILED, check_mode, row_mode
from transforms.records import STAGE_VALIDATE, EditRecord, ManifestRow, RowRef


def row(row_id: str, source: str | None) -> ManifestRow:
    return ManifestRow(
        id=row_id, instruction="x", source=source, seed=None, metadata=None, ref=RowRef("m.jsonl", 4)
    )


def test_mode_follows_the_source():
    assert row_mode(row("a", "a.png")) == "edit"
    assert row_mode(row("b", None)) == "t2i"


def test_rows_without_a_checkpoint_for_their_mode_fail_naming_row_field_and_key():
    (t2i_failure,) = check_mode(row("b", None), {"edit": "tiny"})
    assert isinstance(t2i_failure, beam.pvalue.TaggedOutput) and t2i_failure.tag == FAILED
    failure = t2i_failure.value
    assert failure.stage == STAGE_VALIDATE and failure.record.id == "b"
    assert "m.jsonl row 4, field 'source'" in failure.error and "painter.t2i_checkpoint" in failure.error

    (edit_failure,) = check_mode(row("a", "a.png"), {"t2i": "tiny"})
    assert edit_failure.tag == FAILED and "painter.checkpoint is null" in edit_failure.value.error


def test_rows_with_a_checkpoint_pass():
    (record,) = check_mode(row("a", "a.png"), {"edit": "tiny", "t2i": "tiny"})
    assert isinstance(record, EditRecord) and record.id == "a"
