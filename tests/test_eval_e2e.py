"""`dimflow eval` end to end over both benchmark layouts (tests/fixtures/bench: ImgEdit-Bench Basic's object of
rows, GEdit-Bench's fields), with the tiny painter and the real ``openai`` judge against the fake
OpenAI-compatible server, which scores each row by its instruction (and fails one row's judging).

What the command prints is checked against a computation of our own over the run's provenance, in
pyarrow (not pipeline/eval.py's duckdb query): the JSON table for the ImgEdit layout, the CSV file and the
text table for the GEdit layout (``--json`` and ``--csv`` are exclusive, and each layout is one pipeline run).
The GEdit run also has a bar (``quality.min_overall`` 0.5, ``max_paints`` 2), so best-of-N rows (one
repainted, one rejected) are in its table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from pipeline import cli
from pipeline.run import read_provenance
from tests.fakes.openai_server import FakeOpenAI
from tests.fixtures.bench import make_fixtures
from tests.test_eval import assert_eval_matches

pytestmark = pytest.mark.slow

KEY_ENV = "DIMFLOW_TEST_EVAL_E2E_KEY"
KEY = "eval-e2e-secret-3Vq8Lm2Tx7Rk"
MODEL = "judge-eval"
CRITERIA = ("instruction_following", "visual_quality", "preservation")
COUNTS = ("rows", "judged", "failed", "judge_errors", "unjudged")
MEANS = (*CRITERIA, "judge_overall")


def verdict(follow: int, quality: int, preservation: int) -> str:
    scores = {"instruction_following": follow, "visual_quality": quality, "preservation": preservation}
    return "reply:" + json.dumps({**scores, "reason": "scripted"})


# (instruction_following, visual_quality, preservation) by row position; None: the judging fails (500s)
SCORES = [(9, 8, 9), (6, 7, 8), None, (8, 6, 10), (7, 9, 6), (10, 10, 9), (5, 8, 7), (9, 5, 8), (6, 6, 6)]


def scripted(instructions: list[str]) -> dict[str, list[str]]:
    """Each row's verdict by its position (every one above 0.5), so categories differ; the third row's
    judging fails (a 500 on both attempts)."""
    return {
        text: ["500", "500"] if SCORES[index] is None else [verdict(*SCORES[index])]
        for index, text in enumerate(instructions)
    }


def imgedit_instructions(folder: Path) -> dict[str, str]:
    """instruction -> category, read from the committed ImgEdit-layout fixture (our own reading)."""
    rows = json.loads((folder / "imgedit" / "singleturn.json").read_text()).values()
    return {row["prompt"]: row["edit_type"] for row in rows}


def gedit_instructions(folder: Path) -> dict[str, str]:
    lines = (folder / "gedit" / "gedit_en.jsonl").read_text().splitlines()
    return {row["instruction"]: row["task_type"] for row in map(json.loads, filter(str.strip, lines))}


def eval_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


# --- the independent computation: pyarrow over the provenance -----------------------------------------------


def _criterion(table: pa.Table, judged: pa.ChunkedArray, name: str) -> pa.Array:
    """Criterion ``name`` of every judged row (parsed from judge_scores), null elsewhere."""
    values = []
    for text, is_judged in zip(table["judge_scores"].to_pylist(), judged.to_pylist(), strict=True):
        value = json.loads(text).get(name) if is_judged and text else None
        values.append(
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    return pa.array(values, pa.float64())


def _measures(table: pa.Table) -> pa.Table:
    status = pc.fill_null(table["status"], "")
    failed = pc.equal(status, "failed")
    judged = pc.and_(pc.is_valid(table["judge_overall"]), pc.invert(failed))
    unscored = pc.and_(pc.invert(judged), pc.invert(failed))
    columns = {
        "category": table["category"],
        "judged": pc.cast(judged, pa.int64()),
        "failed": pc.cast(failed, pa.int64()),
        "judge_errors": pc.cast(pc.and_(unscored, pc.is_valid(table["judge_error"])), pa.int64()),
        "unjudged": pc.cast(pc.and_(unscored, pc.is_null(table["judge_error"])), pa.int64()),
        "judge_overall": pc.if_else(judged, table["judge_overall"], pa.scalar(None, pa.float64())),
    }
    for name in CRITERIA:
        columns[name] = _criterion(table, judged, name)
    return pa.table(columns)


def _line(category, measures: pa.Table) -> dict:
    line = {"category": category, "rows": measures.num_rows}
    for name in COUNTS[1:]:
        line[name] = pc.sum(measures[name]).as_py() or 0
    for name in MEANS:
        line[name] = pc.mean(measures[name]).as_py()  # nulls skipped; None when every value is null
    return line


def independent(table: pa.Table) -> dict:
    measures = _measures(table)
    names = sorted(c for c in pc.unique(measures["category"]).to_pylist() if c is not None)
    lines = [_line(c, measures.filter(pc.equal(measures["category"], c))) for c in names]
    if measures["category"].null_count:
        lines.append(_line(None, measures.filter(pc.is_null(measures["category"]))))
    return {"categories": lines, "overall": _line(None, measures)}


def assert_line(got: dict, want: dict) -> None:
    for key, value in want.items():
        if key in MEANS and value is not None:
            assert got[key] is not None and math.isclose(got[key], value, abs_tol=1e-9), (key, got, want)
        else:
            assert got[key] == value, (key, got, want)


# --- the runs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    """Both layouts evaluated by `dimflow eval` against one fake judge: (ImgEdit --json, GEdit --csv)."""
    root = tmp_path_factory.mktemp("eval-e2e")
    bench = root / "bench"
    make_fixtures.build(bench)  # the committed manifests and their images, drawn here
    imgedit, gedit = imgedit_instructions(bench), gedit_instructions(bench)
    with FakeOpenAI(expected_key=KEY) as server, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(KEY_ENV, KEY)
        monkeypatch.setenv("COLUMNS", "400")
        for text, faults in scripted(list(imgedit)).items():
            server.script(text, faults)
        gedit_script = scripted(list(gedit))
        first, second = list(gedit)[:2]
        gedit_script[first] = [verdict(3, 3, 3), verdict(7, 8, 9)]  # repainted, the second kept
        gedit_script[second] = [verdict(2, 2, 2), verdict(1, 2, 2)]  # rejected, the first kept
        for text, faults in gedit_script.items():
            server.script(text, faults)
        spec = {
            "name": "eval-e2e",
            "manifest": "unused.jsonl",
            "output": "out",
            "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32, "batch_size": 4, "device": "cpu"},
            "judge": {
                "kind": "openai",
                "model": MODEL,
                "base_url": server.base_url,
                "api_key_env": KEY_ENV,
                "requests_per_minute": 60_000,
                "tokens_per_minute": 1_000_000_000,
                "max_attempts": 2,
            },
        }
        (root / "job.yaml").write_text(yaml.safe_dump(spec))
        job = str(root / "job.yaml")

        manifest = str(bench / "imgedit" / "singleturn.json")
        code, out, err = eval_cli(
            ["eval", manifest, "--spec", job, "--output", str(root / "e1"), "--json", "--no-progress"]
        )
        assert code == cli.EXIT_OK, err[-3000:]
        imgedit_calls = len(server.requests)

        csv_path = root / "gedit.csv"
        args = ["eval", str(bench / "gedit" / "gedit_en.jsonl"), "--spec", job, "--output", str(root / "e2")]
        args += ["--csv", str(csv_path), "--set", "quality.min_overall=0.5", "--set", "quality.max_paints=2"]
        code, _out, gedit_err = eval_cli([*args, "--no-progress"])
        assert code == cli.EXIT_OK, gedit_err[-3000:]
        (record,) = (root / "e2" / "runs").glob("*.json")
        return {
            "imgedit": json.loads(out),
            "imgedit_output": root / "e1",
            "imgedit_categories": imgedit,
            "imgedit_calls": imgedit_calls,
            "gedit_run": json.loads(record.read_text())["run_id"],
            "gedit_output": root / "e2",
            "gedit_categories": gedit,
            "gedit_calls": len(server.requests) - imgedit_calls,
            "gedit_first": first,
            "gedit_second": second,
            "csv": list(csv.DictReader(csv_path.open())),
            "text": gedit_err,
        }


def test_imgedit_json_table_equals_pyarrow_over_the_provenance(evals):
    data = evals["imgedit"]
    table = read_provenance(str(evals["imgedit_output"]), data["run_id"])
    assert table.num_rows == len(evals["imgedit_categories"]) == 9
    want = independent(table)
    assert [line["category"] for line in data["categories"]] == [
        line["category"] for line in want["categories"]
    ]
    for got, line in zip(data["categories"], want["categories"], strict=True):
        assert_line(got, line)
    assert_line(data["overall"], want["overall"])
    assert_eval_matches(data, evals["imgedit_output"])  # and test_eval's plain-Python computation agrees
    # the layout's categories (edit_type) reached provenance, each row under its own
    by_instruction = dict(zip(table["instruction"].to_pylist(), table["category"].to_pylist(), strict=True))
    assert by_instruction == evals["imgedit_categories"]
    overall = data["overall"]
    assert (overall["rows"], overall["judged"], overall["judge_errors"], overall["failed"]) == (9, 8, 1, 0)
    assert data["judges"] == [f"openai:{MODEL}"] and data["painters"] == ["dim:tiny-edit"]
    assert data["max_paints"] == 1 and "best paint" not in data["note"]
    assert evals["imgedit_calls"] == sum(table["judge_attempts"].to_pylist()) == 8 + 2


def test_gedit_csv_and_text_table_equal_pyarrow_over_the_provenance(evals):
    table = read_provenance(str(evals["gedit_output"]), evals["gedit_run"])
    assert table.num_rows == len(evals["gedit_categories"]) == 6
    want = independent(table)
    lines = [*want["categories"], want["overall"]]
    rows = evals["csv"]
    assert [r["scope"] for r in rows] == ["category"] * len(want["categories"]) + ["overall"]
    for got, line in zip(rows, lines, strict=True):
        assert got["category"] == (line["category"] or "")
        parsed = {name: int(got[name]) for name in COUNTS}
        parsed.update({name: float(got[name]) if got[name] else None for name in MEANS})
        assert_line({**parsed, "category": line["category"]}, line)
    # the text table: the same numbers, rounded as printed
    printed = {}
    for text_line in evals["text"].splitlines():
        cells = [cell.strip() for cell in text_line.split("│")[1:-1]]
        if len(cells) == 9:
            printed[cells[0]] = cells[1:]
    for line in lines:
        label = line["category"] or "overall"
        means = ["-" if line[n] is None else f"{line[n]:.2f}" for n in CRITERIA]
        means.append("-" if line["judge_overall"] is None else f"{line['judge_overall']:.3f}")
        counts = [f"{line['judged']} / {line['rows']}", *(str(line[n]) for n in COUNTS[2:])]
        assert printed[label] == counts + means, (label, printed)
    assert "best paint, not of single paints" in " ".join(evals["text"].split())
    by_instruction = dict(zip(table["instruction"].to_pylist(), table["category"].to_pylist(), strict=True))
    assert by_instruction == evals["gedit_categories"]


def test_gedit_best_of_n_rows_are_scored_by_their_kept_paint(evals):
    table = read_provenance(str(evals["gedit_output"]), evals["gedit_run"])
    rows = {row["instruction"]: row for row in table.to_pylist()}
    repainted, rejected = rows[evals["gedit_first"]], rows[evals["gedit_second"]]
    assert (repainted["status"], repainted["paints"]) == ("ok", 2)
    assert repainted["judge_overall"] == pytest.approx(math.sqrt(7 * 8) / 10)
    assert (rejected["status"], rejected["paints"]) == ("rejected", 2)
    assert rejected["judge_overall"] == pytest.approx(0.2)  # the first paint's, better than the second's
    assert [a["overall"] for a in json.loads(rejected["paint_attempts"])] == [
        pytest.approx(0.2),
        pytest.approx(math.sqrt(1 * 2) / 10),
    ]
    assert evals["gedit_calls"] == sum(r["judge_attempts"] for r in rows.values()) == 2 + 2 + 2 + 3
