"""`dimflow report` over runs made by the tiny pipeline: figures equal an independent pyarrow/numpy
computation; the HTML parses, pairs every ok row shown and lists every failed row; gs:// works; a
headless Chromium renders the page to a non-blank PNG."""

from __future__ import annotations

import contextlib
import html.parser
import io
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from pipeline import cli
from pipeline.report import build_report, error_kind
from pipeline.run import read_provenance, run_job
from pipeline.spec import load_spec
from tests.e2e_support import local_case
from tests.fakes.gcs import DEFAULT_BUCKET, upload
from tests.fakes.openai_server import FakeOpenAI
from transforms.schema import STATUSES

pytestmark = pytest.mark.slow

KEY_ENV = "DIMFLOW_TEST_REPORT_KEY"
FAKE_KEY = "sk-dimflow-report-fake-11Ab"
PRICE_IN, PRICE_OUT = 2.5, 10.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two incremental runs of the e2e case with the fake designer: the second skips what the first
    painted and renders one changed row; one row's first designer call gets a 500 (a retry)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp, FakeOpenAI(expected_key=FAKE_KEY) as server:
        mp.setenv(KEY_ENV, FAKE_KEY)
        server.script("soft shadow", ["500", "ok"])
        designer = {
            "kind": "openai",
            "model": "gpt-test",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "max_attempts": 3,
        }
        case = local_case(
            root,
            incremental=True,
            designer=designer,
            prices={
                "openai:gpt-test": {
                    "input_per_million_tokens": PRICE_IN,
                    "output_per_million_tokens": PRICE_OUT,
                }
            },
        )
        spec = load_spec(case.spec_path)
        first = run_job(spec, show_progress=False).run_id
        lines = (root / "manifest.jsonl").read_text().splitlines()
        blue = json.loads(lines[1])
        blue["instruction"] = "put it on a marble table"  # blue-jpg renders anew
        lines[1] = json.dumps(blue)
        (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        second = run_job(spec, show_progress=False).run_id
    return case.output, first, second


def _independent(output: str, run_id: str) -> dict:
    table = read_provenance(output, run_id)
    rows = table.to_pylist()
    design = [r["design_s"] for r in rows if r["designer_attempts"]]
    paint = [r["paint_s"] for r in rows if r["paint_s"] is not None]
    started = min(r["started_at"] or r["finished_at"] for r in rows)
    finished = max(r["finished_at"] for r in rows)
    wall = (finished - started).total_seconds()
    tin = sum(r["tokens_in"] or 0 for r in rows if r["designer"])
    tout = sum(r["tokens_out"] or 0 for r in rows if r["designer"])
    return {
        "rows": table.num_rows,
        "by_status": {s: int(pc.sum(pc.equal(table.column("status"), s)).as_py() or 0) for s in STATUSES},
        "failures_by_stage": {
            stage: sum(1 for r in rows if r["status"] == "failed" and r["error_stage"] == stage)
            for stage in {r["error_stage"] for r in rows if r["status"] == "failed"}
        },
        "design_p90": float(np.quantile(design, 0.9)) if design else None,
        "paint_p50": float(np.quantile(paint, 0.5)) if paint else None,
        "tokens": (tin, tout),
        "cost": tin / 1e6 * PRICE_IN + tout / 1e6 * PRICE_OUT,
        "retries": sum(r["designer_attempts"] - 1 for r in rows if (r["designer_attempts"] or 0) > 1),
        "rows_per_hour": table.num_rows / wall * 3600,
    }


def test_figures_equal_an_independent_computation(runs):
    output, first, second = runs
    for run_id in (first, second):
        report, _table = build_report(output, run_id)
        expected = _independent(output, run_id)
        assert report.rows == expected["rows"] and report.by_status == expected["by_status"]
        assert report.failures_by_stage == expected["failures_by_stage"]
        assert (report.tokens_in, report.tokens_out) == expected["tokens"]
        assert report.cost == pytest.approx(expected["cost"], abs=1e-6)
        assert report.retries == expected["retries"]
        assert report.rows_per_hour == pytest.approx(expected["rows_per_hour"], rel=1e-3)
        for got, want in (
            (report.latency_s["design"]["p90"], expected["design_p90"]),
            (report.latency_s["paint"]["p50"], expected["paint_p50"]),
        ):
            assert (got is None and want is None) or got == pytest.approx(want, abs=2e-3)
    first_report, _ = build_report(output, first)
    assert first_report.retries == 1 and first_report.retried_rows == 1  # the scripted 500
    assert first_report.by_status["ok"] == 6 and first_report.tokens_out > 0
    latest, _ = build_report(output)  # default: the newest run
    assert latest.run_id == second and latest.previous["run_id"] == first
    assert latest.by_status == {"ok": 1, "failed": 7, "skipped": 5, "rejected": 0}


def test_cli_json_and_text(runs, capsys):
    output, first, second = runs
    assert cli.main(["report", output, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 13 and data["by_status"] == {"ok": 1, "failed": 7, "skipped": 5, "rejected": 0}
    assert data["judge"] is None  # no judge in these runs: no judge part
    assert data["run_id"] == second and data["previous"]["run_id"] == first
    assert cli.main(["report", output, "--run", first]) == 0
    text = capsys.readouterr().err
    assert f"run {first}" in text and "retried rows 1 (1 retries)" in text and "estimated cost $" in text
    assert cli.main(["report", output, "--run", "nope"]) == cli.EXIT_BAD_INPUT


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.failed_cells: list[str] = []
        self._in_failed = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "tr" and attrs.get("class") == "failed-row":
            self._in_failed = True
            self.failed_cells.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._in_failed = False

    def handle_data(self, data):
        if self._in_failed:
            self.failed_cells[-1] += data


def test_html_pairs_ok_rows_and_lists_failures(runs, tmp_path):
    output, first, _second = runs
    path = tmp_path / "report.html"
    assert cli.main(["report", output, "--run", first, "--html", str(path)]) == 0
    page = _Page()
    page.feed(path.read_text())
    report, table = build_report(output, first)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    after = [i for i in page.images if i.get("class") == "after"]
    before = [i for i in page.images if i.get("class") == "before"]
    assert len(after) == len(ok) and len(before) == sum(1 for r in ok if r["source_uri"])
    assert all(i["src"].startswith("data:image/jpeg;base64,") for i in after + before)
    assert len([i for i in page.images if i.get("class") == "plot"]) == 3
    failed = [r for r in table.to_pylist() if r["status"] == "failed"]
    assert len(page.failed_cells) == len(failed)
    for row in failed:
        assert any((row["id"] or "(unreadable row)") in cell for cell in page.failed_cells), row["id"]


def test_painter_licenses_rows_per_license_in_json_text_and_html(runs, capsys, tmp_path):
    output, first, _second = runs
    report, table = build_report(output, first)
    counts = Counter(r["painter_license"] for r in table.to_pylist())
    assert {e["license"]: e["rows"] for e in report.painter_licenses} == dict(counts)
    assert counts["apache-2.0"] >= 6 and counts[None] > 0  # rows that failed before their mode was known
    assert {e["license"]: e["commercial_use"] for e in report.painter_licenses} == {
        "apache-2.0": True,
        None: None,
    }
    assert cli.main(["report", output, "--run", first]) == 0
    text = capsys.readouterr().err
    assert "painter licenses" in text and "commercial use allowed" in text and "(none recorded)" in text
    path = tmp_path / "report.html"
    assert cli.main(["report", output, "--run", first, "--html", str(path)]) == 0
    page = path.read_text()
    assert "<h2>Painter licenses</h2>" in page
    assert (
        f"<tr><td>apache-2.0</td><td>commercial use allowed</td><td>{counts['apache-2.0']:,}</td></tr>"
        in page
    )


def test_a_non_commercial_license_is_flagged(tmp_path):
    """Rows painted under DIM's license (written here: no real DIM weights offline) read as not for commercial
    use; licenses are listed most rows first."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.report_html import render_html
    from transforms.schema import PROVENANCE_SCHEMA

    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    licenses = ["dim-non-commercial"] * 3 + ["acme-internal"] + [None]
    rows = [
        {"run_id": "r1", "id": f"row-{i}", "status": "ok", "finished_at": now, "painter_license": name}
        for i, name in enumerate(licenses)
    ]
    folder = tmp_path / "provenance" / "run=r1"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=PROVENANCE_SCHEMA), folder / "part-00000-of-00001.parquet"
    )
    report, table = build_report(str(tmp_path))
    assert report.painter_licenses == [
        {"license": "dim-non-commercial", "commercial_use": False, "rows": 3},
        {"license": "acme-internal", "commercial_use": None, "rows": 1},
        {"license": None, "commercial_use": None, "rows": 1},
    ]
    page = render_html(report, table)
    assert "<tr><td>dim-non-commercial</td><td>NOT for commercial use</td><td>3</td></tr>" in page
    assert "<tr><td>acme-internal</td><td>commercial use not known</td><td>1</td></tr>" in page


def test_report_reads_gcs(runs, gcs):
    output, first, second = runs
    root = Path(output)
    for path in [*root.glob("provenance/*/*.parquet"), *root.glob("runs/*.json")]:
        upload(DEFAULT_BUCKET, f"report/{path.relative_to(root)}", path.read_bytes())
    remote, _ = build_report(f"gs://{DEFAULT_BUCKET}/report")
    local, _ = build_report(output)
    assert remote.as_json() == local.as_json()


def _chromium() -> str:
    """The headless browser; installed with apt-get when missing (the test says so if that fails)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, text=True, timeout=900
    )
    found = shutil.which("chromium")
    assert found, f"chromium is missing and `apt-get install chromium` failed: {done.stderr[-2000:]}"
    return found


def test_page_renders_in_headless_chromium(runs, tmp_path):
    output, first, _ = runs
    page = tmp_path / "report.html"
    shot = tmp_path / "report.png"
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["report", output, "--run", first, "--html", str(page)]) == 0
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 10  # not a blank page
    colors = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colors > 200  # text, tables, plots and thumbnails, not a flat error page


def test_error_kind_drops_what_varies_per_row():
    a = error_kind("/data/m.jsonl row 9, field 'id': duplicate id 'sku-1' (first at /data/m.jsonl row 3)")
    b = error_kind("gs://b/m.jsonl row 12, field 'id': duplicate id 'sku-7' (first at gs://b/m.jsonl row 5)")
    assert a == b == "field 'id': duplicate id '…' (first at PATH row N)"
    assert error_kind("source not found: /x/y.png") == error_kind("source not found: gs://b/z.png")
