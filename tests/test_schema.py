"""Render and design keys: stable for equal inputs, different when anything that changes pixels does."""

from __future__ import annotations

import pyarrow as pa
import pytest

from transforms.schema import PROVENANCE_SCHEMA, design_key, render_key

BASE = dict(
    source_sha256="a" * 64,
    instruction="make the background white",
    designer_config={"kind": "none"},
    painter_config={"steps": 30, "guidance_scale": 7.5, "resolution": 1024},
    checkpoint_sha256="c" * 64,
    seed=233,
)


def test_render_key_is_stable_and_hex():
    assert render_key(**BASE) == render_key(**dict(BASE))
    assert len(render_key(**BASE)) == 64 and int(render_key(**BASE), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"source_sha256": "b" * 64},
        {"source_sha256": None},
        {"instruction": "make the background black"},
        {"designer_config": {"kind": "openai", "model": "gpt-4o"}},
        {"painter_config": {"steps": 20, "guidance_scale": 7.5, "resolution": 1024}},
        {"painter_config": {"steps": 30, "guidance_scale": 4.0, "resolution": 1024}},
        {"painter_config": {"steps": 30, "guidance_scale": 7.5, "resolution": 512}},
        {"checkpoint_sha256": "d" * 64},
        {"seed": 234},
    ],
)
def test_render_key_changes_with_every_input(change):
    assert render_key(**{**BASE, **change}) != render_key(**BASE)


def test_design_key_ignores_painter_inputs():
    kwargs = {k: BASE[k] for k in ("source_sha256", "instruction", "designer_config")}
    assert design_key(**kwargs) == design_key(**kwargs)
    assert design_key(**{**kwargs, "instruction": "other"}) != design_key(**kwargs)


def test_provenance_columns_match_design_contract():
    expected = (
        "run_id id status error_stage error mode source_uri source_sha256 source_width source_height "
        "instruction blueprint designer design_key designer_attempts tokens_in tokens_out design_s painter "
        "checkpoint_sha256 seed steps guidance_scale width height dtype device batch_size paint_s render_key "
        "output_uri output_sha256 started_at finished_at worker metadata versions"
    ).split()
    # DESIGN.md's columns keep their order; columns dimflow added since are listed here on purpose.
    added = ["blueprint_run_id", "vae_dtype", "painter_license", "category", "quality_key"]
    added += ["judge", "judge_scores", "judge_overall", "judge_reason", "judge_error", "judge_attempts"]
    added += ["judge_tokens_in", "judge_tokens_out", "judge_s", "paints", "paint_attempts"]
    added += ["mask_uri", "mask_sha256", "locked_fraction", "locked_max_abs_diff"]
    assert [name for name in PROVENANCE_SCHEMA.names if name not in added] == expected
    assert set(PROVENANCE_SCHEMA.names) - set(expected) == set(added)


def test_provenance_written_before_painter_license_still_reads(tmp_path):
    """Part files from before the column existed read with it null, and the report counts those rows as
    having no license recorded (columns are only ever added: README *Outputs*)."""
    import datetime as dt

    import pyarrow.parquet as pq

    from pipeline.report import build_report
    from pipeline.run import read_provenance

    older = pa.schema([f for f in PROVENANCE_SCHEMA if f.name != "painter_license"])
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = [
        {"run_id": "r0", "id": f"row-{i}", "status": "ok", "mode": "edit", "finished_at": now}
        for i in range(3)
    ]
    folder = tmp_path / "provenance" / "run=r0"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=older), folder / "part-00000-of-00001.parquet")

    table = read_provenance(str(tmp_path))
    assert table.schema == PROVENANCE_SCHEMA and table.num_rows == 3
    assert table.column("painter_license").to_pylist() == [None] * 3
    report, _rows = build_report(str(tmp_path))
    assert report.painter_licenses == [{"license": None, "commercial_use": None, "rows": 3}]
