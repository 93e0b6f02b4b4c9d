"""The quality gate end to end with the REAL ``openai`` judge: jobs run through `dimflow run` (in process, as
users start them) with the tiny painters, and the judge talks to the fake OpenAI-compatible server on
127.0.0.1, which plays it with verdicts (and faults) scripted per row by the row's instruction.

One mixed job (``judged``) covers: a row above the bar after one paint; one below then above, repainted with
the next seed and the better kept; one that never passes and ends ``rejected``; judge outages (500s,
malformed replies beyond ``judge.max_attempts``, timeouts, a 400 that echoes the key) that leave rows ``ok``
with ``judge_error`` and never repaint; a text-to-image row judged on one image without preservation; a 200
that echoes the request headers and a verdict whose reason holds the key (scrubbed everywhere). `dimflow
status`, `dimflow report` (text, JSON, HTML ``--sort score``) then read what it wrote. Two jobs are refused
before anything is written (a bad rubric file, a missing key), and one runs with a rubric file of its own
(scale 5, ``reply: lines``).
"""

from __future__ import annotations

import contextlib
import html.parser
import io
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cli
from pipeline.run import read_provenance
from tests import quality_support as qs
from tests.fakes.openai_server import FakeOpenAI
from transforms.judge.rubric import DEFAULT_RUBRIC
from transforms.judge.scores import repaint_seed
from transforms.secrets import REDACTED

pytestmark = pytest.mark.slow

KEY_ENV = "DIMFLOW_TEST_JUDGE_E2E_KEY"
# Not in the shape of an OpenAI key (no "sk-"): only scrubbing by the variable's value can remove it.
KEY = "judge-e2e-secret-Q7m2Vt8Lx4Rb9Kp3"
MODEL = "judge-e2e"
JUDGE = f"openai:{MODEL}"
MAX_ATTEMPTS = 2
TIMEOUT_S = 2.0


def verdict(follow: float, quality: float, preservation: float | None = None, reason: str = "fine") -> str:
    """A ``reply:`` fault: a 200 whose content is a verdict in dimflow's rubric's JSON shape."""
    document: dict = {"instruction_following": follow, "visual_quality": quality}
    if preservation is not None:
        document["preservation"] = preservation
    document["reason"] = reason
    return "reply:" + json.dumps(document)


# row id -> source file (None: text-to-image); the instruction is "make {id} shine" (quality_support)
ROWS = {
    "pass": "pass.png",
    "second": "second.png",
    "never": "never.png",
    "e500": "e500.png",
    "broken": "broken.png",
    "slow": "slow.png",
    "leak": "leak.png",
    "echo": "echo.png",
    "t2i": None,
}
SCRIPT = {
    "pass": [verdict(9, 9, 9)],
    "second": [verdict(2, 2, 2), verdict(8, 8, 8)],
    "never": [verdict(3, 3, 3), verdict(4, 4, 4), verdict(1, 1, 1)],
    "e500": ["500"] * MAX_ATTEMPTS,
    "broken": ["malformed", "reply:not a verdict"],
    "slow": ["slow"] * MAX_ATTEMPTS,
    "leak": ["leak"],  # a 400 whose message echoes the Authorization header: not retried
    # a 200 echoing every request header (not a verdict: asked again), then a verdict whose reason holds the key
    "echo": ["echo", verdict(9, 8, 9, reason=f"the header said {KEY}, all good")],
    "t2i": [verdict(8, 7)],
}
STATUSES = {row_id: "ok" for row_id in ROWS} | {"never": "rejected"}


def instruction(row_id: str) -> str:
    return f"make {row_id} shine"


def judge_section(server: FakeOpenAI, **more) -> dict:
    return {
        "kind": "openai",
        "model": MODEL,
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "requests_per_minute": 60_000,
        "tokens_per_minute": 1_000_000_000,
        "max_concurrency": 4,
        "timeout_s": TIMEOUT_S,
        "max_attempts": MAX_ATTEMPTS,
        **more,
    }


def cli_run(args: list[str]) -> tuple[int, str, str]:
    """`dimflow ARGS` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs():
    """Every record dimflow's own loggers write (down to DEBUG) and what other loggers let through."""
    handler = _Records()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    ours = [logging.getLogger(name) for name in ("pipeline", "transforms")]
    levels = [logger.level for logger in ours]
    root = logging.getLogger()
    root.addHandler(handler)
    for logger in ours:
        logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.removeHandler(handler)
        for logger, level in zip(ours, levels, strict=True):
            logger.setLevel(level)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """No folded table cells or wrapped lines in what the commands print."""
    monkeypatch.setenv("COLUMNS", "400")


