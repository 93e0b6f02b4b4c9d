"""Run-partitioned tables: a rerun of a run id (and shard) replaces that run's rows, and a damaged part
file is named, skipped and survived by every reader (status, report, incremental runs, the blueprint
cache), while a damaged file of a run's own fresh output fails that run loudly.

The unit tests build the files directly with pyarrow (what a retried pod, a crash mid-write or a
damaged disk leaves behind); the end-to-end ones run the tiny pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from pipeline import cli
from pipeline import run as run_module
from pipeline.run import read_blueprints, read_provenance, read_run_table, run_job
from pipeline.spec import load_spec
from tests.e2e_support import DUPLICATE_ID, EXPECTED, local_case, manifest_lines
from tests.fakes.openai_server import FakeOpenAI
from transforms.schema import PROVENANCE_SCHEMA
from transforms.shards import Shard
from transforms.tables import (
    DAMAGED_COUNTER,
    LEGACY,
    METRICS_NAMESPACE,
    PartFileError,
    ReadPartFiles,
    list_run_table,
    new_attempt,
    parse_part_file,
    read_part_files,
    remove_older_attempts,
)

TINY = {"checkpoint": "tiny", "t2i_checkpoint": "tiny", "steps": 1, "resolution": 32}
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
KEY_ENV = "DIMFLOW_TEST_TABLES_KEY"
FAKE_KEY = "sk-dimflow-tables-fake-7Qw2"


def _rows(run_id: str, ids: list[str], status: str = "ok") -> pa.Table:
    rows = []
    for row_id in ids:
        row = dict.fromkeys(PROVENANCE_SCHEMA.names)
        row.update(run_id=run_id, id=row_id, status=status)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA)


def _write_attempt(
    output: Path, run_id: str, ids: list[str], count: int, *, part="part", tag=None, status="ok"
):
    """One write attempt of ``ids`` split over ``count`` files; ``tag`` None: the untagged older naming."""
    folder = output / "provenance" / f"run={run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    table = _rows(run_id, ids, status)
    prefix = part if tag is None else f"{part}-{tag}"
    paths = []
    for index in range(count):
        path = folder / f"{prefix}-{index:05d}-of-{count:05d}.parquet"
        pq.write_table(table.slice(index * len(ids) // count, len(ids) // count), path)
        paths.append(path)
    return paths


def _damaged_payloads(good: bytes) -> dict[str, bytes]:
    """Part-file names (each its own part prefix, so each is read) -> a damaged body."""
    return {
        "zero-00000-of-00001.parquet": b"",
        "truncated-00000-of-00001.parquet": good[: len(good) // 2],
        "garbage-00000-of-00001.parquet": b"this is not parquet at all\n" * 40,
        "magic-00000-of-00001.parquet": b"PAR1" + bytes(range(256)) * 4 + b"\xff\xff\xff\x7fPAR1",
    }


def _plant(folder: Path, good: bytes) -> list[str]:
    planted = []
    for name, body in _damaged_payloads(good).items():
        (folder / name).write_bytes(body)
        planted.append(str(folder / name))
    return planted


IDS = [f"sku-{i}" for i in range(6)]


# --- unit: which files a reader takes -------------------------------------------------------------


def test_part_file_names_parse_old_and_new_and_shard_prefixes():
    tag = new_attempt()
    cases = {
        "part-00000-of-00001.parquet": ("part", LEGACY, 0, 1),
        f"part-{tag}-00001-of-00002.parquet": ("part", tag, 1, 2),
        "part-shard-00001-of-00003-00000-of-00001.parquet": ("part-shard-00001-of-00003", LEGACY, 0, 1),
        f"part-shard-00001-of-00003-{tag}-00002-of-00004.parquet": ("part-shard-00001-of-00003", tag, 2, 4),
    }
    for name, expected in cases.items():
        parsed = parse_part_file(f"/out/provenance/run=r-1/{name}")
        assert parsed is not None and parsed.run_id == "r-1", name
        assert (parsed.part, parsed.attempt, parsed.index, parsed.count) == expected, name
    for name in ("notes.parquet", "part-00000-of-00001.parquet.tmp", "part-0-of-1.parquet"):
        assert parse_part_file(f"/out/provenance/run=r/{name}") is None, name
    assert parse_part_file("/out/provenance/misplaced/part-00000-of-00001.parquet") is None
    assert new_attempt() < new_attempt()  # tags sort by time


def test_reader_takes_only_the_newest_complete_attempt(tmp_path):
    """Old naming, an older tagged attempt with another N, a newer incomplete one: only one counts."""
    legacy = _write_attempt(tmp_path, "r1", IDS, 1)
    older, newest_complete, incomplete = sorted(new_attempt() for _ in range(3))
    stale = _write_attempt(tmp_path, "r1", IDS, 3, tag=older, status="failed")
    chosen = _write_attempt(tmp_path, "r1", IDS, 2, tag=newest_complete)
    partial = _write_attempt(tmp_path, "r1", IDS, 3, tag=incomplete, status="failed")
    partial[1].unlink()  # a crash (or a write in progress) between two of its files
    other_run = _write_attempt(tmp_path, "r2", IDS[:2], 1, tag=older)

    skipped = []
    table = read_run_table(str(tmp_path), "provenance", PROVENANCE_SCHEMA, skipped=skipped)
    rows = table.to_pylist()
    assert sorted((r["run_id"], r["id"]) for r in rows) == sorted(
        [("r1", i) for i in IDS] + [("r2", i) for i in IDS[:2]]
    )
    assert {r["status"] for r in rows} == {"ok"}  # not the stale or incomplete attempts' rows
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {str(p) for p in [*legacy, *stale, partial[0], partial[2]]}
    assert all("superseded" in reasons[str(p)] for p in [*legacy, *stale])
    assert "incomplete" in reasons[str(partial[0])] and "missing shard(s) 00001" in reasons[str(partial[0])]
    listing = list_run_table(str(tmp_path), "provenance")
    assert listing.files == sorted(str(p) for p in [*chosen, *other_run])


def test_untagged_attempts_are_oldest_and_ordered_by_time(tmp_path):
    """What the old naming left after a rerun with another worker count: 12 rows for 6 ids."""
    first = _write_attempt(tmp_path, "r1", IDS, 1, status="failed")
    second = _write_attempt(tmp_path, "r1", IDS, 2)
    for path in first:
        os.utime(path, (1_000_000, 1_000_000))
    table = read_provenance(str(tmp_path), "r1", skipped=[])
    assert sorted(table.column("id").to_pylist()) == IDS and set(table.column("status").to_pylist()) == {"ok"}
    for path in second:
        os.utime(path, (500_000, 500_000))  # now the single-file set is the newer one
    table = read_provenance(str(tmp_path), "r1", skipped=[])
    assert sorted(table.column("id").to_pylist()) == IDS and set(table.column("status").to_pylist()) == {
        "failed"
    }


def test_incomplete_newest_falls_back_to_the_older_complete_attempt(tmp_path):
    older, newer = sorted(new_attempt() for _ in range(2))
    _write_attempt(tmp_path, "r1", IDS, 2, tag=older, status="failed")
    files = _write_attempt(tmp_path, "r1", IDS, 3, tag=newer)
    files[0].unlink()
    table = read_provenance(str(tmp_path), "r1", skipped=[])
    assert sorted(table.column("id").to_pylist()) == IDS and set(table.column("status").to_pylist()) == {
        "failed"
    }


def test_a_rerun_with_another_shard_layout_replaces_the_earlier_layout(tmp_path):
    two = [new_attempt() for _ in range(2)]
    three = [new_attempt() for _ in range(3)]
    for index, tag in enumerate(two):
        _write_attempt(tmp_path, "r", IDS[index::2], 1, part=f"part-shard-{index:05d}-of-00002", tag=tag)
    listing = list_run_table(str(tmp_path), "provenance", "r")
    assert len(read_part_files(listing.files, PROVENANCE_SCHEMA)[0]) == 6
    for index, tag in enumerate(three):  # the same run id rerun with 3 shards
        _write_attempt(tmp_path, "r", IDS[index::3], 1, part=f"part-shard-{index:05d}-of-00003", tag=tag)
    listing = list_run_table(str(tmp_path), "provenance", "r")
    table, _ = read_part_files(listing.files, PROVENANCE_SCHEMA)
    assert sorted(table.column("id").to_pylist()) == sorted(IDS)  # once each, not twice
    assert {a.part for a in listing.chosen} == {f"part-shard-{i:05d}-of-00003" for i in range(3)}
    assert len(listing.ignored) == 2 and all(
        "with 2 shards, superseded by a rerun with 3 shards" in i.reason for i in listing.ignored
    )

    unsharded = new_attempt()  # and once more without shards
    _write_attempt(tmp_path, "r", IDS, 2, tag=unsharded)
    listing = list_run_table(str(tmp_path), "provenance", "r")
    assert [a.part for a in listing.chosen] == ["part"] and len(listing.ignored) == 5

    removed = remove_older_attempts(str(tmp_path), "provenance", "r", "part", unsharded)
    assert len(removed) == 5
    assert [p.name.split("-a")[0] for p in sorted((tmp_path / "provenance" / "run=r").iterdir())] == [
        "part",
        "part",
    ]


def test_clean_up_of_one_shard_keeps_its_sibling_shards(tmp_path):
    old = _write_attempt(tmp_path, "r", IDS, 1, part="part", tag=new_attempt())[0]
    tags = [new_attempt() for _ in range(2)]
    for index in range(2):
        _write_attempt(
            tmp_path, "r", IDS[index::2], 1, part=f"part-shard-{index:05d}-of-00002", tag=tags[index]
        )
    removed = remove_older_attempts(str(tmp_path), "provenance", "r", "part-shard-00000-of-00002", tags[0])
    assert removed == [str(old)]  # the unsharded layout goes; shard 1 of the same layout stays
    assert len(list((tmp_path / "provenance" / "run=r").iterdir())) == 2


def test_clean_up_removes_only_older_attempts_of_its_own_run_and_part(tmp_path):
    older, own, newer = sorted(new_attempt() for _ in range(3))
    incomplete = _write_attempt(tmp_path, "r1", IDS, 3, tag=older)
    for path in incomplete[1:]:
        path.unlink()  # an incomplete older attempt goes too
    gone = [
        *_write_attempt(tmp_path, "r1", IDS, 1),
        *_write_attempt(tmp_path, "r1", IDS, 2, tag=older),
        incomplete[0],
        # an older shard layout of the same run id: readers no longer read it (see the layout test)
        *_write_attempt(tmp_path, "r1", IDS, 1, part="part-shard-00000-of-00002"),
    ]
    kept = [
        *_write_attempt(tmp_path, "r1", IDS, 2, tag=own),
        *_write_attempt(tmp_path, "r1", IDS, 1, tag=newer),  # another writer's: not ours to delete
        *_write_attempt(tmp_path, "r2", IDS, 1),  # another run
    ]
    foreign = tmp_path / "provenance" / "run=r1" / "notes.parquet"
    foreign.write_bytes(b"x")
    removed = remove_older_attempts(str(tmp_path), "provenance", "r1", "part", own)
    assert sorted(removed) == sorted(str(p) for p in gone)
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept) and foreign.exists()


# --- unit: damaged files --------------------------------------------------------------------------


def test_driver_reader_names_and_skips_each_damaged_file(tmp_path):
    (good,) = _write_attempt(tmp_path, "r1", IDS, 1, tag=new_attempt())
    planted = _plant(good.parent, good.read_bytes())
    foreign = good.parent / "copy of part.parquet"
    shutil.copy(good, foreign)  # a name that is no part file: not read (it would double the rows)
    skipped = []
    table = read_provenance(str(tmp_path), skipped=skipped)
    assert sorted(table.column("id").to_pylist()) == IDS
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {*planted, str(foreign)}
    assert all(reasons[p].startswith("unreadable part file (") for p in planted)
    assert "not named like a part file" in reasons[str(foreign)]
    with pytest.raises(PartFileError, match="truncated-00000-of-00001.parquet"):
        read_part_files([str(good), planted[1]], PROVENANCE_SCHEMA, strict=True)


def test_pipeline_reader_skips_damaged_files_with_a_warning_and_a_metric(tmp_path, caplog):
    good = _write_attempt(tmp_path, "r1", IDS, 2, tag=new_attempt())
    planted = _plant(good[0].parent, good[0].read_bytes())
    missing = str(good[0].parent / "gone-00000-of-00001.parquet")
    caplog.set_level(logging.WARNING, logger="transforms.tables")
    pipeline = beam.Pipeline(runner="FnApiRunner")
    ids = (
        pipeline
        | beam.Create([*map(str, good), *planted, missing])
        | beam.ParDo(ReadPartFiles(["id", "status"], batch_rows=2))
        | beam.Map(lambda row: (row["id"], row["status"]))
    )
    assert_that(ids, equal_to([(i, "ok") for i in IDS]))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name(DAMAGED_COUNTER))["counters"]
    assert [c.committed for c in counters if c.key.metric.namespace == METRICS_NAMESPACE] == [5]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in [*planted, missing]:
        assert f"skipped damaged part file {path}" in warned


# --- end to end: reruns replace --------------------------------------------------------------------


def _once_per_manifest_row(table: pa.Table) -> None:
    """Exactly one row per manifest row (the e2e case's ids, its duplicate and its id-less line)."""
    rows = table.to_pylist()
    expected_ids = Counter([*EXPECTED, DUPLICATE_ID, None])
    assert len(rows) == len(manifest_lines()) == sum(expected_ids.values())
    assert Counter(r["id"] for r in rows) == expected_ids
    for row in rows:
        if row["id"] not in (None, DUPLICATE_ID):
            assert row["status"] == EXPECTED[row["id"]][0], row


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def _tags(names) -> set[str]:
    return {parse_part_file(f"/o/t/run=x/{name}").attempt for name in names}


@pytest.mark.slow
def test_rerun_of_a_run_id_replaces_its_rows(tmp_path):
    case = local_case(tmp_path, painter=TINY)
    spec = load_spec(case.spec_path)
    out = Path(case.output)
    run_job(spec, show_progress=False, run_id="retried")
    folder = out / "provenance" / "run=retried"
    first = _files(folder)
    # What the old naming would have left from an earlier pod with two bundles: plant it too.
    rows = read_provenance(case.output, "retried")
    pq.write_table(rows.slice(0, 5), folder / "part-00000-of-00002.parquet")
    pq.write_table(rows.slice(5), folder / "part-00001-of-00002.parquet")

    result = run_job(spec, TWO_WORKERS, show_progress=False, run_id="retried")
    second = _files(folder)
    assert not set(first) & set(second) and len(_tags(second)) == 1  # one attempt, all files new
    assert LEGACY not in _tags(second)
    print(f"rerun: {len(first)} file(s) before, {len(second)} after")
    table = read_provenance(case.output, "retried", skipped=(skipped := []))
    assert skipped == []
    _once_per_manifest_row(table)
    assert result.counts == {"ok": 6, "failed": 7, "skipped": 0, "rejected": 0}
    assert json.loads((out / "runs" / "retried.json").read_text())["rows"] == len(manifest_lines())
    blueprints = out / "blueprints" / "run=retried"
    assert len(_tags(_files(blueprints))) == 1 and read_blueprints(case.output, "retried").num_rows == 13
    # What an external SQL reader globbing every part file sees once the clean-up has run.
    sql = "SELECT count(*), count(DISTINCT id) FROM read_parquet(?, hive_partitioning = true) WHERE run = ?"
    pattern = str(out / "provenance" / "*" / "*.parquet")
    assert duckdb.execute(sql, [pattern, "retried"]).fetchone() == (13, 11)  # a duplicated id, an id-less row


@pytest.mark.slow
def test_rerun_of_one_shard_replaces_that_shards_rows_only(tmp_path):
    case = local_case(tmp_path, painter=TINY)
    spec = load_spec(case.spec_path)
    folder = Path(case.output) / "provenance" / "run=sharded"
    for index in (0, 1):
        run_job(spec, show_progress=False, run_id="sharded", shard=Shard(index, 2))
    before = _files(folder)
    shard0 = {n: b for n, b in before.items() if n.startswith("part-shard-00000-of-00002-")}
    assert shard0 and len(shard0) < len(before)

    run_job(spec, TWO_WORKERS, show_progress=False, run_id="sharded", shard=Shard(1, 2))
    after = _files(folder)
    assert {n: b for n, b in after.items() if n.startswith("part-shard-00000-of-00002-")} == shard0
    shard1 = [n for n in after if n.startswith("part-shard-00001-of-00002-")]
    assert shard1 and not set(shard1) & set(before) and len(_tags(shard1)) == 1
    _once_per_manifest_row(read_provenance(case.output, "sharded"))


@pytest.mark.slow
def test_own_damaged_output_fails_the_run_naming_the_file(tmp_path, monkeypatch, capsys):
    case = local_case(tmp_path, painter=TINY)
    real = run_module.own_attempt_files

    def damage_first(*args, **kwargs):
        files = real(*args, **kwargs)
        Path(files[0]).write_bytes(b"")
        damage_first.path = files[0]
        return files

    monkeypatch.setattr(run_module, "own_attempt_files", damage_first)
    assert cli.main(["run", str(case.spec_path), "--no-progress"]) == cli.EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert "run failed: PartFileError" in err and Path(damage_first.path).name in err


# --- end to end: damaged files of earlier runs are survived ---------------------------------------


@pytest.mark.slow
def test_damaged_provenance_files_are_named_and_skipped(tmp_path, capsys, caplog):
    case = local_case(tmp_path, painter=TINY, incremental=True)
    spec = load_spec(case.spec_path)
    out = Path(case.output)
    first = run_job(spec, show_progress=False).run_id
    second = run_job(spec, show_progress=False).run_id
    first_rows = {r["id"]: r for r in read_provenance(case.output, first).to_pylist() if r["status"] == "ok"}
    assert len(first_rows) == 6
    (good,) = (out / "provenance" / f"run={first}").glob("part-*.parquet")
    damaged = _plant(good.parent, good.read_bytes())
    (second_file,) = (out / "provenance" / f"run={second}").glob("part-*.parquet")
    second_file.write_bytes(second_file.read_bytes()[:100])  # the real part file of a run, truncated
    damaged.append(str(second_file))

    caplog.set_level(logging.WARNING, logger="transforms.tables")
    third = run_job(spec, show_progress=False)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for path in damaged:
        assert f"skipped damaged part file {path}" in warned
    rows = read_provenance(case.output, third.run_id, skipped=[]).to_pylist()
    assert third.counts == {"ok": 0, "failed": 7, "skipped": 6, "rejected": 0}
    for row in rows:
        if row["status"] == "skipped":  # skipped with the intact earlier run's facts
            assert row["output_sha256"] == first_rows[row["id"]]["output_sha256"]

    capsys.readouterr()
    assert cli.main(["status", case.output]) == cli.EXIT_OK
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped ")]
    assert len(warnings) == len(damaged)
    for path in damaged:
        assert any(path in line for line in warnings), path
    # report also reads the run records: a damaged one is named and skipped like a damaged part file
    record = out / "runs" / "zz-broken.json"
    record.write_bytes(b'{"run_id": "zz-broken", "started_at": ')
    damaged.append(str(record))
    assert cli.main(["report", case.output]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert sum(line.startswith("warning: skipped ") for line in err.splitlines()) == len(damaged)
    assert f"run {third.run_id}" in err and "unreadable run record (JSONDecodeError" in err
    assert cli.main(["report", case.output, "--json"]) == cli.EXIT_OK
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert sorted(s["path"] for s in data["skipped_files"]) == sorted(damaged)
    assert (
        data["by_status"] == {"ok": 0, "failed": 7, "skipped": 6, "rejected": 0}
        and data["run_id"] == third.run_id
    )
    for path in damaged:
        assert path in captured.err


@pytest.mark.slow
def test_blueprint_cache_survives_a_damaged_blueprint_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeOpenAI(expected_key=FAKE_KEY) as server:
        designer = {
            "kind": "openai",
            "model": "gpt-test",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
        }
        case = local_case(tmp_path, painter=TINY, designer=designer)
        spec = load_spec(case.spec_path)
        out = Path(case.output)
        first = run_job(load_spec(case.spec_path, ["stage=design"]), show_progress=False).run_id
        calls = len(server.requests)
        assert calls >= 5  # the rows that reach the designer (a same-source, same-instruction pair may share)
        (good,) = (out / "blueprints" / f"run={first}").glob("part-*.parquet")
        damaged = _plant(good.parent, good.read_bytes())
        shutil.rmtree(out / "blueprints" / "journal")  # the intact table must be what supplies them
        caplog.set_level(logging.WARNING, logger="transforms.tables")
        painted = run_job(load_spec(case.spec_path, ["stage=paint"]), show_progress=False)
        rerun = run_job(spec, show_progress=False)  # a full run with the cache on
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for path in damaged:
        assert f"skipped damaged part file {path}" in warned
    assert len(server.requests) == calls  # every blueprint came from the intact table
    for result in (painted, rerun):
        rows = read_provenance(case.output, result.run_id).to_pylist()
        ok = [r for r in rows if r["status"] == "ok"]
        assert len(ok) == 6 and all(
            r["blueprint_run_id"] == first and r["designer_attempts"] == 0 for r in ok
        )
