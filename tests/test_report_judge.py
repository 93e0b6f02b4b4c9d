"""`dimflow report` of a judged run (synthetic provenance: the judge stage is another module's): rows by status
with `rejected`, the judge_overall histogram, means per criterion and category, judge errors, paints per row,
judge tokens and cost, rejected ids; as JSON, text and HTML (inline SVG histogram, scored cards, --sort score)."""

from __future__ import annotations

import html.parser
import json
import math
import re
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.report import build_report
from pipeline.report_html import render_html
from pipeline.report_judge import REJECTED_LISTED
from tests.test_eval import independent, judged, prov, synthetic_rows, write_provenance
from transforms.schema import STATUSES

PRICE_IN, PRICE_OUT = 3.0, 12.0
JUDGE = "openai:judge-test"


def write_record(output: Path, run_id: str, prices: dict | None = None) -> None:
    (output / "runs").mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "started_at": "2026-01-02T03:00:00+00:00",
        "finished_at": "2026-01-02T03:05:00+00:00",
        "counts": {},
        "spec": {"prices": prices or {}},
    }
    (output / "runs" / f"{run_id}.json").write_text(json.dumps(record))


@pytest.fixture
def judged_output(tmp_path) -> Path:
    rows = synthetic_rows()
    write_provenance(tmp_path, rows)
    prices = {JUDGE: {"input_per_million_tokens": PRICE_IN, "output_per_million_tokens": PRICE_OUT}}
    write_record(tmp_path, "eval-run", prices)
    write_record(tmp_path, "older")
    return tmp_path


def run_rows() -> list[dict]:
    return [r for r in synthetic_rows() if r["run_id"] == "eval-run"]


def independent_judge(rows: list[dict]) -> dict:
    verdicts = [r for r in rows if r["judge_overall"] is not None and r["status"] != "failed"]
    bins = [0] * 10
    for r in verdicts:
        bins[min(math.floor(r["judge_overall"] * 10), 9)] += 1
    tin = sum(r["judge_tokens_in"] or 0 for r in rows if r["judge"])
    tout = sum(r["judge_tokens_out"] or 0 for r in rows if r["judge"])
    paints: dict[str, int] = {}
    for r in rows:
        if r["paints"] is not None:
            paints[str(r["paints"])] = paints.get(str(r["paints"]), 0) + 1
    return {
        "judged_rows": len(verdicts),
        "judge_errors": sum(1 for r in rows if r["judge_error"] is not None),
        "judge_calls": sum(r["judge_attempts"] or 0 for r in rows),
        "bins": bins,
        "tokens": (tin, tout),
        "cost": tin / 1e6 * PRICE_IN + tout / 1e6 * PRICE_OUT,
        "paints": dict(sorted(paints.items())),
        "rejected": sorted(r["id"] for r in rows if r["status"] == "rejected"),
    }


