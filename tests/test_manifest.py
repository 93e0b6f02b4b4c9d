"""Manifest reading and validation: formats, globs, aliases, every contract rule, duplicates, Beam path."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.manifest import (
    ManifestLimits,
    RawRow,
    ReadManifest,
    ValidateRows,
    match_manifest,
    read_rows,
    resolve_source,
    validate_manifest,
    validate_row,
)
from transforms.records import STAGE_READ, STAGE_VALIDATE, Failure, ManifestRow, RowRef


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def raw(data: dict, file: str = "/m/manifest.jsonl", index: int = 3) -> RawRow:
    return RawRow(RowRef(file, index), data, None, json.dumps(data))


def check(data: dict, **kwargs) -> ManifestRow | Failure:
    kwargs.setdefault("limits", ManifestLimits(max_instruction_chars=50))
    return validate_row(raw(data), **kwargs)


# --- formats ---------------------------------------------------------------------------------------


def test_jsonl_rows_keep_file_and_line_numbers(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", [{"id": "a", "instruction": "x"}, "", {"id": "b", "instruction": "y"}]
    )
    rows = list(read_rows(str(path)))
    assert [r.ref for r in rows] == [RowRef(str(path), 1), RowRef(str(path), 3)]  # blank line 2 skipped
    assert rows[0].data == {"id": "a", "instruction": "x"} and rows[0].error is None


def test_csv_types_are_coerced(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        ["id", "source", "instruction", "seed", "metadata", "extra"],
        [
            ["a", "img/a.png", "make it blue", "7", '{"sku": "A-1"}', "ignored"],
            ["b", "", "a cat", "7.0", "", ""],
            ["c", "img/c.png", "x", "", "", ""],
        ],
        bom=True,  # Excel writes a BOM; the first column must still be 'id'
    )
    report = validate_manifest(str(path))
    assert (report.rows, report.valid, report.failed) == (3, 3, 0)
    assert report.ignored_columns == {str(path): ["extra"]}
    a, b, c = (
        validate_row(r, limits=ManifestLimits(max_instruction_chars=100)) for r in read_rows(str(path))
    )
    assert a == ManifestRow(
        "a", "make it blue", str(tmp_path / "img/a.png"), 7, '{"sku":"A-1"}', RowRef(str(path), 1)
    )
    assert (b.source, b.seed, b.metadata) == (None, 7, None)  # empty source => text-to-image
    assert c.seed is None


def test_csv_row_with_extra_fields_and_bad_utf8_fail_alone(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,instruction\na,x\nb,y,surplus\nc,\xff\xfe\nd,z\n")
    rows = list(read_rows(str(path)))
    assert [r.ref.index for r in rows] == [1, 2, 3, 4]
    assert [r.error is None for r in rows] == [True, False, False, True]
    assert "more field" in rows[1].error and "UTF-8" in rows[2].error


def test_parquet_rows_nan_seeds_int_ids_and_struct_metadata(tmp_path):
    table = pa.table(
        {
            "key": pa.array([101, 102], pa.int64()),
            "prompt": ["one", "two"],
            "image_path": ["a.png", None],
            "seed": pa.array([7.0, float("nan")], pa.float64()),  # pandas writes missing ints as NaN
            "metadata": pa.array([{"k": 1}, None], pa.struct([("k", pa.int64())])),
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    first, second = (
        validate_row(r, limits=ManifestLimits(max_instruction_chars=100)) for r in read_rows(str(path))
    )
    assert first == ManifestRow("101", "one", str(tmp_path / "a.png"), 7, '{"k":1}', RowRef(str(path), 1))
    assert (second.id, second.source, second.seed, second.metadata) == ("102", None, None, None)


def test_corrupt_parquet_becomes_an_error_row(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_bytes(b"PAR1 not really")
    (row,) = read_rows(str(path))
    assert row.data is None and "Parquet" in row.error and row.ref.index == 1


def test_json_array_and_compressed_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"id": "a", "instruction": "x"}, 5]))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"id": "b", "instruction": "y"}) + "\n")
    rows = list(read_rows(str(tmp_path / "*")))
    assert [(Path(r.ref.file).name, r.ref.index, r.error) for r in rows] == [
        ("a.json", 1, None),
        ("a.json", 2, "not a JSON object (got int)"),
        ("b.jsonl.gz", 1, None),
    ]


def test_glob_spans_files_and_formats_in_path_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"id": "b1", "instruction": "x"}])
    write_csv(tmp_path / "a.csv", ["id", "instruction"], [["a1", "x"], ["a2", "y"]])
    assert [Path(p).name for p in match_manifest(str(tmp_path / "*"))] == ["a.csv", "b.jsonl"]
    assert [r.data["id"] for r in read_rows(str(tmp_path / "*"))] == ["a1", "a2", "b1"]


def test_no_match_and_unknown_format_are_loud(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        match_manifest(str(tmp_path / "*.jsonl"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        validate_manifest(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"no supported format.*notes\.txt"):
        match_manifest(str(tmp_path / "*"))


def test_not_json_and_not_an_object_lines_are_rows_with_errors(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl", ["{this is not json", "[1, 2]", '"text"', {"id": "ok", "instruction": "x"}]
    )
    rows = list(read_rows(str(path)))
    assert "not valid JSON" in rows[0].error and rows[0].raw == "{this is not json"
    assert rows[1].error == "not a JSON object (got array)"
    assert rows[2].error == "not a JSON object (got string)"
    failure = validate_row(rows[0], limits=ManifestLimits(max_instruction_chars=10))
    assert isinstance(failure, Failure) and failure.stage == STAGE_READ and failure.record is None
    assert failure.error.startswith(f"{path} row 1: not valid JSON") and failure.id is None
    assert failure.ref == RowRef(str(path), 1) and failure.raw == "{this is not json"


# --- rules -----------------------------------------------------------------------------------------


def test_aliases_and_relative_sources():
    row = check({"key": "k", "prompt": "  p  ", "image_path": "../img/x.png"}, manifest_dir="/data/m")
    assert (row.id, row.instruction, row.source) == ("k", "p", "/data/img/x.png")
    same = check({"id": "k", "key": "k", "instruction": "p"})
    assert isinstance(same, ManifestRow)
    uri = check({"id": "k", "instruction": "p", "source": "gs://other/x.png"}, manifest_dir="/data")
    assert uri.source == "gs://other/x.png"
    from_gcs = check({"id": "k", "instruction": "p", "source": "img/x.png"}, manifest_dir="gs://b/m")
    assert from_gcs.source == "gs://b/m/img/x.png"
    default_dir = validate_row(
        raw({"id": "k", "instruction": "p", "source": "x.png"}, file="gs://b/d/m.csv"),
        limits=ManifestLimits(max_instruction_chars=9),
    )
    assert default_dir.source == "gs://b/d/x.png"


def test_resolve_source_stays_inside_the_bucket():
    assert resolve_source("./a/../b.png", "gs://bucket/dir") == "gs://bucket/dir/b.png"
    assert resolve_source("file:///abs/x.png", "gs://bucket") == "/abs/x.png"
    with pytest.raises(ValueError, match="climbs above gs://bucket/"):
        resolve_source("../../x.png", "gs://bucket/dir")


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"instruction": "x"}, "id", "required"),
        ({"id": "", "instruction": "x"}, "id", "required"),
        ({"id": ["a"], "instruction": "x"}, "id", "must be a string, got array"),
        ({"id": True, "instruction": "x"}, "id", "got boolean"),
        ({"id": "a/b", "instruction": "x"}, "id", "must be 1-128 characters"),
        ({"id": "..", "instruction": "x"}, "id", "must be 1-128 characters"),
        ({"id": ".", "instruction": "x"}, "id", "must be 1-128 characters"),
        ({"id": "x" * 129, "instruction": "x"}, "id", "must be 1-128 characters"),
        ({"id": "a", "key": "b", "instruction": "x"}, "id", "conflicts with its alias 'key'"),
        ({"id": "a"}, "instruction", "required"),
        ({"id": "a", "instruction": "   "}, "instruction", "empty"),
        ({"id": "a", "prompt": ""}, "instruction", "empty"),
        ({"id": "a", "instruction": 5}, "instruction", "must be a string, got int"),
        (
            {"id": "a", "instruction": "y" * 51},
            "instruction",
            "51 characters, over limits.max_instruction_chars=50",
        ),
        ({"id": "a", "instruction": "x", "prompt": "y"}, "instruction", "conflicts with its alias 'prompt'"),
        ({"id": "a", "instruction": "x", "source": 3}, "source", "must be a string"),
        ({"id": "a", "instruction": "x", "source": "nope://b/x.png"}, "source", "no Beam filesystem"),
        ({"id": "a", "instruction": "x", "source": "a.png", "image_path": "b.png"}, "source", "'image_path'"),
        ({"id": "a", "instruction": "x", "seed": "seven"}, "seed", "must be an integer"),
        ({"id": "a", "instruction": "x", "seed": True}, "seed", "got boolean"),
        ({"id": "a", "instruction": "x", "seed": -1}, "seed", "got -1"),
        ({"id": "a", "instruction": "x", "seed": 2**63}, "seed", f"got {2**63}"),
        ({"id": "a", "instruction": "x", "seed": 1.5}, "seed", "got 1.5"),
        ({"id": "a", "instruction": "x", "seed": "2.5"}, "seed", "got '2.5'"),
        ({"id": "a", "instruction": "x", "seed": [1]}, "seed", "got array"),
        ({"id": "a", "instruction": "x", "metadata": [1]}, "metadata", "must be a JSON object, got array"),
        ({"id": "a", "instruction": "x", "metadata": "{nope"}, "metadata", "not JSON"),
        ({"id": "a", "instruction": "x", "metadata": "[1]"}, "metadata", "got array"),
    ],
)
def test_each_rule_names_row_and_field(data, field, fragment):
    failure = check(data)
    assert isinstance(failure, Failure), failure
    assert failure.stage == STAGE_VALIDATE and failure.record is None
    assert failure.error.startswith(f"/m/manifest.jsonl row 3, field '{field}': "), failure.error
    assert fragment in failure.error
    assert failure.ref == RowRef("/m/manifest.jsonl", 3) and failure.raw == json.dumps(data)


def test_accepted_seed_forms():
    for value, expected in [
        (7, 7),
        (7.0, 7),
        ("7", 7),
        (" 8 ", 8),
        ("9.0", 9),
        (None, None),
        ("", None),
        (2**63 - 1, 2**63 - 1),
    ]:
        row = check({"id": "a", "instruction": "x", "seed": value})
        assert isinstance(row, ManifestRow) and row.seed == expected, (value, row)


def test_all_problems_of_a_row_in_one_error_and_best_effort_id():
    failure = check({"id": "../escape", "instruction": "", "seed": "x"})
    assert failure.error.startswith("/m/manifest.jsonl row 3, field 'id': ")
    assert "; field 'instruction': empty" in failure.error and "; field 'seed':" in failure.error
    assert failure.id == "../escape"  # provenance can still name the row


def test_metadata_is_passed_through_as_json_text():
    row = check({"id": "a", "instruction": "x", "metadata": {"sku": "R-1", "tags": ["é"]}})
    assert json.loads(row.metadata) == {"sku": "R-1", "tags": ["é"]}
    assert check({"id": "a", "instruction": "x", "metadata": '{"a": 1}'}).metadata == '{"a":1}'


# --- duplicates and the report ---------------------------------------------------------------------


def _mixed_manifest(tmp_path: Path) -> Path:
    write_jsonl(
        tmp_path / "b.jsonl",
        [
            {"id": "dup", "instruction": "second file"},
            "{broken",
            {"id": "solo", "instruction": "fine", "source": "img.png", "color": "ignored"},
            {"id": "bad-seed", "instruction": "x", "seed": "seven"},
            {"id": "bad-seed", "instruction": "again"},
        ],
    )
    write_jsonl(
        tmp_path / "a.jsonl",
        [{"id": "dup", "instruction": "first"}, {"id": "dup", "instruction": "third", "seed": 1}],
    )
    return tmp_path / "*.jsonl"


def test_validate_manifest_report(tmp_path):
    pattern = _mixed_manifest(tmp_path)
    report = validate_manifest(str(pattern))
    assert (report.rows, report.valid, report.failed) == (7, 2, 5)
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    assert [(str(p.ref), p.id, p.field) for p in report.problems] == [
        (f"{a} row 2", "dup", "id"),
        (f"{b} row 1", "dup", "id"),
        (f"{b} row 2", None, None),
        (f"{b} row 4", "bad-seed", "seed"),
        (f"{b} row 5", "bad-seed", "id"),  # a failed first row still owns its id
    ]
    assert report.problems[0].message == f"duplicate id 'dup' (first at {a} row 1)"
    assert report.ignored_columns == {b: ["color"]}


def test_beam_read_and_validate(tmp_path):
    pattern = _mixed_manifest(tmp_path)
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        raw_rows = pipeline | ReadManifest(str(pattern))
        result = raw_rows | ValidateRows(ManifestLimits(max_instruction_chars=100))
        assert_that(
            result.valid | "ValidIds" >> beam.Map(lambda r: (r.id, str(r.ref), r.source)),
            equal_to([("dup", f"{a} row 1", None), ("solo", f"{b} row 3", str(tmp_path / "img.png"))]),
            label="valid",
        )
        assert_that(
            result.failed
            | "Failures" >> beam.Map(lambda f: (f.id, str(f.ref), f.stage, f.error.split(": ", 1)[1][:30])),
            equal_to(
                [
                    ("dup", f"{a} row 2", STAGE_VALIDATE, "duplicate id 'dup' (first at /"),
                    ("dup", f"{b} row 1", STAGE_VALIDATE, "duplicate id 'dup' (first at /"),
                    (None, f"{b} row 2", STAGE_READ, "not valid JSON (Expecting prop"),
                    ("bad-seed", f"{b} row 4", STAGE_VALIDATE, "must be an integer from 0 to 9"),
                    ("bad-seed", f"{b} row 5", STAGE_VALIDATE, "duplicate id 'bad-seed' (first"),
                ]
            ),
            label="failed",
        )


def test_read_manifest_fails_at_construction_on_no_match(tmp_path):
    pipeline = beam.Pipeline(runner="FnApiRunner")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        _ = pipeline | ReadManifest(str(tmp_path / "nothing-*.jsonl"))


def test_read_manifest_fails_at_run_time_on_no_match_when_not_checked_early(tmp_path):
    with pytest.raises(Exception, match="Empty match for pattern"):
        with beam.Pipeline(runner="FnApiRunner") as pipeline:
            _ = pipeline | ReadManifest(str(tmp_path / "nothing-*.jsonl"), check_exists=False)
