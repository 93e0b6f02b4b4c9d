"""Incremental re-rendering and crash safety.

An incremental rerun skips rows whose render key already has its image; a changed source, instruction
or seed renders anew. A run killed with SIGKILL mid-paint loses nothing: the rerun paints only what
is missing and asks the designer nothing again (designs are journaled as they are made).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from pipeline.status import read_latest
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DIMFLOW_TEST_INCREMENTAL_KEY"
FAKE_KEY = "sk-dimflow-incremental-fake-55Zq"


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (seed * 37 % 256, seed * 91 % 256, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def _job(directory: Path, rows: int, *, designer: dict | None = None, steps: int = 2) -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        (directory / "images" / f"{i}.png").write_bytes(_png(i))
        lines.append({"id": f"sku-{i:03d}", "source": f"images/{i}.png", "instruction": f"make it shine {i}"})
    lines.append({"id": "broken", "source": "images/missing.png", "instruction": "x"})
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    spec = {
        "name": "incremental",
        "manifest": "manifest.jsonl",
        "output": "out",
        "incremental": True,
        "designer": designer or {"kind": "none"},
        "painter": {"checkpoint": "tiny", "steps": steps, "resolution": 64, "batch_size": 1},
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _statuses(table) -> dict[str, str]:
    return {row["id"]: row["status"] for row in table.to_pylist()}


def test_rerun_skips_what_is_rendered_and_renders_what_changed(tmp_path, capsys):
    job = _job(tmp_path, 4)
    spec = load_spec(job)
    first = read_provenance(spec.output, run_job(spec, show_progress=False).run_id)
    assert _statuses(first) == {
        "sku-000": "ok",
        "sku-001": "ok",
        "sku-002": "ok",
        "sku-003": "ok",
        "broken": "failed",
    }

    # change one source image's bytes, one instruction and one seed; leave sku-003 alone
    (tmp_path / "images" / "0.png").write_bytes(_png(100))
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    rows[1]["instruction"] = "make it matte"
    rows[2]["seed"] = 99
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    second = read_provenance(spec.output, run_job(spec, show_progress=False).run_id)
    assert _statuses(second) == {
        "sku-000": "ok",
        "sku-001": "ok",
        "sku-002": "ok",
        "sku-003": "skipped",
        "broken": "failed",
    }
    before = {r["id"]: r for r in first.to_pylist()}
    skipped = {r["id"]: r for r in second.to_pylist()}["sku-003"]
    assert skipped["output_uri"] == before["sku-003"]["output_uri"]
    assert skipped["output_sha256"] == before["sku-003"]["output_sha256"]
    assert skipped["render_key"] == before["sku-003"]["render_key"] and skipped["paint_s"] is None

    third_run = run_job(spec, show_progress=False).run_id
    third = read_provenance(spec.output, third_run)
    assert set(_statuses(third).values()) == {"skipped", "failed"}  # nothing left to paint

    # `dimflow status`: the newest state per id across the three runs, and each id's current image
    latest = {r["id"]: r for r in read_latest(spec.output).to_pylist()}
    assert set(latest) == {"sku-000", "sku-001", "sku-002", "sku-003", "broken"}
    assert latest["sku-003"]["status"] == "skipped" and latest["sku-003"]["run_id"] == third_run
    assert latest["sku-003"]["current_output_uri"] == before["sku-003"]["output_uri"]
    renewed = {r["id"]: r for r in second.to_pylist()}["sku-000"]
    assert latest["sku-000"]["current_output_uri"] == renewed["output_uri"] != before["sku-000"]["output_uri"]
    assert latest["broken"]["status"] == "failed" and latest["broken"]["current_output_uri"] is None
    table_path = tmp_path / "latest.parquet"
    assert cli.main(["status", spec.output, "--status", "failed", "--parquet", str(table_path)]) == 0
    text = capsys.readouterr().err
    assert "5 ids; latest state: 0 ok, 4 skipped (already rendered), 1 failed; 4 have a current image" in text
    assert "broken" in text and "sku-003" not in text.split("ids (failed)")[1]
    assert pq.read_table(table_path).num_rows == 5


def test_skips_an_image_whose_run_left_no_provenance(tmp_path):
    """What a crashed run leaves: images without provenance. The rerun hashes them once and skips them."""
    job = _job(tmp_path, 2)
    spec = load_spec(job)
    first = read_provenance(spec.output, run_job(spec, show_progress=False).run_id)
    for part in (Path(spec.output) / "provenance").glob("run=*/*.parquet"):
        part.unlink()
    second = read_provenance(spec.output, run_job(spec, show_progress=False).run_id)
    assert _statuses(second)["sku-000"] == "skipped"
    sha = {r["id"]: r["output_sha256"] for r in first.to_pylist()}
    assert {r["id"]: r["output_sha256"] for r in second.to_pylist()}["sku-001"] == sha["sku-001"]


def test_sigkill_mid_run_then_rerun_loses_and_repeats_nothing(tmp_path):
    rows = 12
    with FakeOpenAI(expected_key=FAKE_KEY) as server:
        designer = {
            "kind": "openai",
            "model": "gpt-test",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
        }
        job = _job(tmp_path, rows, designer=designer, steps=40)  # slow painting: time to kill mid-way
        spec = load_spec(job)
        out = Path(spec.output)
        env = {**os.environ, KEY_ENV: FAKE_KEY}
        runner = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(job), "--no-progress"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline and runner.poll() is None:
                journaled = len(list(out.glob("blueprints/journal/*/*.json")))
                images = len(list(out.glob("images/*/*.png")))
                if journaled == rows and images >= 2:
                    break
                time.sleep(0.1)
            assert runner.poll() is None, "the run finished before it could be killed mid-way"
            os.killpg(runner.pid, signal.SIGKILL)  # the runner and any worker it started
        finally:
            runner.wait(timeout=60)
        images_before = {p.parent.name for p in out.glob("images/*/*.png")}
        designer_calls_before = len(server.requests)
        assert 2 <= len(images_before) < rows
        assert designer_calls_before == rows  # every design was made (and journaled) before the kill
        assert not list(out.glob("provenance/run=*/*.parquet"))  # the killed run wrote no provenance

        os.environ[KEY_ENV] = FAKE_KEY
        try:
            result = run_job(spec, show_progress=False)
        finally:
            del os.environ[KEY_ENV]
        rerun = read_provenance(spec.output, result.run_id).to_pylist()

    statuses = {r["id"]: r["status"] for r in rerun}
    print(
        f"crash/rerun: {rows} rows to paint; killed with {len(images_before)} images written and "
        f"{designer_calls_before} designer calls made; rerun painted "
        f"{sum(s == 'ok' for s in statuses.values())}, skipped {sum(s == 'skipped' for s in statuses.values())}, "
        f"designer calls {len(server.requests) - designer_calls_before}"
    )
    assert len(rerun) == rows + 1 and statuses.pop("broken") == "failed"
    assert {i for i, s in statuses.items() if s == "skipped"} == images_before  # not painted twice
    assert sum(s == "ok" for s in statuses.values()) == rows - len(images_before)  # the rest, once
    assert len(server.requests) == designer_calls_before  # no designer call repeated
    painted = [r for r in rerun if r["status"] == "ok"]
    assert all(r["designer_attempts"] == 0 and r["blueprint_run_id"] for r in painted)
