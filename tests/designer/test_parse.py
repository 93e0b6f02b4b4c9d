"""Reply parsing (think/answer tags, empty and refused replies) and the prompt's shape."""

from __future__ import annotations

import pytest

from transforms.designer.parse import ReplyError, parse_reply
from transforms.designer.prompt import PROMPT_VERSION, SECTIONS, build_prompt


@pytest.mark.parametrize(
    ("reply", "blueprint"),
    [
        ("plain blueprint", "plain blueprint"),
        (
            "<think>hmm\nlet me see</think>\n<answer>\n1. Edit instruction: x\n</answer>",
            "1. Edit instruction: x",
        ),
        ("<THINK>a</THINK><Answer>b</Answer>", "b"),
        ("<think>a</think> the blueprint", "the blueprint"),
        ("reasoning the template opened</think><answer>b</answer>", "b"),
        ("<answer>cut off by max_tokens", "cut off by max_tokens"),
        ("<think>draft</think><answer>first</answer><think>no</think><answer>second</answer>", "second"),
        (
            "<think>x</think><answer>The sign says I'm sorry we're closed.</answer>",
            "The sign says I'm sorry we're closed.",
        ),
        ("Make the sky blue; I can't see any people, so nothing else changes.", None),
    ],
)
def test_parse_reply_accepts(reply, blueprint):
    assert parse_reply(reply) == (blueprint or reply)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (None, "empty reply"),
        ("", "empty reply"),
        ("  \n\t ", "empty reply"),
        ("<think>only thoughts</think>", "empty reply"),
        ("<think>x</think><answer>  </answer>", "empty reply"),
        ("<think>thinking until the tokens ran out", "inside <think>"),
        ("I'm sorry, but I can't help with that.", "refused"),
        ("I’m sorry — I can’t assist with this request.", "refused"),
        ("Sorry, I can't edit photos of real people.", "refused"),
        ("I cannot help with editing this image.", "refused"),
        ("<think>policy</think><answer>I can't assist with that.</answer>", "refused"),
        ("As an AI, I do not edit images.", "refused"),
        ("I apologize, but this request violates policy.", "refused"),
    ],
)
def test_parse_reply_rejects(reply, reason):
    with pytest.raises(ReplyError, match=reason):
        parse_reply(reply)


def test_prompt_asks_for_five_sections_and_ends_with_the_instruction():
    for has_image in (True, False):
        prompt = build_prompt("  make the car red  ", has_image=has_image)
        assert [f"{i}. {name}:" in prompt for i, name in enumerate(SECTIONS, 1)] == [True] * 5
        assert "<think>" in prompt and "<answer>" in prompt
        assert prompt.endswith(": make the car red")
    assert "attached image" in build_prompt("x", has_image=True)
    assert "attached image" not in build_prompt("x", has_image=False)
    assert PROMPT_VERSION
