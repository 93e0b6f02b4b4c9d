"""The ``local`` judge inside the pipeline: `dimflow run` with ``judge.kind: local`` on the tiny random
Qwen2.5-VL the designer tests build (tests/designer/tiny_vlm.py), the tiny painters, and a bar with three
paints allowed.

Random weights write noise, so the honest outcome is a judge error on every row: the rows stay ``ok`` with
their images, ``judge_error`` naming the malformed reply, one judge call each and no repaint. The model is
loaded once in the process, though the job has a judge stage per possible paint (Judge1..Judge3).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.run import read_provenance
from tests import quality_support as qs
from tests.designer.tiny_vlm import build_tiny_qwen25vl
from transforms.vlm import local_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl-judge-e2e") / "model")


def test_local_judge_in_the_pipeline(tmp_path, tiny_vlm, monkeypatch):
    loads: list[tuple] = []
    real_load = local_model._load

    def counting_load(model_id, device, dtype, field, setup_error):
        loads.append((model_id, device, dtype, field))
        return real_load(model_id, device, dtype, field, setup_error)

    monkeypatch.setattr(local_model, "_load", counting_load)
    from transforms.judge.local_judge import LocalJudge

    setups: list[int] = []
    real_setup = LocalJudge.setup

    def counting_setup(self):
        setups.append(id(self))
        return real_setup(self)

    monkeypatch.setattr(LocalJudge, "setup", counting_setup)
    job = qs.write_job(
        tmp_path,
        {"edit-row": "edit.png", "t2i-row": None},
        judge={
            "kind": "local",
            "model": str(tiny_vlm),
            "max_tokens": 8,
            "max_concurrency": 2,
            "device": "cpu",
            "dtype": "float32",
        },
        quality={"min_overall": 0.5, "max_paints": 3},
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["run", str(job), "--no-progress"])
    assert code == cli.EXIT_OK, err.getvalue()[-3000:]
    (record,) = (tmp_path / "out" / "runs").glob("*.json")
    table = read_provenance(str(tmp_path / "out"), json.loads(record.read_text())["run_id"])
    rows = {row["id"]: row for row in table.to_pylist()}
    assert sorted(rows) == ["edit-row", "t2i-row"] and table.num_rows == 2
    for row in rows.values():
        assert (row["status"], row["paints"], row["judge_attempts"]) == ("ok", 1, 1), row
        assert row["judge"] == f"local:{tiny_vlm}"
        assert row["judge_error"].startswith("malformed judge reply: "), row["judge_error"]
        assert row["judge_overall"] is None and row["judge_scores"] is None and row["error"] is None
        assert row["judge_tokens_in"] > 0 and 1 <= row["judge_tokens_out"] <= 8
        assert Path(row["output_uri"]).is_file() and row["quality_key"]
        (attempt,) = json.loads(row["paint_attempts"])
        assert attempt["judge_error"] == row["judge_error"]
    assert rows["t2i-row"]["mode"] == "t2i" and rows["edit-row"]["mode"] == "edit"
    # one load in the process, for every judge stage (and the driver's preflight loads nothing)
    print("SETUPS", setups)
    assert loads == [(str(tiny_vlm), "cpu", "float32", "judge.model")]