def one_row_per_manifest_row(table, rows: dict) -> dict[str, dict]:
    found = table.to_pylist()
    assert Counter(row["id"] for row in found) == Counter(list(rows)), Counter(row["id"] for row in found)
    return {row["id"]: row for row in found}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """The mixed job, run once through `dimflow run` (quality.min_overall 0.5, max_paints 3)."""
    directory = tmp_path_factory.mktemp("judge-e2e")
    with (
        FakeOpenAI(expected_key=KEY, slow_s=4 * TIMEOUT_S) as server,
        pytest.MonkeyPatch.context() as monkeypatch,
    ):
        monkeypatch.setenv(KEY_ENV, KEY)
        monkeypatch.setenv("COLUMNS", "400")  # no folded table cells in what the commands print
        for row_id, faults in SCRIPT.items():
            server.script(instruction(row_id), faults)
        job = qs.write_job(
            directory,
            ROWS,
            judge=judge_section(server),
            quality={"min_overall": 0.5, "max_paints": 3},
        )
        with captured_logs() as logs:
            code, out, err = cli_run(["run", str(job), "--no-progress"])
        assert code == cli.EXIT_OK, err[-3000:]
        (record_path,) = (directory / "out" / "runs").glob("*.json")
        record = json.loads(record_path.read_text())
        table = read_provenance(str(directory / "out"), record["run_id"])
        return {
            "dir": directory,
            "output": directory / "out",
            "record": record,
            "rows": one_row_per_manifest_row(table, ROWS),
            "requests": list(server.requests),
            "printed": out + err,
            "logs": list(logs),
        }


def requests_of(judged: dict, row_id: str) -> list:
    return [r for r in judged["requests"] if instruction(row_id) in r.text]


def attempts(row: dict) -> list[dict]:
    return json.loads(row["paint_attempts"])


def seed_of(judged: dict, row_id: str) -> int:
    lines = (judged["dir"] / "manifest.jsonl").read_text().splitlines()
    return {r["id"]: r["seed"] for r in map(json.loads, lines)}[row_id]


def sha_ok(attempt_or_row: dict) -> bool:
    import hashlib

    data = Path(attempt_or_row["output_uri"]).read_bytes()
    return hashlib.sha256(data).hexdigest() == attempt_or_row["output_sha256"]


def test_statuses_counts_and_the_summary(judged):
    rows = judged["rows"]
    assert {row_id: row["status"] for row_id, row in rows.items()} == STATUSES
    assert judged["record"]["counts"] == {"ok": 8, "failed": 0, "skipped": 0, "rejected": 1}
    assert all(row["judge"] == JUDGE and row["quality_key"] for row in rows.values())
    printed = " ".join(judged["printed"].split())
    assert "1 row(s) rejected: judged below quality.min_overall after quality.max_paints paints" in printed
    # every request carried the key (so the scrubbing below had something to remove), with the judge's settings
    assert judged["requests"] and all(r.authorized for r in judged["requests"])
    assert {(r.model, r.temperature, r.seed, r.max_tokens) for r in judged["requests"]} == {
        (MODEL, 0.0, 0, 512)
    }


def test_above_the_bar_stays_ok_after_one_paint(judged):
    row = judged["rows"]["pass"]
    (request,) = requests_of(judged, "pass")
    assert request.images == 2  # the source, then the edited image
    assert request.text == DEFAULT_RUBRIC.prompt("edit", instruction("pass"))
    assert (row["status"], row["paints"], row["judge_attempts"]) == ("ok", 1, 1)
    assert json.loads(row["judge_scores"]) == {
        "instruction_following": 9.0,
        "visual_quality": 9.0,
        "preservation": 9.0,
    }
    assert row["judge_overall"] == pytest.approx(0.9) and row["judge_reason"] == "fine"
    assert row["judge_error"] is None and row["error"] is None and row["judge_s"] > 0
    # the tokens are the usage the server reported for this row's one call
    assert (row["judge_tokens_in"], row["judge_tokens_out"]) == (
        request.prompt_tokens,
        request.completion_tokens,
    )
    (attempt,) = attempts(row)
    seed = seed_of(judged, "pass")
    assert (attempt["seed"], row["seed"], attempt["render_key"], attempt["output_uri"]) == (
        seed,
        seed,
        row["render_key"],
        row["output_uri"],
    )
    assert sha_ok(row) and attempt["overall"] == pytest.approx(0.9)


