"""Escape sequences and markup from a manifest never reach the operator's terminal raw."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml

from pipeline import cli
from pipeline.terminal import printable, text

# set-title, clear-screen, a colour, a bell, CSI in its 8-bit form, a carriage return that overwrites,
# a bidi override that reverses what follows, and a Unicode line separator.
HOSTILE = [
    "\x1b]0;pwned\x07",
    "\x1b[2J\x1b[H",
    "\x1b[31m",
    "\x07",
    "\x9b31m",
    "ok\rFAKE",
    "\u202eevil",
    "a\u2028b",
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_printable_shows_control_characters_as_escapes(payload):
    shown = printable(f"id-{payload}-end")
    assert shown.isprintable(), repr(shown)
    assert shown.startswith("id-") and shown.endswith("-end")


def test_printable_keeps_ordinary_unicode_and_optional_newlines():
    assert printable("café ☕ 日本語 😀 👩‍👩‍👧") == "café ☕ 日本語 😀 👩‍👩‍👧"
    assert printable("two\nlines", keep_newlines=True) == "two\nlines"
    assert printable("two\nlines") == "two\\nlines"
    assert printable("\x1b") == "\\x1b" and printable("\u202e") == "\\u202e"


def test_text_is_never_read_as_markup():
    assert text("[bold red]x[/]").plain == "[bold red]x[/]"


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal")
    rows = [{"id": f"bad{p}", "source": f"img-{p}.png", "instruction": "make it white"} for p in HOSTILE[:4]]
    rows += [
        {"id": "missing-source", "source": "no-such-\x1b[2J-file\x07.png", "instruction": "x"},
        {"id": "markup", "source": "[bold red]gone[/].png", "instruction": "x"},
        {"id": "ctl-instruction", "instruction": "paint \x1b]0;title\x07 it"},
    ]
    lines = [json.dumps(r) for r in rows] + ['{"id": "raw-line\x1b[31m', "not json \x1b]0;x\x07"]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "name": "terminal",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny", "t2i_checkpoint": "tiny", "steps": 1, "resolution": 32},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    printed = {}
    for verb, argv in (
        ("run", ["run", str(root / "job.yaml"), "--no-progress"]),
        ("status", ["status", str(root / "out"), "--status", "failed"]),
        ("validate", ["validate", str(root / "manifest.jsonl")]),
        ("report", ["report", str(root / "out")]),
    ):
        buffer = io.StringIO()
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(buffer):
            code = cli.main(argv)
        printed[verb] = (code, buffer.getvalue())
    return printed


@pytest.mark.parametrize("verb", ["run", "status", "validate", "report"])
def test_no_verb_prints_a_raw_control_character(hostile_output, verb):
    code, out = hostile_output[verb]
    assert code == (cli.EXIT_BAD_INPUT if verb == "validate" else cli.EXIT_OK), out
    raw = [ch for ch in set(out) if ch not in "\n" and not ch.isprintable()]
    assert raw == [], f"{verb} printed {raw!r}"


def test_the_failed_rows_are_still_named_with_visible_escapes(hostile_output):
    _code, out = hostile_output["run"]
    assert "no-such-\\x1b[2J-file\\x07.png" in out  # the path, shown rather than obeyed
    assert "[bold red]gone[/].png" in out  # markup shown literally
    _code, out = hostile_output["status"]
    assert "missing-source" in out and "\\x1b" in out
