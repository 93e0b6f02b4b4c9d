"""Row checks that need the job: edits need painter.checkpoint, rows without a source need
painter.t2i_checkpoint, and no source may lie inside the output."""

from __future__ import annotations

import apache_beam as beam

from pipeline.edit import FAILED, check_job_row, row_mode
from transforms.records import STAGE_VALIDATE, EditRecord, ManifestRow, RowRef

OUT = "/jobs/out"


def row(row_id: str, source: str | None) -> ManifestRow:
    return ManifestRow(
        id=row_id, instruction="x", source=source, seed=None, metadata=None, ref=RowRef("m.jsonl", 4)
    )


def test_mode_follows_the_source():
    assert row_mode(row("a", "a.png")) == "edit"
    assert row_mode(row("b", None)) == "t2i"


def test_rows_without_a_checkpoint_for_their_mode_fail_naming_row_field_and_key():
    (t2i_failure,) = check_job_row(row("b", None), {"edit": "tiny"}, OUT)
    assert isinstance(t2i_failure, beam.pvalue.TaggedOutput) and t2i_failure.tag == FAILED
    failure = t2i_failure.value
    assert failure.stage == STAGE_VALIDATE and failure.record.id == "b"
    assert "m.jsonl row 4, field 'source'" in failure.error and "painter.t2i_checkpoint" in failure.error

    (edit_failure,) = check_job_row(row("a", "/src/a.png"), {"t2i": "tiny"}, OUT)
    assert edit_failure.tag == FAILED and "painter.checkpoint is null" in edit_failure.value.error


def test_rows_with_a_checkpoint_pass():
    (record,) = check_job_row(row("a", "/src/a.png"), {"edit": "tiny", "t2i": "tiny"}, OUT)
    assert isinstance(record, EditRecord) and record.id == "a"


def test_a_source_inside_the_output_fails_as_written_and_through_a_link(tmp_path):
    out = tmp_path / "out"
    (out / "images" / "x").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(out)  # the same folder under another name
    for source in (out / "photo.png", out / "images" / "x" / "old.png", tmp_path / "alias" / "photo.png"):
        (failure,) = check_job_row(row("a", str(source)), {"edit": "tiny"}, str(out))
        assert failure.tag == FAILED and failure.value.stage == STAGE_VALIDATE
        assert "field 'source'" in failure.value.error and "inside the job's output" in failure.value.error
    for output in ("gs://bucket/out", "gs://bucket/out/"):
        (failure,) = check_job_row(row("a", "gs://bucket/out/sub/a.png"), {"edit": "tiny"}, output)
        assert failure.tag == FAILED
    (beside,) = check_job_row(row("a", str(tmp_path / "out-photos" / "a.png")), {"edit": "tiny"}, str(out))
    assert isinstance(beside, EditRecord)  # a sibling whose name starts the same is not inside