def test_below_then_above_is_repainted_with_the_next_seed_and_the_better_kept(judged):
    row = judged["rows"]["second"]
    first, second = attempts(row)
    seed = seed_of(judged, "second")
    assert (first["seed"], second["seed"]) == (seed, repaint_seed(seed, 2))
    assert first["render_key"] != second["render_key"] and first["output_uri"] != second["output_uri"]
    assert sha_ok(first) and sha_ok(second)  # both images exist, as written
    assert (first["overall"], second["overall"]) == (pytest.approx(0.2), pytest.approx(0.8))
    assert (row["status"], row["paints"], row["judge_attempts"]) == ("ok", 2, 2)
    assert (row["output_uri"], row["render_key"], row["seed"]) == (
        second["output_uri"],
        second["render_key"],
        second["seed"],
    )
    assert row["judge_overall"] == pytest.approx(0.8)
    sent = requests_of(judged, "second")
    assert len(sent) == 2
    assert row["judge_tokens_in"] == sum(r.prompt_tokens for r in sent)
    assert row["judge_tokens_out"] == sum(r.completion_tokens for r in sent)


def test_never_passing_ends_rejected_with_its_best_image_kept(judged):
    row = judged["rows"]["never"]
    paints = attempts(row)
    seed = seed_of(judged, "never")
    assert [a["seed"] for a in paints] == [repaint_seed(seed, k) for k in (1, 2, 3)]
    assert [a["overall"] for a in paints] == [pytest.approx(x) for x in (0.3, 0.4, 0.1)]
    assert all(sha_ok(a) for a in paints) and len({a["output_uri"] for a in paints}) == 3
    best = paints[1]
    assert (row["status"], row["paints"], row["judge_attempts"]) == ("rejected", 3, 3)
    assert (row["output_uri"], row["output_sha256"], row["seed"]) == (
        best["output_uri"],
        best["output_sha256"],
        best["seed"],
    )
    assert row["judge_overall"] == pytest.approx(0.4) and row["error"] is None and sha_ok(row)
    assert len(requests_of(judged, "never")) == 3


@pytest.mark.parametrize(
    ("row_id", "calls", "error"),
    [
        ("e500", MAX_ATTEMPTS, f"HTTP 500: scripted 500; gave up after {MAX_ATTEMPTS} attempts"),
        (
            "broken",
            MAX_ATTEMPTS,
            "malformed judge reply: expected one JSON object and nothing else, got 'not a verdict'; "
            f"gave up after {MAX_ATTEMPTS} attempts",
        ),
        ("slow", MAX_ATTEMPTS, f"timed out after {TIMEOUT_S:g} s; gave up after {MAX_ATTEMPTS} attempts"),
        ("leak", 1, f"HTTP 400: invalid credentials: Bearer {REDACTED} (not retried)"),
    ],
)
def test_a_judge_outage_keeps_the_row_ok_with_judge_error_and_never_repaints(judged, row_id, calls, error):
    row = judged["rows"][row_id]
    assert (row["status"], row["paints"], row["judge_attempts"]) == ("ok", 1, calls)
    assert row["judge_error"] == error
    assert row["judge_overall"] is None and row["judge_scores"] is None and row["error"] is None
    assert row["output_uri"] and sha_ok(row)  # the paid-for image is kept
    (attempt,) = attempts(row)
    assert attempt["judge_error"] == error and attempt["output_uri"] == row["output_uri"]
    assert len(requests_of(judged, row_id)) == calls  # no call after giving up, no repaint


def test_malformed_body_is_retried_and_named(judged):
    first, second = requests_of(judged, "broken")
    assert (first.fault, second.fault) == ("malformed", "reply:not a verdict")
    # the retry of the truncated body is in the log, with the reason
    assert any("judge row broken attempt 1/2 failed (malformed reply" in line for line in judged["logs"])


def test_a_text_to_image_row_is_judged_on_one_image_without_preservation(judged):
    row = judged["rows"]["t2i"]
    (request,) = requests_of(judged, "t2i")
    assert request.images == 1 and request.text == DEFAULT_RUBRIC.prompt("t2i", instruction("t2i"))
    assert row["mode"] == "t2i" and row["source_uri"] is None
    assert json.loads(row["judge_scores"]) == {"instruction_following": 8.0, "visual_quality": 7.0}
    assert row["judge_overall"] == pytest.approx(math.sqrt(8 * 7) / 10)
    assert (row["status"], row["paints"]) == ("ok", 1)


