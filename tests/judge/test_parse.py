"""Reply -> (scores, reason) with dimflow's rubric: what is accepted, and that everything else is refused with
a reason naming the problem; and the overall score's values."""

from __future__ import annotations

import json
import math

import pytest

from tests.judge.conftest import verdict_json
from transforms.judge.parse import MAX_REASON_CHARS, JudgeReplyError, parse_verdict
from transforms.judge.rubric import DEFAULT_RUBRIC
from transforms.judge.scores import overall

EDIT = verdict_json(8, 9, 7, "the hat is blue now")


def parse(text: str | None, mode: str = "edit"):
    return parse_verdict(text, mode, DEFAULT_RUBRIC)


def refused(text: str | None, mode: str = "edit") -> JudgeReplyError:
    with pytest.raises(JudgeReplyError) as caught:
        parse(text, mode)
    return caught.value


@pytest.mark.parametrize(
    "reply",
    [
        EDIT,
        f"  {EDIT}\n",
        f"```json\n{EDIT}\n```",
        f"```JSON\n{EDIT}```",
        f"```\n{EDIT}\n```",
        f"<think>The hat changed colour; the face is the same.</think>\n{EDIT}",
        f"the hat changed colour</think>{EDIT}",  # a template that opened <think> itself
        f"<think>a</think>\n```json\n{EDIT}\n```",
        EDIT.replace("8", "8.5"),
    ],
)
def test_accepted_shapes(reply):
    scores, reason = parse(reply)
    assert set(scores) == {"instruction_following", "visual_quality", "preservation"}
    assert scores["visual_quality"] == 9.0 and scores["preservation"] == 7.0
    assert scores["instruction_following"] in (8.0, 8.5)
    assert all(isinstance(v, float) for v in scores.values())
    assert reason == "the hat is blue now"


@pytest.mark.parametrize(
    "reply, problem",
    [
        (None, "empty reply"),
        ("", "empty reply"),
        ("  \n ", "empty reply"),
        ("<think>still weighing the", "ended inside <think>"),
        ("<think>done</think>   ", "nothing after </think>"),
        (f"Here is my verdict: {EDIT}", "expected one JSON object and nothing else"),
        (f"{EDIT} Hope this helps!", "expected one JSON object and nothing else"),
        (f"{EDIT}\n{EDIT}", "not valid JSON (Extra data"),
        (f"```json\n{EDIT}\n```\nThe hat is blue.", "``` fence that is not one whole ```json block"),
        (f"```json\n{EDIT}\n```\n```json\n{EDIT}\n```", "not valid JSON"),
        ("[8, 9, 7]", "expected one JSON object"),
        (
            '{"instruction_following": 8, "visual_quality": 9, "preservation": 7, "reason": "x",}',
            "not valid JSON",
        ),
        (verdict_json(preservation=None), "'preservation' is missing"),
        (
            json.dumps({"instruction_following": 8, "preservation": 7, "reason": "x"}),
            "'visual_quality' is missing",
        ),
        (verdict_json(follow=11), "'instruction_following' must be in [0, 10], got 11"),
        (verdict_json(quality=-1), "'visual_quality' must be in [0, 10], got -1"),
        (verdict_json(follow=True), "'instruction_following' must be a number, got bool True"),
        (verdict_json(follow="8"), "'instruction_following' must be a number, got str '8'"),
        (verdict_json(follow=None), "'instruction_following' must be a number, got null"),
        (verdict_json(follow=[8]), "'instruction_following' must be a number, got list [8]"),
        (EDIT.replace("8", "NaN"), "NaN is not a score"),
        (EDIT.replace("8", "Infinity"), "Infinity is not a score"),
        ('{"instruction_following": 8, "instruction_following": 2, "visual_quality": 9}', "appears twice"),
        (
            json.dumps({"instruction_following": 8, "visual_quality": 9, "preservation": 7}),
            "'reason' is missing",
        ),
        (verdict_json(reason=None), "'reason' must be a string, got null"),
        (verdict_json(reason=3), "'reason' must be a string, got int 3"),
        ("[" * 50_000 + "]" * 50_000, "expected one JSON object"),
        ('{"a": ' + "[" * 20_000 + "]" * 20_000 + "}", "not a usable JSON object"),  # too deep: no crash
        ("x" * 200_000, "far longer than a verdict"),
        ("The edit looks great, 9/10.", "expected one JSON object"),
    ],
)
def test_refused_shapes_name_the_problem(reply, problem):
    error = refused(reply)
    assert error.retryable
    assert str(error).startswith("malformed judge reply: "), error
    assert problem in str(error), error


