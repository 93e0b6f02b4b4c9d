"""Benchmark manifests read unchanged: ImgEdit-Bench Basic's object of rows keyed by id and GEdit-Bench's field
names (fixtures of our own in tests/fixtures/bench, images drawn by make_fixtures.py), the category column
with its aliases, and hostile variants that fail exactly their own rows, naming file, row and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline import cli
from tests.fixtures.bench.make_fixtures import MANIFESTS, build
from transforms.chunks import ReadChunk, plan_chunks
from transforms.manifest import (
    MAX_CATEGORY_CHARS,
    ManifestLimits,
    ReadManifest,
    ValidateRows,
    check_row,
    read_rows,
    validate_manifest,
)
from transforms.manifest_parse import json_layout
from transforms.provenance import RunContext, provenance_row
from transforms.records import EditRecord, Failure, ManifestRow, RowRef
from transforms.shards import shard_key

FIXTURES = Path(__file__).parent / "fixtures" / "bench"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The committed manifests copied into a temporary folder with their images drawn next to them."""
    folder = tmp_path_factory.mktemp("bench")
    build(folder)
    return folder


def outcomes(path: Path) -> list:
    """Every row of a manifest as validation sees it: a ManifestRow, or its problems as text."""
    result = []
    for raw in read_rows(str(path)):
        checked = check_row(raw)
        result.append(checked.row if checked.row is not None else checked.failure().error)
    return result


# --- the layouts as published --------------------------------------------------------------------------


def test_imgedit_basic_object_of_rows_reads_unchanged(bench):
    path = bench / "imgedit" / "singleturn.json"
    published = json.loads(
        path.read_text()
    )  # the layout: {"<id>": {"id": <image path>, "prompt", "edit_type"}}
    rows = outcomes(path)
    assert all(isinstance(r, ManifestRow) for r in rows), rows
    assert [r.id for r in rows] == list(published)  # member order, member names as ids
    for row, item in zip(rows, published.values(), strict=True):
        assert row.instruction == item["prompt"] and row.category == item["edit_type"]
        assert row.source == str(path.parent / item["id"])  # relative to the benchmark folder
        assert Path(row.source).is_file()
    assert {r.category for r in rows} == {
        "add",
        "remove",
        "replace",
        "adjust",
        "style",
        "background",
        "extract",
        "action",
        "compose",
    }  # ImgEdit-Bench Basic's nine edit types
    assert [r.ref.index for r in rows] == list(range(1, len(rows) + 1))


def test_gedit_field_names_read_unchanged(bench):
    path = bench / "gedit" / "gedit_en.jsonl"
    published = [json.loads(line) for line in path.read_text().splitlines()]
    rows = outcomes(path)
    assert all(isinstance(r, ManifestRow) for r in rows), rows
    for row, item in zip(rows, published, strict=True):
        assert row.id == item["key"] and row.instruction == item["instruction"]
        assert row.category == item["task_type"]
        assert row.source == str(path.parent / item["input_image"]) and Path(row.source).is_file()
        assert row.source.endswith(f"fullset/{item['task_type']}/en/{item['key']}_SRCIMG.png")


def test_dimflow_validate_accepts_both_layouts(bench, capsys):
    for name in MANIFESTS:
        assert cli.main(["validate", str(bench / name)]) == cli.EXIT_OK
        text = capsys.readouterr().err
        assert "with problems" in text and " 0 with problems" in text


def test_beam_read_validate_and_chunks_keep_member_ids(bench, tmp_path):
    path = bench / "imgedit" / "singleturn.json"
    expected = list(json.loads(path.read_text()))
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | ReadManifest(str(path)) | ValidateRows()
        assert_that(
            result.valid | "Ids" >> beam.Map(lambda r: (r.id, r.category)),
            equal_to([(key, item["edit_type"]) for key, item in json.loads(path.read_text()).items()]),
            label="ids",
        )
        assert_that(result.failed, equal_to([]), label="none failed")
    plan = plan_chunks(str(path), ManifestLimits(), chunk_rows=4, folder=str(tmp_path))
    assert plan.rows == len(expected) and len(plan.chunks) == 3
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        ids = pipeline | ReadChunk(plan.chunks[0], spread=False) | beam.Map(lambda raw: check_row(raw).row.id)
        assert_that(ids, equal_to(expected[:4]))


def test_shards_key_object_rows_by_their_member_name(bench):
    rows = list(read_rows(str(bench / "imgedit" / "singleturn.json")))
    assert [shard_key(r) for r in rows] == [f"id:{r.member}" for r in rows]


def test_category_reaches_provenance():
    row = ManifestRow("a", "add a hat", "/data/a.png", None, None, RowRef("/m.json", 1), category="add")
    out = provenance_row(EditRecord(row), RunContext(run_id="r1", versions_json="{}"), now=1.0)
    assert out["category"] == "add"
    failed = Failure(record=None, stage="validate", error="bad", row_id="b", ref=RowRef("/m.json", 2))
    assert provenance_row(failed, RunContext(run_id="r1", versions_json="{}"), now=1.0)["category"] is None


