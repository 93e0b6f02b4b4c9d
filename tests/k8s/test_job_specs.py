"""jobs/bulk-edit.yaml and jobs/catalog-rerender.yaml are valid dimflow specs, and the chart's
default specs are exactly these files."""

from __future__ import annotations

import yaml

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