def test_the_key_is_nowhere_stored_printed_or_logged(judged):
    rows = judged["rows"]
    echo = rows["echo"]
    assert [r.fault for r in requests_of(judged, "echo")][0] == "echo"  # the server did echo the headers
    assert (echo["status"], echo["judge_attempts"], echo["judge_overall"]) == (
        "ok",
        2,
        pytest.approx(math.sqrt(9 * 8) / 10),
    )
    assert echo["judge_reason"] == f"the header said {REDACTED}, all good"
    assert REDACTED in rows["leak"]["judge_error"]
    # every cell of every table under the output, and every other file's bytes
    for path in judged["output"].rglob("*"):
        if path.suffix == ".parquet":
            for record in pq.read_table(path).to_pylist():
                assert KEY not in json.dumps(record, default=str), path
        elif path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in judged["printed"]
    assert judged["logs"] and not [line for line in judged["logs"] if KEY in line]
    assert KEY not in json.dumps(judged["record"])


def test_status_lists_the_rejected_id_with_its_image_to_review(judged):
    code, _out, err = cli_run(["status", str(judged["output"]), "--status", "rejected"])
    assert code == cli.EXIT_OK, err
    listed = [line for line in err.splitlines() if " rejected " in line and "│" in line]
    assert len(listed) == 1 and "never" in listed[0]
    assert f"to review: {judged['rows']['never']['output_uri']}" in listed[0]
    assert "1 rejected" in err


def test_report_text_and_json_show_the_histogram_and_rejected_ids(judged):
    rows = list(judged["rows"].values())
    scored = [r["judge_overall"] for r in rows if r["judge_overall"] is not None]
    bins = [0] * 10
    for value in scored:
        bins[min(math.floor(value * 10), 9)] += 1

    code, out, err = cli_run(["report", str(judged["output"]), "--json"])
    assert code == cli.EXIT_OK, err
    judge = json.loads(out)["judge"]
    assert [b["rows"] for b in judge["histogram"]] == bins and sum(bins) == 5
    assert judge["rejected_ids"] == ["never"] and judge["rejected_rows"] == 1
    assert (judge["judged_rows"], judge["judge_errors"]) == (5, 4)
    assert judge["judge_calls"] == len(judged["requests"]) == sum(r["judge_attempts"] for r in rows)
    assert judge["paints_per_row"] == {"1": 7, "2": 1, "3": 1}
    # the usage of every reply the judge read (a timed-out request's reply was never read)
    read = [r for r in judged["requests"] if r.fault != "slow"]
    assert judge["tokens_in"] == sum(r.prompt_tokens or 0 for r in read) > 0
    assert judge["tokens_out"] == sum(r.completion_tokens or 0 for r in read) > 0

    code, _out, err = cli_run(["report", str(judged["output"])])
    assert code == cli.EXIT_OK, err
    bars = [line.strip() for line in err.splitlines() if " | " in line and line.strip()[:1].isdigit()]
    assert len(bars) == 10
    for line, count in zip(bars, bins, strict=True):
        assert line.endswith(f" {count}") and ("#" in line) == (count > 0), line
    assert "rejected rows to review (1): never" in err


