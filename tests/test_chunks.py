"""Chunked runs on the embedded runner: the same rows and images as one pipeline, duplicate ids decided
over the whole manifest, and a run killed between chunks loses nothing and paints nothing twice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from transforms import duplicates
from transforms.chunks import _ReadSpill, plan_chunks
from transforms.manifest import ManifestLimits, row_outcomes
from transforms.shards import Shard

REPO = Path(__file__).resolve().parents[1]
ROWS = 30
CHUNK = 7
# Columns that differ between any two runs of the same rows (who, when, how long).
VOLATILE = {
    "run_id",
    "blueprint_run_id",
    "started_at",
    "finished_at",
    "worker",
    "design_s",
    "paint_s",
    "versions",
    "batch_size",
}


def _manifest_lines() -> list[str]:
    lines = []
    for i in range(ROWS):
        row = {
            "id": f"sku-{i:03d}",
            "source": f"src-{i % 3}.png",
            "instruction": f"make it white {i % 4}",
            "seed": i,
        }
        if i in (8, 15, 22):
            row["id"] = "sku-001"  # duplicates of row 1, in later chunks (and one in the same chunk as 8)
        if i == 14:
            row["id"] = "sku-013"  # a duplicate right across the border of chunks 1 and 2
        if i == 5:
            row["instruction"] = " "  # a bad row
        if i == 20:
            row["source"] = "missing.png"  # fails at fetch
        lines.append(json.dumps(row))
    lines[26] = "{not json"  # an unreadable line (no id)
    return lines


def _job(folder: Path, **runner) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for color in range(3):
        Image.new("RGB", (40, 32), (80 * color, 100, 200)).save(folder / f"src-{color}.png")
    (folder / "manifest.jsonl").write_text("\n".join(_manifest_lines()) + "\n")
    spec = {
        "name": "chunks",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny", "steps": 2, "resolution": 32, "batch_size": 3},
        "runner": runner,
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def _spilled(plan) -> list:
    return [raw for chunk in plan.chunks for raw in _ReadSpill().process(chunk.path)]


def test_a_plan_spills_every_row_in_order_and_marks_later_duplicates(tmp_path):
    _job(tmp_path)
    manifest = str(tmp_path / "manifest.jsonl")
    (tmp_path / "spill").mkdir()
    plan = plan_chunks(manifest, ManifestLimits(), chunk_rows=CHUNK, folder=str(tmp_path / "spill"))
    assert [c.rows for c in plan.chunks] == [7, 7, 7, 7, 2] and plan.rows == ROWS
    rows = _spilled(plan)
    assert [r.ref.index for r in rows] == list(range(1, ROWS + 1))
    marked = {r.ref.index: r.first_ref.index for r in rows if r.first_ref is not None}
    assert marked == {9: 2, 16: 2, 23: 2, 15: 14}  # rows (1-based) 9, 16, 23 repeat row 2; 15 repeats 14
    # validate decides the same without chunks
    dup_rows = {o.ref.index for o in row_outcomes(manifest) if o.error and "duplicate id" in o.error}
    assert dup_rows == set(marked)


def test_hash_collisions_never_fail_a_row(tmp_path, monkeypatch):
    _job(tmp_path)
    monkeypatch.setattr(duplicates, "id_hash", lambda row_id: 42)  # every id collides
    (tmp_path / "spill").mkdir()
    plan = plan_chunks(
        str(tmp_path / "manifest.jsonl"), ManifestLimits(), chunk_rows=CHUNK, folder=str(tmp_path / "spill")
    )
    assert plan.duplicates == 4
    assert {r.ref.index for r in _spilled(plan) if r.first_ref is not None} == {9, 16, 23, 15}


def test_a_shard_plans_only_its_rows(tmp_path):
    _job(tmp_path)
    (tmp_path / "spill").mkdir()
    shard = Shard(1, 3)
    plan = plan_chunks(
        str(tmp_path / "manifest.jsonl"),
        ManifestLimits(),
        chunk_rows=CHUNK,
        folder=str(tmp_path / "spill"),
        owns=shard.owns,
    )
    rows = _spilled(plan)
    assert rows and all(shard.owns(r) for r in rows) and plan.rows == len(rows) < ROWS


def _comparable(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items() if k not in VOLATILE)) for r in rows)


def _images(output: Path) -> dict[str, str]:
    return {
        str(p.relative_to(output)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in output.glob("images/*/*")
    }


@pytest.mark.slow
def test_a_chunked_run_equals_one_pipeline(tmp_path):
    whole = load_spec(_job(tmp_path / "whole", chunk_rows=None))
    chunked = load_spec(_job(tmp_path / "chunked", chunk_rows=CHUNK))
    one = run_job(whole, show_progress=False)
    many = run_job(chunked, show_progress=False)
    assert one.counts == many.counts and sum(many.counts.values()) == ROWS
    one_rows = read_provenance(whole.output, one.run_id).to_pylist()
    many_rows = read_provenance(chunked.output, many.run_id).to_pylist()
    # file paths differ by the folder name: compare relative to each job's folder
    strip = lambda rows, folder: [  # noqa: E731
        {k: (v.replace(str(folder), "") if isinstance(v, str) else v) for k, v in r.items()} for r in rows
    ]
    assert _comparable(strip(one_rows, tmp_path / "whole")) == _comparable(
        strip(many_rows, tmp_path / "chunked")
    )
    assert _images(Path(whole.output)) == _images(Path(chunked.output))
    files = sorted(p.name for p in Path(chunked.output, "provenance", f"run={many.run_id}").glob("*.parquet"))
    assert len({f.split("-a2")[0] for f in files}) == 5  # one part prefix per chunk
    moved = str(tmp_path / "chunked"), str(tmp_path / "whole")
    shown = [{**f, "error": f["error"].replace(*moved)} for f in many.failures]
    assert many.failures and shown == one.failures  # the console's failed rows, across chunks


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_chunked_run_killed_mid_way_loses_nothing_on_rerun(tmp_path):
    spec_path = _job(tmp_path, chunk_rows=CHUNK)
    data = yaml.safe_load(spec_path.read_text())
    data["incremental"] = True
    data["painter"]["steps"] = 6
    spec_path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(spec_path), "--no-progress"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and runner.poll() is None:  # until chunk 1's provenance is written
            if list(out.glob("provenance/run=*/part-chunk-00001-*.parquet")):
                break
            time.sleep(0.05)
        assert runner.poll() is None, "the run finished before it could be killed"
        os.killpg(runner.pid, signal.SIGKILL)
    finally:
        runner.wait(timeout=60)
    killed_rows = read_provenance(str(out)).to_pylist()
    finished_chunks = {r["id"] for r in killed_rows}
    assert killed_rows and len(killed_rows) < ROWS  # chunks 0 and 1 at least; not all
    images_before = _images(out)

    result = run_job(load_spec(spec_path), show_progress=False)
    rerun = read_provenance(str(out), result.run_id).to_pylist()
    assert len(rerun) == ROWS and sum(result.counts.values()) == ROWS  # every row once
    rendered_before = {Path(p).parent.name for p in images_before}
    skipped = {r["id"] for r in rerun if r["status"] == "skipped"}
    painted = {r["id"] for r in rerun if r["status"] == "ok"}
    assert skipped == rendered_before  # nothing painted twice
    assert finished_chunks & painted == set()
    assert {k: v for k, v in _images(out).items() if k in images_before} == images_before
