"""jobs/bulk-edit.yaml, jobs/catalog-rerender.yaml and jobs/bulk-edit-judged.yaml are valid dimflow specs,
and the chart's default specs are exactly the first two files."""

from __future__ import annotations

import json

import yaml

from pipeline import cli
from pipeline.spec import load_spec
from tests.k8s import support

JOBS = support.REPO / "jobs"


def test_bulk_edit_spec():
    spec = load_spec(JOBS / "bulk-edit.yaml")
    assert spec.name == "bulk-edit" and not spec.incremental
    assert (spec.designer.kind, spec.designer.model, spec.designer.api_key_env) == (
        "openai",
        "gpt-4o",
        "OPENAI_API_KEY",
    )
    assert spec.painter.checkpoints() == {"edit": "stdKonjac/DIM-4.6B-Edit", "t2i": "stdKonjac/DIM-4.6B-T2I"}
    assert (spec.painter.batch_size, spec.painter.dtype) == (8, "bfloat16")
    assert spec.output.startswith("gs://") and spec.manifest.startswith("gs://")


def test_catalog_rerender_spec_is_incremental_bulk_edit():
    bulk = load_spec(JOBS / "bulk-edit.yaml").model_dump()
    rerender = load_spec(JOBS / "catalog-rerender.yaml").model_dump()
    assert rerender["incremental"] is True
    differing = {key for key in bulk if bulk[key] != rerender[key]}
    assert differing == {"name", "manifest", "output", "incremental"}


def test_chart_defaults_are_the_job_files():
    values = support.chart().values
    assert values["jobSpec"] == yaml.safe_load((JOBS / "bulk-edit.yaml").read_text())
    assert values["cronJob"]["jobSpec"] == yaml.safe_load((JOBS / "catalog-rerender.yaml").read_text())


def test_bulk_edit_judged_spec_is_bulk_edit_with_a_quality_gate(tmp_path, capsys):
    path = JOBS / "bulk-edit-judged.yaml"
    spec = load_spec(path)
    bulk = load_spec(JOBS / "bulk-edit.yaml").model_dump()
    judged = spec.model_dump()
    differing = {key for key in bulk if bulk[key] != judged[key]}
    assert differing == {"name", "output", "judge", "quality", "prices"}
    assert (spec.judge.kind, spec.judge.model, spec.judge.rubric) == ("openai", "gpt-4o", None)
    assert (spec.quality.min_overall, spec.quality.max_paints) == (0.6, 3)
    assert "openai:gpt-4o" in spec.prices  # the provenance `judge` value of this judge: the report prices it
    assert spec.secret_env_names() == ["OPENAI_API_KEY"]
    # `dimflow validate --spec` takes it (a manifest of our own: the spec's is in a bucket)
    source = tmp_path / "a.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "source": str(source), "instruction": "white background"})
        + "\n"
        + json.dumps({"id": "b", "instruction": "a red chair"})
        + "\n"
    )
    assert cli.main(["validate", str(manifest), "--spec", str(path)]) == cli.EXIT_OK
    assert "2 rows, 2 valid, 0 with problems" in capsys.readouterr().err
