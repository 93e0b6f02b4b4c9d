"""The same pipeline with manifest, source images and outputs on gs:// (gcp-storage-emulator)."""

from __future__ import annotations

import hashlib

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from tests.e2e_support import check_statuses, write_case
from tests.fakes.gcs import DEFAULT_BUCKET, list_names, upload

pytestmark = pytest.mark.slow


def test_pipeline_on_gcs(gcs, tmp_path):
    prefix = "jobs/e2e"
    case = write_case(
        tmp_path,
        output=f"gs://{DEFAULT_BUCKET}/out",
        manifest_dir=f"gs://{DEFAULT_BUCKET}/{prefix}",
        put=lambda name, data: upload(DEFAULT_BUCKET, f"{prefix}/{name}", data),
    )
    result = run_job(load_spec(case.spec_path), show_progress=False)
    table = read_provenance(case.output, result.run_id)
    check_statuses(table)
    for row in table.to_pylist():
        if row["status"] == "ok":
            assert row["mode"] == "t2i" or row["source_uri"].startswith(
                f"gs://{DEFAULT_BUCKET}/{prefix}/images/"
            )
            assert row["output_uri"].startswith(f"gs://{DEFAULT_BUCKET}/out/images/")
            with FileSystems.open(row["output_uri"]) as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == row["output_sha256"]
    names = list_names(DEFAULT_BUCKET, "out/")
    assert f"out/runs/{result.run_id}.json" in names
    assert any(name.startswith(f"out/provenance/run={result.run_id}/part-") for name in names)
    assert any(name.startswith(f"out/blueprints/run={result.run_id}/part-") for name in names)
