"""Designer cache and split stages, end to end with the fake OpenAI-compatible server.

A full run writes a blueprint table; a rerun takes every blueprint from it (zero designer calls) and
paints the same bytes; ``stage: design`` writes only the table; ``stage: paint`` reads it and calls
no designer.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.run import read_blueprints, read_provenance, run_job
from pipeline.spec import load_spec
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow

KEY_ENV = "DIMFLOW_TEST_STAGES_KEY"
FAKE_KEY = "sk-dimflow-stages-fake-0Yx81Kq"
REFUSE = "REFUSE-THIS-ROW"


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _job(directory: Path, server: FakeOpenAI, **top) -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    (directory / "images" / "a.png").write_bytes(_png((200, 40, 40)))
    (directory / "images" / "b.png").write_bytes(_png((40, 40, 200)))
    rows = [
        {"id": "a", "source": "images/a.png", "instruction": "make the background white"},
        {"id": "b", "source": "images/b.png", "instruction": "put it on a wooden table", "seed": 4},
        {"id": "refused", "source": "images/a.png", "instruction": f"{REFUSE} add a hat"},
        {"id": "missing", "source": "images/nope.png", "instruction": "make it blue"},
    ]
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "stages",
        "manifest": "manifest.jsonl",
        "output": "out",
        "designer": {
            "kind": "openai",
            "model": "gpt-test",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "requests_per_minute": 6000,
            "timeout_s": 5,
            "max_attempts": 2,
        },
        "painter": {"checkpoint": "tiny", "steps": 2, "resolution": 64, "batch_size": 2},
        **top,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeOpenAI(expected_key=FAKE_KEY) as fake:
        fake.script(REFUSE, ["refusal"] * 10)
        yield fake


def _by_id(table) -> dict:
    return {row["id"]: row for row in table.to_pylist()}


def test_rerun_takes_blueprints_from_the_table_and_calls_nothing(tmp_path, server):
    spec = load_spec(_job(tmp_path, server))
    first = run_job(spec, show_progress=False)
    calls = len(server.requests)
    assert calls == 3  # a, b, refused (the missing file fails before design)
    one = _by_id(read_provenance(spec.output, first.run_id))
    assert one["a"]["status"] == "ok" and one["a"]["designer"] == "openai:gpt-test"
    assert one["a"]["designer_attempts"] == 1 and one["a"]["tokens_out"] > 0
    assert one["a"]["blueprint"] != one["a"]["instruction"]
    assert one["a"]["blueprint_run_id"] == first.run_id
    assert (one["refused"]["status"], one["refused"]["error_stage"]) == ("failed", "design")
    table = _by_id(read_blueprints(spec.output, first.run_id))
    assert set(table) == {"a", "b", "refused", "missing"}  # one row per manifest row
    assert table["a"]["blueprint"] == one["a"]["blueprint"]
    assert table["a"]["design_key"] == one["a"]["design_key"]
    assert table["missing"]["status"] == "failed" and table["missing"]["error_stage"] == "fetch"

    second = run_job(spec, show_progress=False)
    # Only the refused row asks again (a failed design is not cached); the rest reuse the table.
    assert [r.text for r in server.requests[calls:] if REFUSE not in r.text] == []
    two = _by_id(read_provenance(spec.output, second.run_id))
    for row_id in ("a", "b"):
        assert two[row_id]["blueprint"] == one[row_id]["blueprint"]
        assert two[row_id]["designer_attempts"] == 0 and two[row_id]["tokens_in"] == 0
        assert two[row_id]["blueprint_run_id"] == first.run_id
        assert two[row_id]["output_sha256"] == one[row_id]["output_sha256"]  # same render key, same bytes


def test_cache_off_asks_again(tmp_path, server):
    spec = load_spec(_job(tmp_path, server))
    run_job(spec, show_progress=False)
    calls = len(server.requests)
    run_job(load_spec(_job(tmp_path, server), ["designer.cache=false"]), show_progress=False)
    assert len(server.requests) == 2 * calls


def test_design_then_paint(tmp_path, server, capsys):
    job = _job(tmp_path, server)
    assert cli.main(["run", str(job), "--stage", "design", "--no-progress"]) == cli.EXIT_OK
    spec = load_spec(job)
    out = Path(spec.output)
    assert not (out / "images").exists() and not (out / "provenance").exists()
    (design_run,) = [p.name.removeprefix("run=") for p in (out / "blueprints").glob("run=*")]
    assert len(list((out / "blueprints" / "journal").glob("*/*.json"))) == 2  # a and b, journaled at once
    designed = _by_id(read_blueprints(spec.output, design_run))
    assert designed["a"]["status"] == "ok" and designed["refused"]["status"] == "failed"
    record = json.loads((out / "runs" / f"{design_run}.json").read_text())
    assert record["stage"] == "design" and record["counts"] == {
        "ok": 2,
        "failed": 2,
        "skipped": 0,
        "rejected": 0,
    }
    assert "blueprints:" in capsys.readouterr().err
    calls = len(server.requests)

    assert cli.main(["run", str(job), "--stage", "paint", "--no-progress"]) == cli.EXIT_OK
    assert len(server.requests) == calls  # the paint stage never calls the designer
    painted = _by_id(read_provenance(spec.output))
    assert painted["a"]["status"] == painted["b"]["status"] == "ok"
    assert painted["a"]["blueprint"] == designed["a"]["blueprint"]
    assert painted["a"]["blueprint_run_id"] == design_run and painted["a"]["designer_attempts"] == 0
    assert Path(painted["a"]["output_uri"]).is_file()
    refused = painted["refused"]
    assert (refused["status"], refused["error_stage"]) == ("failed", "design")
    assert f"the designer failed for this row in run {design_run}" in refused["error"]
    assert painted["missing"]["error_stage"] == "fetch"
    assert not (out / "blueprints" / f"run={painted['a']['run_id']}").exists()  # paint writes no table


def test_paint_without_a_design_run_is_a_clear_error(tmp_path, server, capsys):
    job = _job(tmp_path, server)
    assert cli.main(["run", str(job), "--stage", "paint", "--no-progress"]) == cli.EXIT_BAD_INPUT
    assert "no blueprint tables" in capsys.readouterr().err


def test_paint_row_without_a_blueprint_fails_at_design(tmp_path, server):
    job = _job(tmp_path, server)
    spec = load_spec(job)
    run_job(load_spec(job, ["stage=design"]), show_progress=False)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        manifest.read_text()
        + json.dumps({"id": "new", "source": "images/b.png", "instruction": "new"})
        + "\n"
    )
    result = run_job(load_spec(job, ["stage=paint"]), show_progress=False)
    new = _by_id(read_provenance(spec.output, result.run_id))["new"]
    assert (new["status"], new["error_stage"]) == ("failed", "design")
    assert "no blueprint for design_key" in new["error"] and "stage: design" in new["error"]
