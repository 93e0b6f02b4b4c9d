"""End to end on the embedded Beam runner with painter.kind qwen-image-edit: the shared mixed manifest (edit
and text-to-image rows, good and bad) through the tiny Qwen checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline import cli
from pipeline.run import read_provenance
from tests.e2e_support import check_statuses, local_case

pytestmark = pytest.mark.slow


def test_mixed_manifest_through_the_qwen_kind(tmp_path):
    case = local_case(tmp_path / "qwen", painter={"kind": "qwen-image-edit", "steps": 2})
    console = io.StringIO()
    with contextlib.redirect_stderr(console):
        exit_code = cli.main(["run", str(case.spec_path), "--no-progress"])
    assert exit_code == cli.EXIT_OK, console.getvalue()
    (record_path,) = (Path(case.output) / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    table = read_provenance(case.output, record["run_id"])
    check_statuses(table, painter_kind="qwen-image-edit")
    ok = [row for row in table.to_pylist() if row["status"] == "ok"]
    assert {row["painter"] for row in ok if row["mode"] == "edit"} == {"qwen-image-edit:tiny-edit"}
    assert {(row["guidance_scale"], row["steps"], row["dtype"], row["device"]) for row in ok} == {
        (4.0, 2, "float32", "cpu")
    }
    for row in ok:
        with FileSystems.open(row["output_uri"]) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == row["output_sha256"]
    assert record["spec"]["painter"]["kind"] == "qwen-image-edit"
