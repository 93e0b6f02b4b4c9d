"""Ctrl-C (and SIGTERM) stop ``dimflow run`` at any moment: one line, exit 130 (143), no traceback, no hang,
no worker process left, no temp folders; and the rerun completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.interrupt import child_processes
from pipeline.run import read_provenance

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ROWS = 160


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    for color in range(4):
        Image.new("RGB", (48, 40), (60 * color, 90, 200)).save(root / f"src-{color}.png")
    rows = [
        {
            "id": f"row-{i:03d}",
            "source": f"src-{i % 4}.png",
            "instruction": "make the background white",
            "seed": i,
        }
        for i in range(ROWS)
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "interrupt",
        "manifest": "manifest.jsonl",
        "output": "out",
        "incremental": True,
        "painter": {"checkpoint": "tiny", "steps": 8, "resolution": 64},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    return root


def _start(job: Path, output: str, *beam_args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pipeline.cli", "run", str(job / "job.yaml"), "--no-progress"]
    argv += ["--set", f"output={output}"]
    return subprocess.Popen(
        argv + (["--", *beam_args] if beam_args else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait_for(process: subprocess.Popen, moment: str, output: Path) -> None:
    """Until the run reaches ``moment``: 'start' (at once), 'output' (its output folder exists: the
    checks are done and the pipeline is being built), or 'images:N' (N images written: painting)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if moment == "start":
            time.sleep(0.3)
            return
        if moment == "output" and output.exists():
            return
        if moment.startswith("images:"):
            images = output / "images"
            if images.exists() and sum(1 for p in images.rglob("*.png")) >= int(moment.split(":")[1]):
                return
        time.sleep(0.05)


def _interrupt(job: Path, moment: str, sig: signal.Signals, *beam_args: str) -> tuple[int, str, list[int]]:
    output = job / f"out-{moment.replace(':', '-')}-{sig.name}-{len(beam_args)}"
    process = _start(job, str(output), *beam_args)
    _wait_for(process, moment, output)
    children = child_processes(process.pid)
    process.send_signal(sig)
    try:
        _out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
        pytest.fail(f"still running 30 s after {sig.name} (sent at {moment}):\n{err[-3000:]}")
    return process.returncode, err, children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize(
    ("moment", "sig", "beam_args"),
    [
        ("start", signal.SIGINT, ()),  # while Python is still importing
        ("output", signal.SIGINT, ()),  # while the pipeline is being built
        ("images:1", signal.SIGINT, ()),  # painting
        ("images:6", signal.SIGINT, ()),
        ("images:3", signal.SIGTERM, ()),  # what Kubernetes sends a pod it stops
        ("images:2", signal.SIGINT, ("--direct_running_mode=multi_processing", "--direct_num_workers=2")),
    ],
)
def test_an_interrupt_is_one_line_and_a_prompt_exit(job, moment, sig, beam_args):
    code, err, children = _interrupt(job, moment, sig, *beam_args)
    if code == 0:
        pytest.fail(f"the run ended before {sig.name} at {moment}; make the job longer:\n{err[-2000:]}")
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("dimflow: interrupted ("), err[-3000:]
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []  # worker processes do not outlive the command
    assert [str(p) for p in job.rglob("beam-temp-*")] == []


def test_the_rerun_after_an_interrupt_completes(job):
    output = job / "out-images-6-SIGINT-0"  # interrupted while painting, above
    process = _start(job, str(output))
    _out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    runs = read_provenance(str(output)).to_pylist()
    last = max(r["run_id"] for r in runs)
    rows = [r for r in runs if r["run_id"] == last]
    assert len(rows) == ROWS and len({r["id"] for r in rows}) == ROWS
    statuses = [r["status"] for r in rows]
    assert (
        set(statuses) <= {"ok", "skipped"} and statuses.count("skipped") >= 6
    )  # the interrupted run's images
