"""benchmarks/gpu.sh cannot rot: its CPU dry mode runs here end to end (build, load, measure, report), and
the bootstrap fails fast, saying why, when no package index is reachable."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.sh"
NUMBER = r"(\d+(?:\.\d+)?)"


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-bench-cache")


def figures(output: str) -> dict:
    """Every figure the benchmark prints, parsed (a missing one fails the test)."""

    def one(pattern: str) -> tuple[str, ...]:
        found = re.findall(pattern, output, flags=re.MULTILINE)
        assert len(found) == 1, f"expected one line matching {pattern!r} in:\n{output}"
        return found[0] if isinstance(found[0], tuple) else (found[0],)

    out = {"load_s": float(one(rf"^model load time: {NUMBER} s")[0]), "batches": {}}
    for batch in (1, 4, 8):
        rate, peak = one(
            rf"^production batch {batch}: {NUMBER} edits/hour \(\d+ edits in [\d.]+ s\); peak RSS \(whole process, "
            rf"GB\): {NUMBER}$"
        )
        out["batches"][batch] = (float(rate), float(peak))
    out["reference"] = float(one(rf"^reference batch 1: {NUMBER} edits/hour")[0])
    out["ratio_1"] = float(one(rf"^ratio production ÷ reference at batch 1: {NUMBER}$")[0])
    out["ratio_best"] = float(
        one(rf"^ratio production \(best, batch \d\) ÷ reference at batch 1: {NUMBER}$")[0]
    )
    out["fraction"] = float(
        one(rf"^fraction of the ~5,900 edits/H100-hour estimate \(DESIGN.md\): {NUMBER} ")[0]
    )
    last = output.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"RESULT edits_per_hour={NUMBER} ratio=(\d+\.\d\d|nan) batch=(\d+) peak_mem_gb={NUMBER}", last
    )
    assert match, f"the last line is not a well-formed RESULT line: {last!r}"
    out["result"] = (float(match[1]), float(match[2]), int(match[3]), float(match[4]))
    return out


@pytest.mark.timeout(300)
def test_dry_mode_prints_every_figure_and_a_consistent_result(cache_dir):
    done = run(["--device", "cpu", "--cache-dir", str(cache_dir)], {"DIMFLOW_PYTHON": sys.executable}, 240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = figures(done.stdout)
    rates = {batch: rate for batch, (rate, _) in got["batches"].items()}
    best = max(rates, key=rates.get)
    edits_per_hour, ratio, batch, peak = got["result"]
    assert batch == best and math.isclose(edits_per_hour, rates[best], abs_tol=0.1)
    assert math.isclose(peak, got["batches"][best][1], abs_tol=0.01)
    assert math.isclose(ratio, rates[best] / got["reference"], rel_tol=0.01, abs_tol=0.01)
    assert math.isclose(got["ratio_1"], rates[1] / got["reference"], rel_tol=0.01, abs_tol=0.01)
    assert math.isclose(got["fraction"], rates[best] / 5900, rel_tol=0.01)
    assert got["load_s"] >= 0 and all(rate > 0 for rate in rates.values())
    # The checkpoint it built is in the released layout, where the loader found it.
    (folder,) = [p for p in cache_dir.iterdir() if p.name.startswith("gpu-bench-tiny-")]
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "dimflow.json", "processor"}
    assert "built and written in" in done.stdout


@pytest.mark.timeout(300)
def test_a_measurement_over_the_budget_is_skipped_and_said(cache_dir):
    """Budget 0: the first batch size still runs (nothing to project from), the rest say they were skipped."""
    done = run(
        ["--device", "cpu", "--cache-dir", str(cache_dir), "--budget-s", "0"],
        {"DIMFLOW_PYTHON": sys.executable},
        240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^production batch 1: [\d.]+ edits/hour", done.stdout, flags=re.MULTILINE)
    for skipped in ("batch 4: skipped", "batch 8: skipped", "reference: skipped"):
        assert skipped in done.stdout
    assert re.search(
        r"RESULT edits_per_hour=[\d.]+ ratio=nan batch=1 peak_mem_gb=[\d.]+$", done.stdout.strip()
    )


@pytest.mark.timeout(60)
def test_bootstrap_without_a_package_index_fails_fast_and_says_so(tmp_path):
    venv = tmp_path / "venv"
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
    done = run(
        ["--device", "cpu"],
        {
            "DIMFLOW_PYTHON": "",
            "DIMFLOW_BENCH_VENV": str(venv),
            "PYTHON": sys.executable,
            "PIP_INDEX_URL": f"{closed}/simple",
            "TORCH_INDEX": f"{closed}/whl",
        },
        45,
    )
    assert done.returncode == 3
    assert "creating one needs a package index, which is not reachable from here" in done.stderr
    assert "127.0.0.1:9" in done.stderr
    assert not venv.exists()  # nothing half-installed left behind


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_without_a_gpu_only_the_dry_mode_runs():
    done = run([], {"DIMFLOW_PYTHON": sys.executable}, 45)
    assert done.returncode == 2 and "--device cpu" in done.stderr


def _load_eval_fake():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_fake", REPO / "benchmarks" / "eval_fake.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_eval_fake_prints_the_tables_and_a_result_that_follows_from_the_scripted_verdicts(tmp_path):
    """benchmarks/eval_fake.py on one layout (two eval runs): both tables printed, and the RESULT line equals
    what the scripted verdicts imply (paint k of a row is judged only if paints 1..k-1 fell below the bar)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "eval_fake.py"), "--layout", "gedit", "--bar", "0.5"],
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert (
        len(
            re.findall(
                r"^eval of \S+/gedit_en\.jsonl: painter dim:tiny-edit; judge openai:fake-judge$", out, re.M
            )
        )
        == 2
    )
    last = out.strip().splitlines()[-1]
    pattern = " ".join(
        f"{name}={NUMBER}"
        for name in (
            "judge_calls_per_row_p1",
            "paints_per_row_p1",
            "judge_calls_per_row_p3",
            "paints_per_row_p3",
            "rejected_share_p1",
            "rejected_share_p3",
        )
    )
    match = re.fullmatch(f"RESULT {pattern}", last)
    assert match, f"the last line is not a well-formed RESULT line: {last!r}"
    got = [float(value) for value in match.groups()]

    bench = _load_eval_fake()
    from transforms.judge.scores import overall

    lines = (REPO / "tests" / "fixtures" / "bench" / "gedit" / "gedit_en.jsonl").read_text().splitlines()
    texts = [json.loads(line)["instruction"] for line in lines if line.strip()]
    passes = [[overall(bench.scores(t, k), "edit") >= 0.5 for k in (1, 2, 3)] for t in texts]
    paints3 = [next((k + 1 for k, ok in enumerate(row) if ok), 3) for row in passes]
    rejected1 = sum(not row[0] for row in passes) / len(texts)
    rejected3 = sum(not any(row) for row in passes) / len(texts)
    want = [1.0, 1.0, sum(paints3) / len(texts), sum(paints3) / len(texts), rejected1, rejected3]
    assert got == [round(value, 2) for value in want], (got, want)
    assert rejected1 > 0 and max(paints3) > 1  # the scripted verdicts do exercise rejections and repaints
