"""Hostile and malformed input: every bad row ends `failed` with a specific error, the run goes on,
and the designer's API key appears nowhere (console, provenance, blueprints, run record, journal).

The fixture manifest and images are in tests/fixtures/hostile/ (made by its make_fixtures.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.run import read_blueprints, read_provenance
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "hostile"
KEY_ENV = "DIMFLOW_TEST_HOSTILE_KEY"
FAKE_KEY = "sk-dimflow-hostile-NEVER-SHOWN-9f3Kq"

# id -> (status, error_stage, a fragment of the error)
EXPECTED = {
    "good-png": ("ok", None, None),
    "good-jpg": ("failed", "design", None),  # its design hits the proxy error: a design failure, no crash
    "unicode-ok": ("ok", None, None),
    "missing-file": ("failed", "fetch", "not found"),
    "corrupt": ("failed", "fetch", "unreadable image header"),
    "not-an-image": ("failed", "fetch", "not a recognized image format"),
    "truncated-png": ("failed", "fetch", "Truncated File Read"),
    "truncated-jpg": ("failed", "fetch", "Truncated File Read"),
    "bomb": ("failed", "fetch", "decompression bomb"),
    "too-big": ("failed", "fetch", "over limits.max_image_bytes=60000"),
    "zero-size": ("failed", "fetch", "empty (0 bytes)"),
    "http-source": ("failed", "validate", "no Beam filesystem can read http://"),
    "outside-roots": ("failed", "validate", "outside limits.source_roots"),
    "../escape": ("failed", "validate", "field 'id'"),
    "a/b": ("failed", "validate", "field 'id'"),
    "bell\x07id": ("failed", "validate", "field 'id'"),
    "empty-instruction": ("failed", "validate", "field 'instruction': empty"),
    "overlong-instruction": ("failed", "validate", "over limits.max_instruction_chars=300"),
    "zero-width": ("failed", "validate", "only invisible characters"),
    "bidi": ("failed", "validate", "bidirectional control character U+202E"),
    "nul-char": ("failed", "validate", "control character U+0000"),
    "wrong-types": ("failed", "validate", "field 'instruction': must be a string, got int"),
    "lone-surrogate": ("failed", "validate", "lone surrogate U+D800"),
}
# rows that never had a readable id: (error_stage, fragment)
UNREADABLE = [
    ("read", "not valid UTF-8"),
    ("read", "not a JSON object (got array)"),
    ("read", "not valid JSON"),
]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(FIXTURE, root / "job")
    with FakeOpenAI(expected_key=FAKE_KEY) as server:
        server.script("wooden table", ["leak"])  # a proxy error that echoes the Authorization header
        spec = {
            "name": "hostile",
            "manifest": "manifest.jsonl",
            "output": "out",
            "designer": {
                "kind": "openai",
                "model": "gpt-test",
                "base_url": server.base_url,
                "api_key_env": KEY_ENV,
                "max_attempts": 1,
            },
            "painter": {"checkpoint": "tiny", "steps": 2, "resolution": 64, "batch_size": 2},
            "limits": {
                "max_image_bytes": 60_000,
                "max_pixels": 4_000_000,
                "max_instruction_chars": 300,
                "source_roots": ["images"],
            },
        }
        spec_path = root / "job" / "job.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        console, logs = io.StringIO(), io.StringIO()
        handler = logging.StreamHandler(logs)
        logging.getLogger().addHandler(handler)
        mp = pytest.MonkeyPatch()
        mp.setenv(KEY_ENV, FAKE_KEY)
        try:
            with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
                code = cli.main(["run", str(spec_path), "--no-progress"])
        finally:
            mp.undo()
            logging.getLogger().removeHandler(handler)
        authorized = [r.authorized for r in server.requests]
    output = root / "job" / "out"
    return code, output, console.getvalue() + logs.getvalue(), authorized


def test_every_row_ends_with_its_specific_outcome(hostile_run):
    code, output, text, _auth = hostile_run
    assert code == cli.EXIT_OK, text  # bad rows do not take the run down
    table = read_provenance(str(output))
    rows = table.to_pylist()
    manifest_rows = len((FIXTURE / "manifest.jsonl").read_bytes().splitlines())
    assert len(rows) == manifest_rows
    by_id: dict[str | None, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    for row_id, (status, stage, fragment) in EXPECTED.items():
        candidates = by_id[row_id] if row_id != "good-png" else [r for r in by_id[row_id] if r["seed"] == 1]
        (row,) = candidates
        assert (row["status"], row["error_stage"]) == (status, stage), (row_id, row["error"])
        if fragment:
            assert fragment in row["error"], (row_id, row["error"])
    duplicate = [r for r in by_id["good-png"] if r["seed"] != 1]
    assert len(duplicate) == 1 and "duplicate id 'good-png'" in duplicate[0]["error"]
    unreadable = [r for r in rows if r["id"] is None or r["id"] == "latin1"]
    for stage, fragment in UNREADABLE:
        assert any(r["error_stage"] == stage and fragment in r["error"] for r in unreadable), fragment


def test_the_key_is_never_written_anywhere(hostile_run):
    _code, output, text, authorized = hostile_run
    assert authorized and all(authorized)  # the key was really used
    assert FAKE_KEY not in text
    leaked = [r for r in read_provenance(str(output)).to_pylist() if r["id"] == "good-jpg"][0]
    assert "Bearer [redacted]" in leaked["error"]  # the proxy echoed the header; we scrubbed it
    for table in (read_provenance(str(output)), read_blueprints(str(output))):
        for row in table.to_pylist():
            assert not any(isinstance(v, str) and FAKE_KEY in v for v in row.values())
    for path in output.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    record = json.loads(next((output / "runs").glob("*.json")).read_text())
    assert record["spec"]["designer"]["api_key_env"] == KEY_ENV
