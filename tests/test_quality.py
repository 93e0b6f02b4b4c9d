"""The quality gate end to end on the embedded runner: tiny painters, a scripted judge (tests/quality_support.py).

One manifest mixes every outcome (passes, repaints, rejections, judge outages, repaints that fail at paint,
write or judging, a text-to-image row, a row that fails before painting); each test below reads what its
run wrote. Every run must leave exactly one provenance row per manifest row.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.run import job_keys, read_provenance, run_job
from pipeline.spec import load_spec
from tests import quality_support as qs
from transforms.judge.scores import repaint_seed
from transforms.records import EditRecord, ManifestRow, RowRef

pytestmark = pytest.mark.slow

ROWS = {
    "pass": "pass.png",
    "second": "second.png",
    "never": "never.png",
    "tie": "tie.png",
    "outage": "outage.png",
    "judge-fails-later": "jf.png",
    "write-fails-later": "wf.png",
    "source-changes": "sc.png",
    "t2i": None,
    "missing": "missing.png",
}


def _script(directory: Path) -> dict:
    changed = []

    def change_source(_request):  # between paint 1 and its repaint: the source is replaced
        if not changed:
            (directory / "images" / "sc.png").write_bytes(b"\x89PNG not the fetched bytes")
            changed.append(True)
        return 0.2

    return {
        "pass": [0.9],
        "second": [0.2, 0.8],
        "never": [0.3, 0.4, 0.1],
        "tie": [0.3],
        "outage": ["fail"],
        "judge-fails-later": [0.2, "fail", 0.2],  # the rerun paints 3 times at 0.2
        "write-fails-later": [0.2],
        "source-changes": [change_source],
        "t2i": [0.2, 0.9],
    }


def _manifest(directory: Path) -> dict[str, dict]:
    lines = (directory / "manifest.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def _attempts(row: dict) -> list[dict]:
    return json.loads(row["paint_attempts"])


def _sha(uri: str) -> str:
    return hashlib.sha256(Path(uri).read_bytes()).hexdigest()


def _one_row_per_manifest_row(table, directory: Path) -> dict[str, dict]:
    rows = table.to_pylist()
    ids = [row["id"] for row in rows]
    assert Counter(ids) == Counter(list(_manifest(directory))), Counter(ids)
    return {row["id"]: row for row in rows}


def _plant_a_folder_at_the_second_paint(spec, directory: Path, row_id: str) -> None:
    """The image path of the row's second paint (its render key with the second seed) is a folder: that
    paint's write fails."""
    row = _manifest(directory)[row_id]
    source = str(directory / row["source"])
    record = EditRecord(
        ManifestRow(row_id, row["instruction"], source, row["seed"], None, RowRef("m", 1)),
        source_sha256=hashlib.sha256(Path(source).read_bytes()).hexdigest(),
    )
    key = job_keys(spec).with_render_key(record, repaint_seed(row["seed"], 2)).render_key
    (Path(spec.output) / "images" / row_id / f"{key[:16]}.png").mkdir(parents=True)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The mixed manifest, run once (incremental on, max_paints 3, min_overall 0.5), then rerun."""
    directory = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as monkeypatch:
        script = qs.install(monkeypatch, _script(directory))
        from transforms.painter.dim import pipeline as dim_pipeline

        real_loader, loads = dim_pipeline.load_dim_painter, []

        def counting_loader(checkpoint, task, **settings):
            loads.append(task)
            return real_loader(checkpoint, task, **settings)

        monkeypatch.setattr(dim_pipeline, "load_dim_painter", counting_loader)
        job = qs.write_job(directory, ROWS, incremental=True)
        (directory / "images" / "missing.png").unlink()
        spec = load_spec(job)
        _plant_a_folder_at_the_second_paint(spec, directory, "write-fails-later")
        first = run_job(spec, show_progress=False)
        first_loads = Counter(loads)
        first_calls = qs.calls(script)
        second = run_job(spec, show_progress=False)
        second_calls = {
            k: n - first_calls.get(k, 0) for k, n in qs.calls(script).items() if n > first_calls.get(k, 0)
        }
        unjudged = load_spec(job, ["judge.kind=none", "quality.min_overall=null", "quality.max_paints=1"])
        third = run_job(unjudged, show_progress=False)
    return {
        "dir": directory,
        "spec": spec,
        "script": script,
        "first": first,
        "rows": _one_row_per_manifest_row(read_provenance(spec.output, first.run_id), directory),
        "loads": first_loads,
        "calls": first_calls,
        "second": second,
        "rerun": _one_row_per_manifest_row(read_provenance(spec.output, second.run_id), directory),
        "rerun_calls": second_calls,
        "unjudged": _one_row_per_manifest_row(read_provenance(spec.output, third.run_id), directory),
    }


def test_statuses_and_counts(mixed):
    rows = mixed["rows"]
    assert {row_id: row["status"] for row_id, row in rows.items()} == {
        "pass": "ok",
        "second": "ok",
        "never": "rejected",
        "tie": "rejected",
        "outage": "ok",
        "judge-fails-later": "rejected",
        "write-fails-later": "rejected",
        "source-changes": "rejected",
        "t2i": "ok",
        "missing": "failed",
    }
    assert mixed["first"].counts == {"ok": 4, "failed": 1, "skipped": 0, "rejected": 5}
    record = json.loads(Path(mixed["first"].run_record).read_text())
    assert record["counts"] == mixed["first"].counts and record["rows"] == len(ROWS)
    missing = rows["missing"]
    assert missing["error_stage"] == "fetch" and missing["judge"] is None and missing["paints"] is None


def test_above_the_bar_after_one_paint(mixed):
    row = mixed["rows"]["pass"]
    (attempt,) = _attempts(row)
    seed = _manifest(mixed["dir"])["pass"]["seed"]
    assert (row["paints"], row["seed"], attempt["seed"], row["render_key"]) == (
        1,
        seed,
        seed,
        attempt["render_key"],
    )
    assert row["judge"] == "scripted:v1" and row["judge_overall"] == pytest.approx(0.9)
    assert json.loads(row["judge_scores"]) == {
        "instruction_following": 9.0,
        "visual_quality": 9.0,
        "preservation": 9.0,
    }
    assert row["judge_reason"] == "scripted verdict 0.9" and row["judge_error"] is None
    assert (row["judge_attempts"], row["judge_tokens_in"], row["judge_tokens_out"]) == (1, 100, 20)
    assert row["quality_key"] and row["error_stage"] is None
    assert _sha(row["output_uri"]) == row["output_sha256"]
    assert mixed["calls"]["pass"] == 1


def test_below_then_above_is_repainted_with_the_next_seed_and_kept(mixed):
    row = mixed["rows"]["second"]
    first, second = _attempts(row)
    seed = _manifest(mixed["dir"])["second"]["seed"]
    assert (first["seed"], second["seed"]) == (seed, repaint_seed(seed, 2))
    assert first["render_key"] != second["render_key"]
    assert (first["overall"], second["overall"]) == (pytest.approx(0.2), pytest.approx(0.8))
    for attempt in (first, second):  # both images exist, under their own render keys
        assert attempt["output_uri"].endswith(f"/second/{attempt['render_key'][:16]}.png")
        assert _sha(attempt["output_uri"]) == attempt["output_sha256"]
    kept = (row["render_key"], row["output_uri"], row["output_sha256"], row["seed"])
    assert kept == (second["render_key"], second["output_uri"], second["output_sha256"], second["seed"])
    assert (row["status"], row["paints"], row["judge_attempts"], row["judge_tokens_in"]) == ("ok", 2, 2, 200)
    assert row["judge_overall"] == pytest.approx(0.8) and row["judge_reason"] == "scripted verdict 0.8"
    assert row["painter"] == "dim:tiny-edit" and row["width"] == 32


def test_never_passing_is_rejected_with_the_best_not_the_last(mixed):
    row = mixed["rows"]["never"]
    attempts = _attempts(row)
    assert [a["overall"] for a in attempts] == [pytest.approx(x) for x in (0.3, 0.4, 0.1)]
    assert len({a["render_key"] for a in attempts}) == 3 and all(
        Path(a["output_uri"]).is_file() for a in attempts
    )
    best = attempts[1]
    assert (row["output_uri"], row["seed"], row["render_key"]) == (
        best["output_uri"],
        best["seed"],
        best["render_key"],
    )
    assert row["judge_overall"] == pytest.approx(0.4) and row["paints"] == 3
    assert row["error_stage"] is None and row["error"] is None  # the status says it: below the bar
    tie = mixed["rows"]["tie"]
    assert [a["overall"] for a in _attempts(tie)] == [pytest.approx(0.3)] * 3
    assert tie["output_uri"] == _attempts(tie)[0]["output_uri"]  # ties keep the earlier paint


def test_judge_outage_keeps_the_image_and_never_repaints(mixed):
    row = mixed["rows"]["outage"]
    assert (row["status"], row["paints"], mixed["calls"]["outage"]) == ("ok", 1, 1)
    assert row["judge_error"] == "scripted outage: 503 after 3 attempts" and row["judge_attempts"] == 3
    assert row["judge_overall"] is None and row["judge_scores"] is None and row["error"] is None
    assert _sha(row["output_uri"]) == row["output_sha256"]


def test_a_repaint_that_fails_keeps_the_best_judged_image(mixed):
    rows = mixed["rows"]
    judged = rows["judge-fails-later"]
    first, second = _attempts(judged)
    assert (judged["status"], judged["error_stage"], judged["paints"]) == ("rejected", "judge", 2)
    assert judged["judge_error"] == second["judge_error"] == "scripted outage: 503 after 3 attempts"
    assert judged["error"].startswith(f"paint 2 of 3 (seed {second['seed']}) was not judged: scripted outage")
    assert "kept paint 1 (judge_overall 0.200, below quality.min_overall 0.5)" in judged["error"]
    assert judged["output_uri"] == first["output_uri"] and Path(second["output_uri"]).is_file()

    written = rows["write-fails-later"]
    first, second = _attempts(written)
    assert (written["status"], written["error_stage"], written["paints"]) == ("rejected", "write", 2)
    assert second["output_uri"] is None and second["error"] and second["overall"] is None
    assert written["error"].startswith("paint 2 of 3") and "failed at write" in written["error"]
    assert (written["output_uri"], written["seed"]) == (first["output_uri"], first["seed"])

    changed = rows["source-changes"]
    assert (changed["status"], changed["error_stage"], changed["paints"]) == ("rejected", "paint", 2)
    assert "source changed since it was fetched" in changed["error"]
    assert _attempts(changed)[1]["error"].startswith("source changed since it was fetched")
    assert changed["output_uri"] == _attempts(changed)[0]["output_uri"]


def test_text_to_image_rows_are_judged_without_a_source(mixed):
    row = mixed["rows"]["t2i"]
    assert (row["mode"], row["status"], row["paints"]) == ("t2i", "ok", 2)
    assert set(json.loads(row["judge_scores"])) == {"instruction_following", "visual_quality"}
    seen = {key: had_source for key, had_source, size in qs.SEEN[mixed["script"]] if size > 0}
    assert seen["t2i"] is False and seen["pass"] is True


def test_the_painter_loads_once_across_the_repaint_stages(mixed):
    assert mixed["loads"] == Counter({"edit": 1, "t2i": 1})


def test_incremental_rerun_skips_ok_rows_and_repaints_rejected_ones(mixed):
    before, after = mixed["rows"], mixed["rerun"]
    assert {row_id: row["status"] for row_id, row in after.items() if row_id != "source-changes"} == {
        "pass": "skipped",
        "second": "skipped",
        "outage": "skipped",
        "t2i": "skipped",
        "never": "rejected",
        "tie": "rejected",
        "judge-fails-later": "rejected",
        "write-fails-later": "rejected",
        "missing": "failed",
    }
    for row_id in ("pass", "second", "outage", "t2i"):  # the earlier row's image, key, seed and verdict
        old, new = before[row_id], after[row_id]
        for column in ("output_uri", "output_sha256", "render_key", "seed", "quality_key", "judge"):
            assert new[column] == old[column], (row_id, column)
        assert (new["judge_overall"], new["judge_scores"]) == (old["judge_overall"], old["judge_scores"])
        assert new["paints"] is None and new["judge_attempts"] is None and row_id not in mixed["rerun_calls"]
    for row_id in ("never", "tie"):  # rejected is not done: painted and judged again
        assert mixed["rerun_calls"][row_id] == 3 and after[row_id]["paints"] == 3
    assert after["source-changes"]["quality_key"] != before["source-changes"]["quality_key"]


def test_without_a_bar_rows_are_scored_and_never_repainted(tmp_path, monkeypatch):
    script = qs.install(monkeypatch, {"low": [0.1]})
    job = qs.write_job(tmp_path, {"low": "low.png"}, quality={"min_overall": None, "max_paints": 1})
    result = run_job(load_spec(job), show_progress=False)
    (row,) = read_provenance(str(tmp_path / "out"), result.run_id).to_pylist()
    assert (row["status"], row["paints"], row["judge_overall"]) == ("ok", 1, pytest.approx(0.1))
    assert qs.calls(script) == {"low": 1}


def test_judge_preflight_refuses_before_anything_is_written(tmp_path, monkeypatch, capsys):
    qs.install(monkeypatch, {}, preflight_error="judge.api_key_env: JUDGE_TEST_KEY is not set")
    job = qs.write_job(tmp_path, {"a": "a.png"})
    assert cli.main(["run", str(job), "--no-progress"]) == cli.EXIT_BAD_INPUT
    assert "JUDGE_TEST_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # a design run judges nothing: the same job designs
    assert cli.main(["run", str(job), "--no-progress", "--stage", "design"]) == cli.EXIT_OK
    assert list((tmp_path / "out" / "blueprints").glob("run=*/*.parquet"))


def test_without_a_judge_an_image_whose_newest_row_is_rejected_is_painted_again(mixed):
    before, rows = mixed["rerun"], mixed["unjudged"]
    # tie kept its first paint (the render key a job without a judge paints): its newest row is rejected
    assert before["tie"]["render_key"] == _attempts(before["tie"])[0]["render_key"]
    assert (rows["tie"]["status"], rows["tie"]["render_key"]) == ("ok", before["tie"]["render_key"])
    assert rows["pass"]["status"] == "skipped" and rows["pass"]["output_uri"] == before["pass"]["output_uri"]
    assert all(row["judge"] is None and row["quality_key"] is None for row in rows.values())


def test_a_chunked_run_builds_its_judge_factory_once(tmp_path, monkeypatch):
    """The judge factory (which reads the rubric file) is built once per run, by the preflight, and every
    chunk's pipeline judges with it: the rubric is read once, and no chunk can judge with a file changed
    since the quality keys were made."""
    from pipeline import edit

    qs.install(monkeypatch, {})
    installed, built = edit.judge_factory, []

    def counting(spec):
        built.append(spec.name)
        return installed(spec)

    monkeypatch.setattr(edit, "judge_factory", counting)
    job = qs.write_job(tmp_path, {name: f"{name}.png" for name in "abcde"}, runner={"chunk_rows": 2})
    assert cli.main(["run", str(job), "--no-progress"]) == cli.EXIT_OK
    rows = read_provenance(str(tmp_path / "out")).to_pylist()
    assert sorted(row["id"] for row in rows) == list("abcde")  # three chunks, every row judged
    assert all(row["status"] == "ok" and row["judge"] == "scripted:v1" for row in rows)
    assert built == ["quality"]
