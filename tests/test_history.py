"""Earlier runs' lookups: the local history index (embedded runner) answers exactly as the in-pipeline join
(distributed runners) does, for incremental skipping and for the blueprint cache."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms import images
from transforms.blueprints import LookupBlueprints
from transforms.history import build_history_index
from transforms.incremental import SkipRendered
from transforms.records import EditRecord, Failure, ManifestRow, RowRef
from transforms.schema import BLUEPRINT_SCHEMA, PROVENANCE_SCHEMA

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _table(schema: pa.Schema, rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [{**dict.fromkeys(schema.names), **row} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return str(path)


def _record(row_id: str, render_key: str, design_key: str) -> EditRecord:
    row = ManifestRow(id=row_id, instruction="x", source="/s.png", seed=1, metadata=None, ref=RowRef("m", 1))
    return EditRecord(row, render_key=render_key, design_key=design_key)


@pytest.fixture
def history(tmp_path):
    out = tmp_path / "out"
    key = {name: name * 16 for name in ("a", "b", "c", "d")}  # 16+ hex digits: valid render keys
    uri = {name: images.output_uri(str(out), f"id-{name}", key[name], "png") for name in key}
    for name in ("a", "b", "c"):  # images that exist; d was never rendered
        Path(uri[name]).parent.mkdir(parents=True, exist_ok=True)
        Path(uri[name]).write_bytes(f"image {name}".encode())
    provenance = [
        _table(
            PROVENANCE_SCHEMA,
            [
                {
                    "id": "id-a",
                    "status": "ok",
                    "render_key": key["a"],
                    "output_uri": uri["a"],
                    "output_sha256": "sha-a",
                    "blueprint": "bp-a",
                    "designer": "openai:m",
                    "design_key": "dk-a",
                },
                {
                    "id": "id-b",
                    "status": "failed",
                    "render_key": key["b"],
                    "output_uri": uri["b"],
                },  # not usable
                {
                    "id": "id-x",
                    "status": "ok",
                    "render_key": key["a"],
                    "output_uri": "elsewhere",
                    "output_sha256": "sha-x",
                },
            ],
            out / "provenance" / "run=r1" / "part-00000-of-00001.parquet",
        )
    ]
    blueprints = [
        _table(
            BLUEPRINT_SCHEMA,
            [
                {
                    "run_id": "r1",
                    "status": "ok",
                    "design_key": "dk-a",
                    "designer": "openai:m",
                    "blueprint": "old",
                    "finished_at": T0,
                },
                {
                    "run_id": "r2",
                    "status": "ok",
                    "design_key": "dk-a",
                    "designer": "openai:m",
                    "blueprint": "new",
                    "finished_at": T0 + dt.timedelta(days=1),
                },
                {
                    "run_id": "r3",
                    "status": "failed",
                    "design_key": "dk-a",
                    "error": "429",
                    "finished_at": T0 + dt.timedelta(days=2),
                },
                {
                    "run_id": "r1",
                    "status": "failed",
                    "design_key": "dk-b",
                    "error": "first",
                    "finished_at": T0,
                },
                {
                    "run_id": "r2",
                    "status": "failed",
                    "design_key": "dk-b",
                    "error": "second",
                    "finished_at": T0 + dt.timedelta(days=1),
                },
                {
                    "run_id": "r1",
                    "status": "ok",
                    "design_key": "dk-c",
                    "blueprint": "  ",
                    "finished_at": T0,
                },  # blank: unusable
            ],
            out / "blueprints" / "run=r1" / "part-00000-of-00001.parquet",
        )
    ]
    index = build_history_index(
        str(tmp_path / "history.sqlite"), provenance=provenance, blueprints=blueprints
    )
    records = [_record(f"id-{n}", key[n], f"dk-{n}") for n in ("a", "b", "c", "d")]
    return out, provenance, blueprints, index, records


def _outcome(item) -> tuple:
    if isinstance(item, Failure):
        return ("failed", item.id, item.error)
    return (item.id, item.skipped, item.output_sha256, item.blueprint, item.designer, item.blueprint_run_id)


@pytest.mark.parametrize("use_index", [False, True])
def test_skipping_answers_the_same_from_the_index_and_the_join(history, use_index):
    out, provenance, _blueprints, index, records = history
    with beam.Pipeline("FnApiRunner") as pipeline:
        done = (
            pipeline
            | beam.Create(records)
            | SkipRendered(str(out), "png", provenance, index=index if use_index else None)
        )
        assert_that(
            done.skipped | "S" >> beam.Map(_outcome),
            equal_to(
                [
                    ("id-a", True, "sha-a", "bp-a", "openai:m", None),  # from the provenance row of its image
                    # an image with no usable provenance row: hashed again, no blueprint known
                    ("id-b", True, hashlib.sha256(b"image b").hexdigest(), None, None, None),
                    ("id-c", True, hashlib.sha256(b"image c").hexdigest(), None, None, None),
                ]
            ),
            label="skipped",
        )
        assert_that(done.todo | "T" >> beam.Map(lambda r: r.id), equal_to(["id-d"]), label="todo")


@pytest.mark.parametrize("use_index", [False, True])
@pytest.mark.parametrize("required", [False, True])
def test_the_blueprint_cache_answers_the_same_from_the_index_and_the_join(history, use_index, required):
    out, _provenance, blueprints, index, records = history
    with beam.Pipeline("FnApiRunner") as pipeline:
        found = (
            pipeline
            | beam.Create(records)
            | LookupBlueprints(blueprints, str(out), required=required, index=index if use_index else None)
        )
        # dk-a: the newest usable blueprint wins over a newer failure
        assert_that(
            found.found | "F" >> beam.Map(_outcome),
            equal_to([("id-a", False, None, "new", "openai:m", "r2")]),
            label="found",
        )
        missing = found.missing | "M" >> beam.Map(lambda m: _outcome(m) if isinstance(m, Failure) else m.id)
        if required:
            expected = [
                ("failed", "id-b", "no blueprint: the designer failed for this row in run r2: second"),
                (
                    "failed",
                    "id-c",
                    "no blueprint: the designer failed for this row in run r1: it recorded an empty blueprint",
                ),
            ]
            assert_that(
                missing | "Prefix" >> beam.Map(lambda m: m if m[1] != "id-d" else m[:2]),
                equal_to([*expected, ("failed", "id-d")]),
                label="missing",
            )
        else:
            assert_that(missing, equal_to(["id-b", "id-c", "id-d"]), label="missing")
