"""End to end on the embedded Beam runner: manifest -> validate -> fetch -> design -> paint -> write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline import cli
from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from tests.e2e_support import check_statuses, local_case, run_case

pytestmark = pytest.mark.slow


def _ok_images(table) -> dict[str, tuple[str, str]]:
    return {
        row["id"]: (row["output_uri"], row["output_sha256"])
        for row in table.to_pylist()
        if row["status"] == "ok"
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """One run through the CLI (the way users start it), shared by the assertions below. It requires a
    commercially usable painter, which the tiny presets are (no third-party weights)."""
    case = local_case(tmp_path_factory.mktemp("e2e"), painter={"require_commercial_license": True})
    record, table, console = run_case(case)
    return case, record, table, console


def test_console_shows_summary_paths_and_failed_rows(local_run):
    _case, record, table, text = local_run
    assert "RANDOM weights" in text  # the tiny painter says what it is
    assert f"run {record['run_id']}" in text and "total" in text
    assert record["run_id"] + ".json" in text
    failed = [r for r in table.to_pylist() if r["status"] == "failed"]
    assert 0 < len(failed) <= 10
    table_lines = text[text.index("failed rows") :].splitlines()
    for row in failed:  # each failed row has a line naming its id (or that it was unreadable) and stage
        label = row["id"] or "(unreadable row)"
        assert any(label in line and row["error_stage"] in line for line in table_lines), label


def test_every_row_once_with_status_and_stage(local_run):
    _case, _record, table, _console = local_run
    check_statuses(table)


def test_ok_images_exist_and_match_their_hash(local_run):
    _case, _record, table, _console = local_run
    for uri, sha in _ok_images(table).values():
        data = Path(uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        assert data.startswith(b"\x89PNG")


def test_run_record(local_run):
    _case, record, table, _console = local_run
    assert record["counts"] == {"ok": 6, "failed": 7, "skipped": 0, "rejected": 0}
    assert record["rows"] == table.num_rows == 13
    assert record["spec"]["painter"]["checkpoint"] == "tiny"
    assert record["spec"]["painter"]["require_commercial_license"] is True
    for mode in ("edit", "t2i"):
        found = record["painter_licenses"][mode]
        assert (found["checkpoint"], found["license"], found["commercial_use"]) == (
            "tiny",
            "apache-2.0",
            True,
        )
        assert "no third-party weights" in found["source"]
    assert record["versions"]["apache-beam"] == "2.77.0"
    assert set(table.column("run_id").to_pylist()) == {record["run_id"]}


def test_rerun_is_byte_identical(local_run):
    case, _record, first, _console = local_run
    spec = load_spec(case.spec_path)
    second_result = run_job(spec, show_progress=False)
    second = read_provenance(case.output, second_result.run_id)
    assert second_result.counts == {"ok": 6, "failed": 7, "skipped": 0, "rejected": 0}
    assert _ok_images(second) == _ok_images(first)  # same names (render keys) and same bytes
    same_source = {r["id"]: r["output_sha256"] for r in second.to_pylist() if r["status"] == "ok"}
    assert same_source["red-png"] != same_source["same-source-other-seed"]  # the seed matters


def test_multi_process_gives_the_same_rows(local_run, tmp_path):
    _case, _record, first, _console = local_run
    case = local_case(tmp_path / "mp")
    spec = load_spec(case.spec_path)
    result = run_job(
        spec, ["--direct_running_mode=multi_processing", "--direct_num_workers=2"], show_progress=False
    )
    table = read_provenance(case.output, result.run_id)
    check_statuses(table)
    mine = {i: sha for i, (_uri, sha) in _ok_images(table).items()}
    theirs = {i: sha for i, (_uri, sha) in _ok_images(first).items()}
    assert mine == theirs
    assert len(set(table.column("worker").to_pylist())) >= 1


def test_validate_command_names_rows_and_fields(local_run, capsys):
    case, _record, _table, _console = local_run
    manifest = str(Path(case.spec_path).parent / "manifest.jsonl")
    assert cli.main(["validate", manifest]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "13 rows" in err and "with problems" in err
    for fragment in ("row 9", "instruction", "seed", "duplicate id"):
        assert fragment in err


def test_bad_spec_exits_2_naming_the_field(tmp_path, capsys):
    case = local_case(tmp_path / "bad")
    assert cli.main(["run", str(case.spec_path), "--set", "painter.stpes=2"]) == cli.EXIT_BAD_INPUT
    assert "painter.stpes: unknown key" in capsys.readouterr().err
    assert not FileSystems.exists(case.output)
