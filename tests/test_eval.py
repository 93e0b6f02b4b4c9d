"""`dimflow eval`: the eval table equals an independent computation over a synthetic provenance table (failed
rows, judge errors, rejected rows, text-to-image rows without preservation, rows without a category); the
command's text, JSON and CSV carry the same numbers; a spec without a judge is refused before any work.

``run_eval`` and ``assert_eval_matches`` are the helpers an end-to-end test (the fake judge over the
benchmark fixtures) calls: run `dimflow eval` on a benchmark with a spec, then check its JSON against the
independent computation over the run's provenance.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cli
from pipeline.eval import CSV_COLUMNS, EvalTable, csv_text, eval_table, footnote, title
from pipeline.eval_cli import benchmark_name
from pipeline.run import RunResult, read_provenance
from transforms.schema import PROVENANCE_SCHEMA

CRITERIA = ("instruction_following", "visual_quality", "preservation")
NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)


# --- helpers for end-to-end tests --------------------------------------------------------------------


def run_eval(benchmark: str | Path, spec: str | Path, output: str | Path, capsys, *extra: str) -> dict:
    """Run `dimflow eval BENCHMARK --spec SPEC --output OUTPUT --json` and return its JSON (asserting exit 0)."""
    capsys.readouterr()
    args = ["eval", str(benchmark), "--spec", str(spec), "--output", str(output), "--json", "--no-progress"]
    code = cli.main([*args, *extra])
    captured = capsys.readouterr()
    assert code == cli.EXIT_OK, captured.err[-3000:]
    return json.loads(captured.out)


def assert_eval_matches(data: dict, output: str | Path) -> dict:
    """The eval JSON of a finished run equals the independent computation over its provenance; returns it."""
    table = read_provenance(str(output), data["run_id"])
    assert table.num_rows > 0, f"no provenance of run {data['run_id']} under {output}"
    expected = independent(table.to_pylist())
    assert_same(data, expected)
    return expected


# --- the independent computation (plain Python, no duckdb) --------------------------------------------


def _criterion(row: dict, name: str) -> float | None:
    if row["judge_overall"] is None or row["status"] == "failed" or row["judge_scores"] is None:
        return None
    try:
        value = json.loads(row["judge_scores"]).get(name)
    except ValueError:
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _line(rows: list[dict], category: str | None) -> dict:
    judged = [r for r in rows if r["judge_overall"] is not None and r["status"] != "failed"]
    unscored = [r for r in rows if r not in judged and r["status"] != "failed"]
    line = {
        "category": category,
        "rows": len(rows),
        "judged": len(judged),
        "failed": sum(1 for r in rows if r["status"] == "failed"),
        "judge_errors": sum(1 for r in unscored if r["judge_error"] is not None),
        "unjudged": sum(1 for r in unscored if r["judge_error"] is None),
        "judge_overall": _mean([r["judge_overall"] for r in judged]),
    }
    for name in CRITERIA:
        line[name] = _mean([_criterion(r, name) for r in judged])
    return line


def independent(rows: list[dict]) -> dict:
    names = sorted({r["category"] for r in rows if r["category"] is not None})
    categories = [_line([r for r in rows if r["category"] == c], c) for c in names]
    if any(r["category"] is None for r in rows):
        categories.append(_line([r for r in rows if r["category"] is None], None))
    return {"categories": categories, "overall": _line(rows, None)}


def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=1e-9))


def assert_same(data: dict, expected: dict) -> None:
    got_lines = [*data["categories"], data["overall"]]
    want_lines = [*expected["categories"], expected["overall"]]
    assert [g["category"] for g in got_lines] == [w["category"] for w in want_lines]
    for got, want in zip(got_lines, want_lines, strict=True):
        for key, value in want.items():
            assert (
                _close(got[key], value) if isinstance(value, float) or value is None else got[key] == value
            ), (
                key,
                got,
                want,
            )


# --- a synthetic provenance table -----------------------------------------------------------------------


def prov(run: str, row_id: str | None, status: str, **extra) -> dict:
    base = {name: None for name in PROVENANCE_SCHEMA.names}
    base.update(run_id=run, id=row_id, status=status, finished_at=NOW, **extra)
    return base


def judged(run, row_id, category, scores, overall, *, status="ok", mode="edit", paints=1, **extra) -> dict:
    return prov(
        run,
        row_id,
        status,
        category=category,
        mode=mode,
        judge="openai:judge-test",
        judge_scores=json.dumps(scores),
        judge_overall=overall,
        judge_reason="fine",
        judge_attempts=paints,
        judge_tokens_in=100 * paints,
        judge_tokens_out=20 * paints,
        painter="dim:tiny-edit" if mode == "edit" else "dim:tiny-t2i",
        paints=paints,
        output_uri=f"/out/images/{row_id}/k.png",
        **extra,
    )


def synthetic_rows(run: str = "eval-run") -> list[dict]:
    return [
        judged(run, "a1", "add", {"instruction_following": 8, "visual_quality": 7, "preservation": 9}, 0.748),
        judged(
            run, "a2", "add", {"instruction_following": 6.5, "visual_quality": 9, "preservation": 5}, 0.570
        ),
        judged(
            run,
            "a3",
            "add",
            {"instruction_following": 2, "visual_quality": 3, "preservation": 4},
            0.245,
            status="rejected",
            paints=3,
        ),
        prov(run, "a4", "failed", category="add", error_stage="paint", error="RuntimeError: boom"),
        prov(run, "a5", "ok", category="add", judge="openai:judge-test", judge_error="TimeoutError: slow"),
        judged(
            run, "r1", "remove", {"instruction_following": 10, "visual_quality": 10, "preservation": 10}, 1.0
        ),
        prov(run, "r2", "ok", category="remove", judge="openai:judge-test", judge_error="no JSON"),
        judged(
            run, "t1", "style", {"instruction_following": 9, "visual_quality": 4}, 0.6, mode="t2i", paints=2
        ),
        judged(run, "t2", "style", {"instruction_following": 4, "visual_quality": 9}, 0.6, mode="t2i"),
        judged(run, "n1", None, {"instruction_following": 5, "visual_quality": 5, "preservation": 1}, 0.2236),
        prov(run, "n2", "failed", error_stage="validate", error="bad"),
        prov(run, None, "failed", error_stage="read", error="not JSON"),
        prov(run, "n3", "skipped", category="remove", output_uri="/out/images/n3/k.png"),
        # another run's rows are not this run's eval
        judged(
            "older", "a1", "add", {"instruction_following": 0, "visual_quality": 0, "preservation": 0}, 0.0
        ),
    ]


def write_provenance(output: Path, rows: list[dict]) -> None:
    for run in sorted({r["run_id"] for r in rows}):
        folder = output / "provenance" / f"run={run}"
        folder.mkdir(parents=True, exist_ok=True)
        part = [r for r in rows if r["run_id"] == run]
        pq.write_table(
            pa.Table.from_pylist(part, schema=PROVENANCE_SCHEMA), folder / "part-00000-of-00001.parquet"
        )


# --- the table ----------------------------------------------------------------------------------------


def test_eval_table_equals_an_independent_computation():
    rows = [r for r in synthetic_rows() if r["run_id"] == "eval-run"]
    table = eval_table(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA))
    expected = independent(rows)
    assert_same(table.as_json(), expected)
    by = {line.category: line for line in table.categories}
    # spelled out, so the independent computation is not the only witness
    assert (by["add"].rows, by["add"].judged, by["add"].failed, by["add"].judge_errors) == (5, 3, 1, 1)
    assert by["add"].judge_overall == pytest.approx((0.748 + 0.570 + 0.245) / 3)
    assert by["add"].instruction_following == pytest.approx((8 + 6.5 + 2) / 3)
    assert by["style"].preservation is None and by["style"].visual_quality == pytest.approx(6.5)
    assert by["remove"].unjudged == 1 and by["remove"].judge_errors == 1 and by["remove"].judged == 1
    assert by[None].rows == 3 and by[None].judged == 1 and by[None].failed == 2
    overall = table.overall
    assert (overall.rows, overall.judged, overall.failed, overall.judge_errors, overall.unjudged) == (
        13,
        7,
        3,
        2,
        1,
    )
    assert overall.preservation == pytest.approx((9 + 5 + 4 + 10 + 1) / 5)  # edit rows only
    assert overall.judge_overall == pytest.approx((0.748 + 0.570 + 0.245 + 1.0 + 0.6 + 0.6 + 0.2236) / 7)
    assert [line.category for line in table.categories] == ["add", "remove", "style", None]
    assert table.judges == ["openai:judge-test"] and table.max_paints == 3
    assert table.painters == ["dim:tiny-edit", "dim:tiny-t2i"]


def test_scores_that_are_not_numbers_are_left_out_never_guessed():
    rows = [
        judged("r", "a", "x", {"instruction_following": "9", "visual_quality": True, "preservation": 7}, 0.5),
        judged("r", "b", "x", {"instruction_following": 3, "visual_quality": 5, "preservation": 5}, 0.4),
        prov("r", "c", "ok", category="x", judge_scores="not json", judge_overall=0.9),
    ]
    table = eval_table(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA))
    assert_same(table.as_json(), independent(rows))
    (line,) = table.categories
    assert line.instruction_following == 3 and line.visual_quality == 5 and line.preservation == 6
    assert line.judged == 3 and line.judge_overall == pytest.approx((0.5 + 0.4 + 0.9) / 3)


def test_a_run_without_verdicts_has_no_means():
    rows = [
        prov("r", "a", "failed", category="add"),
        prov("r", "b", "ok", category="add", judge_error="down"),
    ]
    table = eval_table(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA))
    assert table.overall.judged == 0 and table.overall.judge_overall is None
    assert all(getattr(table.overall, name) is None for name in CRITERIA) and table.judges == []
    heading = title(table, "b.json", "dim:tiny", "openai:judge-x")
    assert heading == "eval of b.json: painter dim:tiny (nothing painted); judge openai:judge-x (no verdicts)"
    assert footnote(table, "/rubrics/official.yaml").startswith(
        "No row has a verdict; scores would be with the rubric file /rubrics/official.yaml"
    )


def test_csv_text_and_formula_cells():
    rows = [
        judged("r", "a", "=cmd()", {"instruction_following": 1, "visual_quality": 1, "preservation": 1}, 0.1)
    ]
    table = eval_table(pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA))
    parsed = list(csv.DictReader(io.StringIO(csv_text(table))))
    assert parsed[0]["category"] == "'=cmd()" and parsed[-1]["scope"] == "overall"


# --- the command ------------------------------------------------------------------------------------------


def write_spec(folder: Path, *, judge: bool = True) -> Path:
    spec = {
        "name": "eval-test",
        "manifest": "unused.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny"},
    }
    if judge:
        spec["judge"] = {"kind": "openai", "model": "judge-test", "base_url": "http://127.0.0.1:9/v1"}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def fake_run(monkeypatch):
    """`dimflow eval` with the job replaced by one that writes the synthetic provenance: the command's own
    parts (spec, output folder, reading back, the three formats) run for real."""
    calls: list = []

    def execute(spec, beam_args, console, *, show_progress=True, run_id=None, shard=None):
        calls.append(spec)
        write_provenance(Path(spec.output), synthetic_rows(run_id or "eval-run"))
        return RunResult(
            run_id=run_id or "eval-run",
            counts={},
            elapsed_s=1.0,
            table_dir="",
            run_record="",
            images_dir="",
        )

    monkeypatch.setattr("pipeline.execute.execute", execute)
    return calls


def _expected() -> dict:
    return independent([r for r in synthetic_rows() if r["run_id"] == "eval-run"])


def test_eval_json_text_and_csv_carry_the_same_numbers(tmp_path, fake_run, capsys):
    spec = write_spec(tmp_path)
    bench = tmp_path / "bench" / "singleturn.json"
    data = run_eval(bench, spec, tmp_path / "evalout", capsys)
    assert_same(data, _expected())
    assert data["run_id"] == "eval-run" and data["judges"] == ["openai:judge-test"]
    assert "dim:tiny-edit" in data["title"] and "openai:judge-test" in data["title"]
    assert "not the paper's numbers" in data["note"] and "best paint" in data["note"]
    (spec_used,) = fake_run
    assert spec_used.manifest == str(bench) and spec_used.output == str(tmp_path / "evalout")

    csv_path = tmp_path / "table.csv"
    assert (
        cli.main(
            [
                "eval",
                str(bench),
                "--spec",
                str(spec),
                "--output",
                str(tmp_path / "o2"),
                "--csv",
                str(csv_path),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = list(csv.DictReader(csv_path.open()))
    assert list(lines[0]) == list(CSV_COLUMNS)
    want = [*_expected()["categories"], _expected()["overall"]]
    assert [line["scope"] for line in lines] == ["category"] * (len(want) - 1) + ["overall"]
    for got, line in zip(lines, want, strict=True):
        assert got["category"] == (line["category"] or "")
        for key in ("rows", "judged", "failed", "judge_errors", "unjudged"):
            assert int(got[key]) == line[key]
        for key in (*CRITERIA, "judge_overall"):
            assert (got[key] == "" and line[key] is None) or float(got[key]) == pytest.approx(line[key])
    # the text table: one line per category and the overall line, the same numbers rounded
    flat = re.sub(r"\s+", " ", err)
    for line in want:
        label = line["category"] or ("overall" if line is want[-1] else "(no category)")
        means = (
            " ".join("-" if line[k] is None else f"{line[k]:.2f}" for k in CRITERIA)
            + " "
            + ("-" if line["judge_overall"] is None else f"{line['judge_overall']:.3f}")
        )
        cells = f"{label} │ {line['judged']} / {line['rows']} │ {line['failed']} │ {line['judge_errors']} │ {line['unjudged']} │ "
        assert re.sub(r" │ ", " ", cells + means) in re.sub(r" │ ", " ", flat), (label, flat[-3000:])
    assert "not the paper's numbers" in flat and f"csv: {csv_path}" in flat


def test_eval_default_output_is_named_after_the_benchmark(tmp_path, fake_run, capsys):
    spec = write_spec(tmp_path)
    assert (
        cli.main(
            ["eval", str(tmp_path / "gedit_en.jsonl.gz"), "--spec", str(spec), "--json", "--run-id", "r-7"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["run_id"] == "r-7" and data["output"] == str(tmp_path / "out" / "eval-gedit_en")
    assert fake_run[0].output == str(tmp_path / "out" / "eval-gedit_en")


@pytest.mark.parametrize(
    ("benchmark", "name"),
    [
        ("bench/imgedit/singleturn.json", "singleturn"),
        ("gedit_en.jsonl.gz", "gedit_en"),
        ("gs://bucket/bench/gedit.parquet", "gedit"),
        ("data/gedit/*.jsonl", "gedit"),
        ("weird name!.csv", "weird-name"),
        ("../..", "benchmark"),
    ],
)
def test_benchmark_names(benchmark, name):
    assert benchmark_name(benchmark) == name


def test_eval_refuses_a_spec_without_a_judge(tmp_path, fake_run, capsys):
    spec = write_spec(tmp_path, judge=False)
    assert cli.main(["eval", str(tmp_path / "b.json"), "--spec", str(spec)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "dimflow eval needs a judge" in err and "judge.kind: none" in err
    assert fake_run == []  # refused before any work
    assert (
        cli.main(
            [
                "eval",
                str(tmp_path / "b.json"),
                "--spec",
                str(spec),
                "--set",
                "stage=design",
                "--set",
                "judge.kind=openai",
                "--set",
                "judge.model=m",
            ]
        )
        == cli.EXIT_BAD_INPUT
    )
    assert "stage: design" in capsys.readouterr().err and fake_run == []
    assert (
        cli.main(["eval", str(tmp_path / "b.json"), "--spec", str(tmp_path / "none.yaml")])
        == cli.EXIT_BAD_INPUT
    )
    assert "job spec not found" in capsys.readouterr().err


def test_json_and_csv_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "b.json", "--spec", "s.yaml", "--json", "--csv", "x.csv"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_eval_table_type_is_json_serialisable():
    table = eval_table(pa.Table.from_pylist(synthetic_rows(), schema=PROVENANCE_SCHEMA))
    assert isinstance(table, EvalTable) and json.loads(json.dumps(table.as_json()))["overall"]["rows"] == 14