def test_every_problem_is_named_at_once():
    error = refused(json.dumps({"instruction_following": "high", "visual_quality": 12}))
    assert str(error) == (
        "malformed judge reply: 'instruction_following' must be a number, got str 'high'; "
        "'visual_quality' must be in [0, 10], got 12; 'preservation' is missing; 'reason' is missing"
    )


@pytest.mark.parametrize(
    "reply",
    [
        "I'm sorry, but I can't help with that request.",
        "I cannot assist with evaluating this image.",
        "<think>policy</think>I am unable to help with this.",
    ],
)
def test_refusals_fail_without_retry(reply):
    error = refused(reply)
    assert not error.retryable
    assert str(error).startswith("judge refused: ") and reply.split(">")[-1][:12] in str(error)


def test_text_to_image_is_scored_without_preservation_and_ignores_one():
    for reply in (
        verdict_json(7, 6, None, "a red bicycle"),
        verdict_json(7, 6, 3, "a red bicycle"),  # an extra, valid preservation score: not stored
        verdict_json(7, 6, "n/a", "a red bicycle"),  # an extra, bogus one: ignored too (module docstring)
        verdict_json(7, 6, 99, "a red bicycle"),
    ):
        scores, reason = parse(reply, "t2i")
        assert scores == {"instruction_following": 7.0, "visual_quality": 6.0}, reply
        assert reason == "a red bicycle"
    assert "'visual_quality' is missing" in str(refused('{"instruction_following": 7, "reason": ""}', "t2i"))


def test_extra_keys_are_ignored_and_the_reason_is_bounded():
    long_reason = "word " * 400
    reply = json.dumps(
        {
            "instruction_following": 10,
            "visual_quality": 0,
            "preservation": 5,
            "reason": long_reason,
            "overall": 99,
        }
    )
    scores, reason = parse(reply)
    assert scores == {"instruction_following": 10.0, "visual_quality": 0.0, "preservation": 5.0}
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("…") and "  " not in reason
    assert parse(verdict_json(reason=""))[1] == ""  # an empty reason is a string: accepted


@pytest.mark.parametrize(
    "scores, mode, expected",
    [
        ({"instruction_following": 10, "visual_quality": 10, "preservation": 10}, "edit", 1.0),
        ({"instruction_following": 9, "visual_quality": 4, "preservation": 8}, "edit", 0.6),  # sqrt(9*4)/10
        (
            {"instruction_following": 4, "visual_quality": 9, "preservation": 1},
            "edit",
            0.2,
        ),  # PR is the lower
        ({"instruction_following": 0, "visual_quality": 10, "preservation": 10}, "edit", 0.0),  # a non-edit
        (
            {"instruction_following": 10, "visual_quality": 10, "preservation": 0},
            "edit",
            0.0,
        ),  # product changed
        ({"instruction_following": 9, "visual_quality": 4}, "t2i", 0.6),
        ({"instruction_following": 2.5, "visual_quality": 10}, "t2i", 0.5),
    ],
)
def test_overall_formula(scores, mode, expected):
    assert math.isclose(overall(scores, mode), expected, abs_tol=1e-12)


def test_overall_refuses_what_parse_would_refuse():
    with pytest.raises(ValueError, match="'preservation'"):
        overall({"instruction_following": 9, "visual_quality": 4}, "edit")
    with pytest.raises(ValueError, match="mode must be edit or t2i"):
        overall({"instruction_following": 9, "visual_quality": 4}, "video")