class _Cards(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        found = dict(attrs)
        if tag == "div" and "pair" in (found.get("class") or "").split():
            self.ids.append(found["data-id"])


def test_report_html_sorted_by_score_puts_the_worst_first(judged, tmp_path):
    page = tmp_path / "report.html"
    code, _out, err = cli_run(["report", str(judged["output"]), "--html", str(page), "--sort", "score"])
    assert code == cli.EXIT_OK, err
    cards = _Cards()
    cards.feed(page.read_text())
    rows = judged["rows"].values()
    expected = sorted(
        (r for r in rows if r["status"] in ("ok", "rejected")),
        key=lambda r: (r["judge_overall"] is None, r["judge_overall"] or 0.0, r["id"]),
    )
    assert cards.ids == [r["id"] for r in expected]
    assert cards.ids[0] == "never" and set(cards.ids[-4:]) == {"e500", "broken", "slow", "leak"}


# --- refused before anything is written -----------------------------------------------------------------


@pytest.fixture
def server():
    with FakeOpenAI(expected_key=KEY) as fake:
        yield fake


def test_a_bad_rubric_file_refuses_the_job_before_anything_is_written(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text(
        yaml.safe_dump(
            {"name": "theirs", "edit": "{instruction} and {image_caption}", "t2i": "{instruction}"}
        )
    )
    job = qs.write_job(tmp_path, {"a": "a.png"}, judge=judge_section(server, rubric="rubric.yaml"))
    code, _out, err = cli_run(["run", str(job), "--no-progress"])
    assert code == cli.EXIT_BAD_INPUT
    flat = " ".join(err.split())
    assert f"judge.rubric file {rubric}" in flat and "field edit uses placeholder(s) {image_caption}" in flat
    assert not (tmp_path / "out").exists() and server.requests == []


def test_a_missing_judge_key_refuses_the_job_before_anything_is_written(tmp_path, server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    job = qs.write_job(tmp_path, {"a": "a.png"}, judge=judge_section(server))
    code, _out, err = cli_run(["run", str(job), "--no-progress"])
    assert code == cli.EXIT_BAD_INPUT
    assert f"judge.api_key_env: environment variable {KEY_ENV} is not set" in " ".join(err.split())
    assert not (tmp_path / "out").exists() and server.requests == []


# --- a rubric file of the user's ---------------------------------------------------------------------------

RUBRIC = {
    "name": "five-point",
    "scale": 5,
    "reply": "lines",
    "labels": {
        "instruction_following": "Prompt Compliance",
        "visual_quality": "Visual Naturalness",
        "preservation": "Detail Integrity",
    },
    "edit": "Compare the two pictures. The edit asked for: {instruction}\nAnswer 'Prompt Compliance: N/5', ...",
    "t2i": "Rate the picture made from: {instruction}\nAnswer 'Prompt Compliance: N/5', ...",
}


def test_a_rubric_file_of_its_own_scale_5_and_lines_runs_end_to_end(tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    (tmp_path / "rubrics").mkdir()
    (tmp_path / "rubrics" / "five.yaml").write_text(yaml.safe_dump(RUBRIC))
    server.script(
        instruction("edited"),
        [
            "reply:Prompt Compliance: 4/5\nVisual Naturalness: 3\nDetail Integrity: 5/5\nThe sofa kept its shape."
        ],
    )
    server.script(
        instruction("drawn"), ["reply:**Prompt Compliance**: 5\nVisual Naturalness: 2/5\nToo dark."]
    )
    job = qs.write_job(
        tmp_path,
        {"edited": "edited.png", "drawn": None},
        judge=judge_section(server, rubric="rubrics/five.yaml"),
        quality={"min_overall": 0.65, "max_paints": 1},
    )
    code, _out, err = cli_run(["run", str(job), "--no-progress"])
    assert code == cli.EXIT_OK, err[-3000:]
    (record,) = (tmp_path / "out" / "runs").glob("*.json")
    table = read_provenance(str(tmp_path / "out"), json.loads(record.read_text())["run_id"])
    rows = one_row_per_manifest_row(table, {"edited": 1, "drawn": 1})
    edited, drawn = rows["edited"], rows["drawn"]
    # the prompts are the file's templates with the row's instruction, one per mode
    (sent_edit,) = [r for r in server.requests if instruction("edited") in r.text]
    (sent_t2i,) = [r for r in server.requests if instruction("drawn") in r.text]
    assert sent_edit.text == RUBRIC["edit"].replace("{instruction}", instruction("edited"))
    assert sent_t2i.text == RUBRIC["t2i"].replace("{instruction}", instruction("drawn"))
    assert (sent_edit.images, sent_t2i.images) == (2, 1)
    # N of 5 rescaled to 0-10; the other text is the reason
    assert json.loads(edited["judge_scores"]) == {
        "instruction_following": 8.0,
        "visual_quality": 6.0,
        "preservation": 10.0,
    }
    assert edited["judge_reason"] == "The sofa kept its shape."
    assert edited["judge_overall"] == pytest.approx(math.sqrt(8 * 6) / 10)
    assert json.loads(drawn["judge_scores"]) == {"instruction_following": 10.0, "visual_quality": 4.0}
    assert (
        drawn["judge_overall"] == pytest.approx(math.sqrt(10 * 4) / 10)
        and drawn["judge_reason"] == "Too dark."
    )
    # one paint each, so a row below the bar (0.693 passes 0.65; 0.632 does not) is rejected at once
    assert (edited["status"], drawn["status"]) == ("ok", "rejected")
    assert (edited["paints"], drawn["paints"]) == (1, 1) and edited["judge_error"] is None
    assert os.path.isfile(drawn["output_uri"])
