"""A job that cannot succeed is refused before it starts: exit 2, one line naming the field, nothing left
under its output; and a run that breaks mid-way leaves no temp folders behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.preflight import manifest_folder
from tests.fakes.gcs import emulator_env, write_fake_credentials
from transforms.deadline import DeadlineExceeded, call_with_deadline
from transforms.painter.handler import PainterModelHandler

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _job(tmp_path: Path, **overrides) -> Path:
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    Image.new("RGB", (40, 32), (10, 120, 200)).save(job / "blue.png")
    rows = [
        {"id": f"row-{i}", "source": "blue.png", "instruction": "make the background white"} for i in range(3)
    ]
    (job / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "preflight",
        "manifest": "manifest.jsonl",
        "output": str(tmp_path / "out"),
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            spec.setdefault(section, {})[name] = value
        else:
            spec[section] = value
    (job / "job.yaml").write_text(yaml.safe_dump(spec))
    return job / "job.yaml"


def _refused(capsys, spec: Path, *extra: str) -> str:
    code = cli.main(["run", str(spec), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def _left_behind(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if "run=" in p.name or "beam-temp" in p.name
    )


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"output": "/"}, "output: '/' is the filesystem root"),
        ({"output": "{job}"}, "is the folder holding the manifest"),
        ({"output": "{tmp}"}, "is the folder holding the manifest"),
        ({"output": "{job}/manifest.jsonl"}, "exists and is not a folder"),
        ({"output": "{job}/blue.png/out"}, "output: cannot write to"),
        (
            {"painter__resolution": 33},
            "painter (checkpoint 'tiny'): resolution 33 is not a positive multiple",
        ),
        ({"painter__resolution": 60}, "resolution 60 is not a positive multiple"),
        (
            {"designer": {"kind": "openai", "model": "m", "api_key_env": "DIMFLOW_TEST_UNSET_KEY"}},
            "designer.api_key_env: environment variable DIMFLOW_TEST_UNSET_KEY is not set",
        ),
        (
            {"designer": {"kind": "local", "model": "dimflow-test/no-such-vlm"}},
            "designer.model='dimflow-test/no-such-vlm' is not available here",
        ),
    ],
)
def test_jobs_that_would_fail_every_row_are_refused_before_any_work(tmp_path, capsys, override, fragment):
    job_dir = tmp_path / "job"
    values = {
        k: (v.format(job=job_dir, tmp=tmp_path) if isinstance(v, str) else v) for k, v in override.items()
    }
    spec = _job(tmp_path, **values)
    line = _refused(capsys, spec)
    assert fragment in line, line
    assert _left_behind(tmp_path / "out") == [] and _left_behind(job_dir) == []
    assert not (tmp_path / "out" / "provenance").exists()


def test_an_empty_output_is_a_spec_error(tmp_path, capsys):
    line = _refused(capsys, _job(tmp_path), "--set", "output=")
    assert "invalid job spec" in line


def test_an_unwritable_bucket_is_refused(tmp_path, capsys, gcs):
    line = _refused(capsys, _job(tmp_path, output="gs://dimflow-no-such-bucket/out"))
    assert "output: cannot write to 'gs://dimflow-no-such-bucket/out'" in line


def test_a_run_that_breaks_mid_way_leaves_no_temp_folders(tmp_path, capsys, monkeypatch):
    def broken_load(self):
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(PainterModelHandler, "load_model", broken_load)
    spec = _job(tmp_path)
    code = cli.main(["run", str(spec), "--no-progress"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_RUN_FAILED and "the GPU fell off the bus" in err
    out = tmp_path / "out"
    assert [p for p in out.rglob("*") if "beam-temp" in p.name] == []
    assert not (out / "provenance").exists() or list((out / "provenance").iterdir()) == []


@pytest.mark.parametrize(
    ("pattern", "folder"),
    [
        ("/a/b/m.jsonl", "/a/b"),
        ("/a/b/*.jsonl", "/a/b"),
        ("/a/*/m.jsonl", "/a"),
        ("gs://bucket/m/part-*.csv", "gs://bucket/m"),
        ("/m.jsonl", "/"),
    ],
)
def test_manifest_folder(pattern, folder):
    assert manifest_folder(pattern) == folder


def _closed_port_env(tmp_path: Path) -> dict[str, str]:
    """gs:// pointed at a loopback port nothing listens on: an unreachable store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {**os.environ, **emulator_env(f"http://127.0.0.1:{port}", write_fake_credentials(tmp_path))}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("where", ["output", "manifest"])
def test_unreachable_storage_is_refused_within_the_deadline(tmp_path, where):
    override = {"output": "gs://catalog/out"} if where == "output" else {"manifest": "gs://catalog/m.jsonl"}
    spec = _job(tmp_path, limits={"fetch_timeout_s": 3}, **override)
    env = {**_closed_port_env(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(spec), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
    )
    assert done.returncode == cli.EXIT_BAD_INPUT, done.stderr[-2000:]
    assert f"{where} 'gs://catalog/" in done.stderr and "no answer within 3 s" in done.stderr, done.stderr[
        -2000:
    ]


def test_call_with_deadline_answers_raises_and_gives_up():
    assert call_with_deadline(lambda: 7, 1, "seven") == 7
    with pytest.raises(KeyError):
        call_with_deadline(lambda: {}["x"], 1, "missing")
    release = threading.Event()
    with pytest.raises(DeadlineExceeded, match=r"a stuck call: no answer within 0.2 s"):
        call_with_deadline(lambda: release.wait(30), 0.2, "a stuck call")
    release.set()