# --- the category column -------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["category", "edit_type", "task_type"])
def test_category_column_and_aliases(tmp_path, column):
    path = tmp_path / "m.jsonl"
    rows = [{"id": "a", "instruction": "x", column: "  add  "}, {"id": "b", "instruction": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = outcomes(path)
    assert a.category == "add" and b.category is None


def test_category_in_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,instruction,task_type\na,x,color_alter\nb,y,\n")
    assert [r.category for r in outcomes(csv_path)] == ["color_alter", None]
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "prompt": ["x", "y"], "edit_type": ["style", None]}), parquet)
    assert [r.category for r in outcomes(parquet)] == ["style", None]


HOSTILE_CATEGORIES = [
    ("x" * (MAX_CATEGORY_CHARS + 1), f"{MAX_CATEGORY_CHARS + 1} characters, over the {MAX_CATEGORY_CHARS}"),
    (7, "must be a string (a short label such as 'add'), got int"),
    (True, "got boolean"),
    ({"name": "add"}, "got object"),
    (["add"], "got array"),
    ("add\u202eevil", "bidirectional control character U+202E"),
    ("add\x1b[2J", "control character U+001B"),
    ("add\nremove", "control character U+000A"),
    ("\u200b\u200b", "only invisible characters"),
    ("add\ud800", "lone surrogate U+D800"),
]


@pytest.mark.parametrize(("value", "fragment"), HOSTILE_CATEGORIES)
def test_a_bad_category_fails_its_row_naming_file_row_and_field(tmp_path, value, fragment):
    path = tmp_path / "m.jsonl"
    bad = json.dumps({"id": "bad", "instruction": "x", "edit_type": value})
    path.write_text(json.dumps({"id": "good", "instruction": "x", "category": "add"}) + "\n" + bad + "\n")
    good, error = outcomes(path)
    assert isinstance(good, ManifestRow) and good.category == "add"
    assert error.startswith(f"{path} row 2, field 'category': ") and fragment in error, error


def test_two_category_names_that_disagree_fail(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"id": "a", "instruction": "x", "edit_type": "add", "task_type": "remove"}) + "\n"
    )
    (error,) = outcomes(path)
    assert "field 'category'" in error and "'edit_type' and 'task_type' disagree" in error


