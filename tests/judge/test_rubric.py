"""Rubrics: ours, a user's YAML file (JSON and "Label: N" replies, scale-5 scores rescaled to 0-10), and the
refusal of every hostile file with an error naming the file and the field."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re

import pytest
import yaml

from transforms.judge.parse import JudgeReplyError, parse_verdict
from transforms.judge.registry import make_judge
from transforms.judge.rubric import (
    DEFAULT_RUBRIC,
    MAX_RUBRIC_BYTES,
    RUBRIC_VERSION,
    RubricError,
    load_rubric,
    rubric_from_config,
)

LABELS = {
    "instruction_following": "Prompt Compliance",
    "visual_quality": "Visual Naturalness",
    "preservation": "Physical & Detail Integrity",
}
EDIT_TEMPLATE = "Image one is before, image two after. Task: {instruction}\nRate each 1-5."
T2I_TEMPLATE = "Rate this picture for: {instruction}\nRate each 1-5."


def write(tmp_path, document, name="rubric.yaml") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return str(path)


def custom(**overrides) -> dict:
    document = {"name": "bench-5", "scale": 5, "labels": LABELS, "edit": EDIT_TEMPLATE, "t2i": T2I_TEMPLATE}
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


def test_dimflow_rubric():
    assert load_rubric(None) is None
    assert rubric_from_config(None) is DEFAULT_RUBRIC
    assert DEFAULT_RUBRIC.version == RUBRIC_VERSION and DEFAULT_RUBRIC.scale == 10
    assert rubric_from_config(DEFAULT_RUBRIC.as_dict()) == DEFAULT_RUBRIC  # ours passes every file check
    edit = DEFAULT_RUBRIC.prompt("edit", "make the {sky} pink")
    t2i = DEFAULT_RUBRIC.prompt("t2i", "a red bicycle")
    assert "make the {sky} pink" in edit and "{instruction}" not in edit  # braces in instructions are kept
    for key in ('"instruction_following"', '"visual_quality"', '"preservation"', '"reason"'):
        assert key in edit
    assert '"preservation"' not in t2i and "a red bicycle" in t2i
    assert "FIRST" in edit and "SECOND" in edit  # it says which image is which


def test_a_json_rubric_with_scale_5_and_labels(tmp_path):
    path = write(tmp_path, custom(reply="json", labels={**LABELS, "reason": "Why"}))
    loaded = load_rubric(path)
    raw = open(path, "rb").read()
    assert loaded["version"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert json.loads(json.dumps(loaded)) == loaded  # plain data: it travels in the config
    rubric = rubric_from_config(pickle.loads(pickle.dumps(loaded)))
    assert rubric.prompt("edit", "add a hat") == EDIT_TEMPLATE.replace("{instruction}", "add a hat")
    reply = json.dumps(
        {"Prompt Compliance": 4, "Visual Naturalness": 5, "Physical & Detail Integrity": 2.5, "Why": "ok"}
    )
    assert parse_verdict(reply, "edit", rubric) == (
        {"instruction_following": 8.0, "visual_quality": 10.0, "preservation": 5.0},
        "ok",
    )
    with pytest.raises(JudgeReplyError, match=r"'Visual Naturalness' must be in \[0, 5\], got 6"):
        parse_verdict(reply.replace(": 5", ": 6"), "edit", rubric)
    with pytest.raises(JudgeReplyError, match="'Prompt Compliance' is missing"):
        parse_verdict(verdict_in_our_words(), "edit", rubric)  # our keys are not its keys


def verdict_in_our_words() -> str:
    return json.dumps({"instruction_following": 4, "visual_quality": 4, "preservation": 4, "reason": "x"})


def test_a_lines_rubric_for_an_official_prompt(tmp_path):
    rubric = rubric_from_config(load_rubric(write(tmp_path, custom(reply="lines"))))
    reply = (
        "<think>compare</think>\n**Prompt Compliance**: 4/5\n- Visual Naturalness: 3\n"
        "Physical & Detail Integrity: 5 / 5\nThe hat is blue; the face is unchanged."
    )
    scores, reason = parse_verdict(reply, "edit", rubric)
    assert scores == {"instruction_following": 8.0, "visual_quality": 6.0, "preservation": 10.0}
    assert reason == "The hat is blue; the face is unchanged."
    t2i = parse_verdict("Prompt Compliance: 5\nVisual Naturalness: 2", "t2i", rubric)
    assert t2i == ({"instruction_following": 10.0, "visual_quality": 4.0}, "")
    for bad, problem in (
        ("Prompt Compliance: 4\nVisual Naturalness: 3", "no 'Physical & Detail Integrity: N' line"),
        ("Prompt Compliance: 4/10\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5", "out of 10, but"),
        (
            "Prompt Compliance: 6\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5",
            "must be in [0, 5], got 6",
        ),
        (
            "Prompt Compliance: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 5\nPrompt Compliance: 2",
            "'Prompt Compliance' is given 2 different scores",
        ),
        ("Prompt Compliance is good", "no 'Prompt Compliance: N' line"),
    ):
        with pytest.raises(JudgeReplyError) as caught:
            parse_verdict(bad, "edit", rubric)
        assert problem in str(caught.value) and caught.value.retryable, (bad, caught.value)


def test_the_version_is_the_files_bytes(tmp_path):
    first = load_rubric(write(tmp_path, custom(), "a.yaml"))
    same = load_rubric(write(tmp_path, custom(), "b.yaml"))
    spaced = load_rubric(write(tmp_path, yaml.safe_dump(custom()) + "\n", "c.yaml"))
    assert first["version"] == same["version"] != spaced["version"]
    assert first["source"].endswith("a.yaml")


def test_make_judge_takes_the_loaded_rubric_and_refuses_a_path(tmp_path):
    path = write(tmp_path, custom())
    spec = {"kind": "openai", "model": "m", "rubric": path}
    with pytest.raises(RubricError, match="call transforms.judge.rubric.load_rubric on the driver"):
        make_judge(spec)
    judge = make_judge({**spec, "rubric": load_rubric(path)})
    assert judge.config()["rubric"] == load_rubric(path)["version"]
    assert make_judge({**spec, "rubric": None}).config()["rubric"] == RUBRIC_VERSION
    assert make_judge({"kind": "none", "rubric": None}) is None
    tampered = {**load_rubric(path), "edit": "score {image}: {instruction}"}
    with pytest.raises(
        RubricError, match=r"judge.rubric file .*rubric.yaml: field edit uses placeholder\(s\) \{image\}"
    ):
        make_judge({**spec, "rubric": tampered})
    with pytest.raises(RubricError, match="field version is missing"):
        rubric_from_config({k: v for k, v in load_rubric(path).items() if k != "version"})


HOSTILE = [
    ("binary", b"name: x\x00\x01\x02", "is binary (contains NUL bytes)"),
    ("latin1", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 9)"),
    ("huge", b"name: x\n#" + b"a" * MAX_RUBRIC_BYTES, f"larger than {MAX_RUBRIC_BYTES} bytes"),
    ("bad-yaml", b"name: x\nedit: [unclosed\n", "not valid YAML at line 3 column 1"),
    ("tabs", b"name: x\n\tedit: y\n", "not valid YAML at line 2"),
    ("list", b"- name\n- edit\n", "must be a YAML mapping"),
    ("empty", b"", "must be a YAML mapping"),
    ("python-tag", b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
]


@pytest.mark.parametrize("name, data, problem", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_are_refused_naming_the_file(tmp_path, name, data, problem):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(data)
    with pytest.raises(RubricError) as caught:
        load_rubric(str(path))
    assert str(caught.value).startswith(f"judge.rubric file {path}: "), caught.value
    assert problem in str(caught.value), caught.value


BAD_FIELDS = [
    ({"edit": None}, "field edit is missing"),
    ({"t2i": None}, "field t2i is missing"),
    ({"edit": "   "}, "field edit must be a non-empty text"),
    ({"edit": ["a", "b"]}, "field edit must be a non-empty text"),
    ({"edit": "x" * 40_000 + "{instruction}"}, "field edit is longer than"),
    (
        {"edit": "Rate {instruction} against {reference_caption}"},
        "field edit uses placeholder(s) {reference_caption}",
    ),
    ({"t2i": "Rate {prompt}"}, "field t2i uses placeholder(s) {prompt}"),
    ({"t2i": "Rate this picture."}, "field t2i has no {instruction} placeholder"),
    ({"name": None}, "field name must be a one-line string"),
    ({"name": "two\nlines"}, "field name must be a one-line string"),
    ({"scale": 0}, "field scale must be a number in (0, 100]"),
    ({"scale": "5"}, "field scale must be a number"),
    ({"scale": True}, "field scale must be a number"),
    ({"scale": 1e9}, "field scale must be a number"),
    ({"scale": float("nan")}, "field scale must be a number"),
    ({"reply": "xml"}, "field reply must be one of json, lines"),
    ({"labels": ["Prompt Compliance"]}, "field labels must be a mapping"),
    ({"labels": {"overall": "Overall"}}, "field labels.overall: not a criterion"),
    ({"labels": {"visual_quality": 5}}, "field labels.visual_quality must be a one-line string"),
    ({"labels": {"visual_quality": "preservation"}}, "two criteria share one label"),
    ({"sacle": 5}, "unknown field(s) sacle"),
]


@pytest.mark.parametrize("overrides, problem", BAD_FIELDS, ids=[p for _, p in BAD_FIELDS])
def test_bad_fields_are_refused_naming_the_field(tmp_path, overrides, problem):
    path = write(tmp_path, custom(**{k: v for k, v in overrides.items() if v is not None}))
    if None in overrides.values():  # a missing field
        document = custom()
        for key in overrides:
            document.pop(key)
        path = write(tmp_path, document)
    with pytest.raises(RubricError) as caught:
        load_rubric(path)
    assert str(caught.value).startswith(f"judge.rubric file {path}: "), caught.value
    assert problem in str(caught.value), caught.value


def test_json_braces_in_a_template_are_not_placeholders(tmp_path):
    template = 'Task: {instruction}\nReply {"Prompt Compliance": <1-5>, ...} or { }'
    rubric = rubric_from_config(load_rubric(write(tmp_path, custom(edit=template))))
    assert rubric.prompt("edit", "add a hat").startswith("Task: add a hat\nReply {")
    # No str.format escaping: "{{x}}" holds "{x}", which is refused rather than sent half-formatted.
    with pytest.raises(RubricError, match=r"field edit uses placeholder\(s\) \{x\}"):
        load_rubric(write(tmp_path, custom(edit="{instruction} {{x}}")))


@pytest.mark.timeout(30)
def test_what_is_not_a_regular_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # nobody writes to it: a blocking open would hang the launcher
    for path, problem in (
        (fifo, "not a regular file"),
        (tmp_path, "not a regular file"),
        (tmp_path / "missing.yaml", "cannot read it: FileNotFoundError"),
    ):
        with pytest.raises(RubricError, match=re.escape(f"judge.rubric file {path}: {problem}")):
            load_rubric(str(path))


def test_a_top_score_is_exactly_ten_on_any_scale(tmp_path):
    """0.47 * 10 / 0.47 is 10.000000000000002 in floating point: the top of the scale must still be 10."""
    rubric = rubric_from_config(load_rubric(write(tmp_path, custom(scale=0.47, reply="lines"))))
    reply = "Prompt Compliance: 0.47\nVisual Naturalness: 0.47\nPhysical & Detail Integrity: 0.47"
    scores, _ = parse_verdict(reply, "edit", rubric)
    assert scores == {"instruction_following": 10.0, "visual_quality": 10.0, "preservation": 10.0}
