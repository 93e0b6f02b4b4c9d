"""The designer's key is stored and shown nowhere, even when a server sends it back inside a 200 reply."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml
from PIL import Image

from pipeline import cli
from pipeline.run import read_blueprints, read_provenance
from tests.fakes.openai_server import FakeOpenAI
from transforms.secrets import REDACTED, Scrubber

KEY_ENV = "DIMFLOW_TEST_SECRET_KEY"
FAKE_KEY = "sk-dimflow-secret-9XkQ2mW7pLr4vT8z"


def test_scrubber_removes_the_named_variable_in_every_form(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k3y-Value_With-Odd.chars~")
    scrub = Scrubber([KEY_ENV])
    for text in (
        "Authorization: Bearer k3y-Value_With-Odd.chars~",
        '{"authorization": "Bearer k3y-Value_With-Odd.chars~"}',
        "api_key=k3y-Value_With-Odd.chars~&x=1",
        "the key is k3y-Value_With-Odd.chars~.",
    ):
        cleaned = scrub(text)
        assert "k3y-Value_With-Odd" not in cleaned and REDACTED in cleaned, cleaned


def test_scrubber_removes_credential_shapes_it_was_not_told_about():
    scrub = Scrubber()  # no variable: a proxy's own token, another key in a reply
    for text, gone in (
        ("Authorization: Bearer abcDEF123456ghiJKL", "abcDEF123456ghiJKL"),
        ("proxy-authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ('"x-api-key": "0123456789abcdef0123"', "0123456789abcdef0123"),
        ("api-key: 9f8e7d6c5b4a", "9f8e7d6c5b4a"),
        ("sent with bearer eyJhbGciOiJIUzI1NiJ9.e30.x1", "eyJhbGciOiJIUzI1NiJ9"),
        ("key sk-proj-AbCdEfGhIjKlMnOpQrSt was used", "sk-proj-AbCdEfGhIjKlMnOpQrSt"),
    ):
        assert gone not in scrub(text), text


def test_scrubber_leaves_blueprint_prose_alone():
    scrub = Scrubber()
    prose = (
        "The bearer of the tray stands left; an authorization stamp in the corner reads 'approved'. "
        "Keep the sk-1 label and the api key-shaped logo."
    )
    assert scrub(prose) == prose


def test_scrubber_ignores_unset_and_tiny_values(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "ab")
    assert Scrubber([KEY_ENV, "DIMFLOW_TEST_UNSET_VAR"])("ab cd") == "ab cd"


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("secrets")
    Image.new("RGB", (40, 32), (200, 40, 40)).save(root / "red.png")
    rows = [
        {"id": "echo-lines", "source": "red.png", "instruction": "make the background white"},
        {"id": "echo-json", "source": "red.png", "instruction": "put it on a wooden table"},
        {"id": "plain", "source": "red.png", "instruction": "add a soft shadow"},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAI(expected_key=FAKE_KEY) as server:
        server.script("background white", ["echo"])
        server.script("wooden table", ["echo-json"])
        spec = {
            "name": "secrets",
            "manifest": "manifest.jsonl",
            "output": "out",
            "designer": {
                "kind": "openai",
                "model": "gpt-test",
                "base_url": server.base_url,
                "api_key_env": KEY_ENV,
                "max_attempts": 1,
            },
            "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32},
        }
        (root / "job.yaml").write_text(yaml.safe_dump(spec))
        console = io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(console):
            mp.setenv(KEY_ENV, FAKE_KEY)
            code = cli.main(["run", str(root / "job.yaml"), "--no-progress"])
            status = cli.main(["status", str(root / "out")])
        authorized = [r.authorized for r in server.requests]
    return code, status, root / "out", console.getvalue(), authorized


def test_an_echoed_key_reaches_no_table_journal_or_terminal(echo_run):
    code, status, output, printed, authorized = echo_run
    assert code == cli.EXIT_OK and status == cli.EXIT_OK, printed
    assert len(authorized) == 3 and all(authorized)  # the key really went out with every request
    rows = {r["id"]: r for r in read_provenance(str(output)).to_pylist()}
    assert {r["status"] for r in rows.values()} == {"ok"}  # scrubbing keeps the paid-for blueprint
    for row_id in ("echo-lines", "echo-json"):
        blueprint = rows[row_id]["blueprint"]
        assert "request received with headers" in blueprint and REDACTED in blueprint, blueprint
    for table in (read_provenance(str(output)), read_blueprints(str(output))):
        for row in table.to_pylist():
            assert not any(isinstance(v, str) and FAKE_KEY in v for v in row.values())
    journal = list((output / "blueprints" / "journal").rglob("*.json"))
    assert len(journal) == 3
    files = [p for p in output.rglob("*") if p.is_file()]
    assert files and not [p for p in files if FAKE_KEY.encode() in p.read_bytes()]
    assert FAKE_KEY not in printed