def test_bad_categories_in_a_validate_report(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,instruction,category\na,x," + "y" * 65 + "\nb,x,add\n")
    report = validate_manifest(str(path))
    assert (report.valid, report.failed) == (1, 1)
    (problem,) = report.problems
    assert (problem.ref.index, problem.id, problem.field) == (1, "a", "category")


# --- hostile objects of rows ---------------------------------------------------------------------------


def write_object(path: Path, members: dict, *, indent: int | None = 4) -> Path:
    path.write_text(json.dumps(members, indent=indent))
    return path


@pytest.mark.parametrize("indent", [4, None])
def test_object_member_name_is_the_id_and_disagreements_fail_their_own_row(tmp_path, indent):
    (tmp_path / "a.png").write_bytes(b"")
    path = write_object(
        tmp_path / "bench.json",
        {
            "1": {"id": "a.png", "prompt": "ok", "edit_type": "add"},
            "2": {"key": "3", "id": "a.png", "prompt": "key disagrees with the member name"},
            "4": {"id": "a.png", "source": "b.png", "prompt": "two different sources"},
            "5": {"id": "5", "source": "a.png", "prompt": "an id equal to the member name only repeats it"},
            "6": {"key": "6", "image_path": "a.png", "prompt": "an agreeing key is fine"},
            "7": "not a row",
            "../x": {"id": "a.png", "prompt": "a member name that is no id"},
            "8": {"id": 9, "prompt": "an inner id that is neither the member name nor a path"},
        },
        indent=indent,
    )
    rows = outcomes(path)
    assert isinstance(rows[0], ManifestRow) and rows[0].source == str(tmp_path / "a.png")
    assert rows[1].startswith(f"{path} row 2, field 'id': the member name '2' and its 'key' '3' disagree")
    assert rows[2].startswith(f"{path} row 3, field 'source': conflicts with its alias 'id'")
    assert isinstance(rows[3], ManifestRow) and (rows[3].id, rows[3].source) == ("5", str(tmp_path / "a.png"))
    assert isinstance(rows[4], ManifestRow) and rows[4].id == "6"
    assert rows[5] == (
        f"{path} row 6: member '7' is not a JSON object (got string); an object of rows maps each row's id "
        "to the row, as ImgEdit-Bench's JSON does"
    )
    assert rows[6].startswith(f"{path} row 7, field 'id': must be 1-128 characters")
    assert rows[7].startswith(f"{path} row 8, field 'source': must be a string (a path or URI), got int")


def test_a_repeated_member_name_fails_as_a_duplicate(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(
        '{\n "1": {"id": "a.png", "prompt": "first"},\n "1": {"id": "b.png", "prompt": "again"}\n}\n'
    )
    report = validate_manifest(str(path))
    assert (report.valid, report.failed) == (1, 1)
    assert "duplicate id '1' (first at" in report.problems[0].message and report.problems[0].ref.index == 2


def test_broken_objects_of_rows_end_with_a_row_saying_so(tmp_path):
    truncated = tmp_path / "cut.json"
    truncated.write_text('{\n "1": {"id": "a.png", "prompt": "x"},\n "2": {"id": "b.png", "pro')
    rows = list(read_rows(str(truncated)))
    assert check_row(rows[0]).row is not None
    assert rows[1].error == "the file ends inside this member: the JSON object is not closed (truncated?)"
    unclosed = tmp_path / "open.json"
    unclosed.write_text('{\n "1": {"id": "a.png", "prompt": "x"}\n')
    rows = list(read_rows(str(unclosed)))
    assert check_row(rows[0]).row is not None and "the JSON object is not closed" in rows[1].error
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{\n "1": {"id": "a.png", "prompt": "x"}\n]')
    assert "closed by ']'" in list(read_rows(str(wrong)))[1].error
    trailing = tmp_path / "trailing.json"
    trailing.write_text('{\n "1": {"id": "a.png", "prompt": "x"}\n}\n{"2": {}}')
    assert list(read_rows(str(trailing)))[1].error == "unexpected data after the end of the JSON object"


def test_object_rows_are_bounded_like_other_records(tmp_path):
    path = tmp_path / "big.json"
    members = {"1": {"id": "a.png", "prompt": "x" * 2000}, "2": {"id": "a.png", "prompt": "ok"}}
    deep: dict = {"id": "a.png", "prompt": "deep"}
    for _ in range(40):
        deep = {"metadata": deep}
    members["3"] = deep
    write_object(path, members, indent=None)
    rows = list(read_rows(str(path), ManifestLimits(max_row_bytes=1000)))
    assert rows[0].error.startswith("member is over limits.max_row_bytes=1000")
    assert check_row(rows[1]).row is not None
    assert "over limits.max_nesting=32" in rows[2].error
    gz = tmp_path / "bench.json.gz"
    gz.write_bytes(gzip.compress(json.dumps({"1": {"id": "a.png", "prompt": "x"}}, indent=2).encode()))
    (row,) = outcomes(gz)
    assert row.id == "1" and row.source == str(tmp_path / "a.png")


def test_json_lines_are_never_taken_for_an_object_of_rows(tmp_path):
    """A .json file of JSON lines whose first row starts with an unknown object column stays JSON lines;
    the layout decision in every case the README lists."""
    lines = [{"extra": {"a": 1}, "id": "x", "instruction": "y"}, {"id": "z", "instruction": "w"}]
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert [r.id for r in outcomes(path)] == ["x", "z"]
    assert json_layout(b'[{"id": "a"}]', whole=True) == "array"
    assert json_layout(b'{"id": "a", "instruction": "x"}\n', whole=True) == "lines"
    assert json_layout(b'{"metadata": {"a": 1}, "id": "a", "instruction": "x"}', whole=True) == "lines"
    assert json_layout(b'{\n "1": {"id": "a.png"}\n}', whole=True) == "object"
    assert json_layout(b'{"1": {"id": "a.png"}, "2": {"id": "b.png"}}', whole=True) == "object"
    assert json_layout(b'\xef\xbb\xbf {"1": {"id": "a.png"}}', whole=True) == "object"
    assert json_layout(b'{"1": {"id": "a.png"}}\n{"2": {"id": "b.png"}}\n', whole=True) == "lines"
    assert (
        json_layout(b'{"1": {"id": "a.png"}, "2": {"id": "b', whole=False) == "object"
    )  # longer than the head


def test_embedded_image_bytes_are_refused_with_the_reason(tmp_path):
    """GEdit-Bench's published Parquet embeds its images as bytes: dimflow reads sources from files, and says so."""
    image = {"bytes": b"\x89PNG" + b"\x00" * 4000, "path": None}
    path = tmp_path / "gedit.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"key": "k1", "instruction": "x", "task_type": "color_alter", "input_image": image}]
        ),
        path,
    )
    (row,) = list(read_rows(str(path), ManifestLimits(max_row_bytes=2000)))
    assert "embed binary data (images as bytes?)" in row.error and "'input_image'" in row.error
    (error,) = outcomes(path)  # small enough to be read: the field says why it is not a source
    assert "field 'source': holds an embedded image" in error