def test_judge_figures_equal_an_independent_computation(judged_output):
    report, _table = build_report(str(judged_output), "eval-run")
    rows = run_rows()
    want = independent_judge(rows)
    judge = report.judge
    assert report.by_status == {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    assert report.by_status == {"ok": 8, "failed": 3, "skipped": 1, "rejected": 1}
    assert (judge["judged_rows"], judge["judge_errors"], judge["judge_calls"]) == (
        want["judged_rows"],
        want["judge_errors"],
        want["judge_calls"],
    )
    assert [b["rows"] for b in judge["histogram"]] == want["bins"]
    assert [(b["from"], b["to"]) for b in judge["histogram"]] == [(i / 10, (i + 1) / 10) for i in range(10)]
    assert (judge["tokens_in"], judge["tokens_out"]) == want["tokens"]
    assert (
        judge["cost"] == pytest.approx(want["cost"], abs=1e-6)
        and judge["cost_by_judge"][JUDGE] == judge["cost"]
    )
    assert judge["paints_per_row"] == want["paints"] == {"1": 5, "2": 1, "3": 1}
    assert judge["rejected_rows"] == 1 and judge["rejected_ids"] == want["rejected"] == ["a3"]
    expected = independent(rows)
    assert judge["means"]["judge_overall"] == pytest.approx(expected["overall"]["judge_overall"])
    assert judge["means"]["preservation"] == pytest.approx(expected["overall"]["preservation"])
    assert [line["category"] for line in judge["by_category"]] == [
        c["category"] for c in expected["categories"]
    ]
    for got, line in zip(judge["by_category"], expected["categories"], strict=True):
        assert (got["rows"], got["judged"]) == (line["rows"], line["judged"])
        assert got["judge_overall"] == pytest.approx(line["judge_overall"])


def test_a_judge_without_a_price_has_no_cost_and_many_rejected_ids_are_cut(tmp_path):
    rows = [
        judged(
            "r",
            f"id-{i:03d}",
            "add",
            {"instruction_following": 1, "visual_quality": 1, "preservation": 1},
            0.1,
            status="rejected",
            paints=2,
        )
        for i in range(REJECTED_LISTED + 7)
    ]
    write_provenance(tmp_path, rows)
    report, _ = build_report(str(tmp_path))
    assert report.judge["cost"] is None and report.judge["cost_by_judge"] == {JUDGE: None}
    assert report.judge["rejected_rows"] == REJECTED_LISTED + 7
    assert report.judge["rejected_ids"] == [f"id-{i:03d}" for i in range(REJECTED_LISTED)]
    assert report.judge["histogram"][1]["rows"] == REJECTED_LISTED + 7  # 0.1 falls in [0.1, 0.2)


def test_a_run_without_a_judge_has_no_judge_part(tmp_path):
    write_provenance(tmp_path, [prov("r", "a", "ok", category="add"), prov("r", "b", "failed")])
    report, _ = build_report(str(tmp_path))
    assert report.judge is None and report.as_json()["judge"] is None


def test_cli_text_and_json(judged_output, capsys):
    assert cli.main(["report", str(judged_output), "--run", "eval-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by_status"]["rejected"] == 1 and data["judge"]["judged_rows"] == 7
    assert [b["rows"] for b in data["judge"]["histogram"]] == independent_judge(run_rows())["bins"]
    assert cli.main(["report", str(judged_output), "--run", "eval-run"]) == 0
    err = capsys.readouterr().err
    bins = independent_judge(run_rows())["bins"]
    bars = re.findall(r"(\d\.\d)-(\d\.\d) \| (#*) +(\d+)", err)
    assert [int(count) for *_, count in bars] == bins  # ten lines, the counts
    most = max(bins)
    for _lo, _hi, bar, count in bars:
        assert len(bar) == (round(int(count) / most * 40) or (1 if int(count) else 0))
    assert "rejected rows to review (1): a3" in err and "judge errors" in err
    assert "paints per row: 1 paint(s): 5 rows, 2 paint(s): 1 rows, 3 paint(s): 1 rows" in err
    assert "estimated cost $" in err and "│ rejected │" in err


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards: list[str] = []
        self.rects: list[int] = []
        self.scores: list[float] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "pair" in (attrs.get("class") or "").split():
            self.cards.append(attrs["data-id"])
        if tag == "rect" and attrs.get("class") == "bin":
            self.rects.append(int(attrs["data-rows"]))
        if tag == "div" and attrs.get("class") == "scores" and "data-overall" in attrs:
            self.scores.append(float(attrs["data-overall"]))


def test_html_histogram_scored_cards_and_sort_by_score(judged_output):
    report, table = build_report(str(judged_output), "eval-run")
    rows = run_rows()
    cards = [r for r in rows if r["status"] in ("ok", "rejected")]
    by_id = _Page()
    by_id.feed(render_html(report, table))
    assert by_id.rects == independent_judge(rows)["bins"]  # the inline SVG histogram
    assert by_id.cards == sorted(r["id"] for r in cards)  # default order unchanged: by id
    worst = _Page()
    page = render_html(report, table, sort="score")
    worst.feed(page)
    scored = sorted(
        (r for r in cards if r["judge_overall"] is not None), key=lambda r: (r["judge_overall"], r["id"])
    )
    unjudged = sorted(r["id"] for r in cards if r["judge_overall"] is None)
    assert worst.cards == [r["id"] for r in scored] + unjudged  # worst first, unjudged last
    assert worst.scores == [round(r["judge_overall"], 6) for r in scored]
    assert "<span class='badge'>rejected</span>" in page and "judge error: TimeoutError: slow" in page
    assert "instruction following 8 · visual quality 7 · preservation 9 · <b>overall 0.748</b>" in page
    assert "Rejected rows to review (1): a3" in page and "<svg class='histogram'" in page
    with pytest.raises(ValueError, match="sort must be"):
        render_html(report, table, sort="random")


def test_cli_html_sort_flag(judged_output, tmp_path, capsys):
    path = tmp_path / "r.html"
    assert (
        cli.main(["report", str(judged_output), "--run", "eval-run", "--html", str(path), "--sort", "score"])
        == 0
    )
    page = _Page()
    page.feed(path.read_text())
    worst = min((r for r in run_rows() if r["judge_overall"] is not None), key=lambda r: r["judge_overall"])
    assert page.cards[0] == worst["id"] == "n1" and page.cards[-2:] == ["a5", "r2"]  # unjudged last, by id
