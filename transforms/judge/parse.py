"""Turn a judge's reply into (scores, reason), strictly, or say precisely what is wrong with it.

A verdict decides whether a paid-for image is kept or painted again, so nothing is guessed: a ``json``
reply must be one JSON object and nothing else (it may sit inside one ```json fence, or follow a
``<think>`` block), with every criterion of the row's mode under its label as a number within the rubric's
scale (not a string, not a boolean, no NaN) and a string ``reason``. A ``lines`` reply (for official
prompts that ask for "Label: N" lines) must have exactly one score per criterion (repeats must agree);
its other text becomes the reason. Scores are rescaled to 0-10.

Keys other than the mode's criteria and the reason are ignored and not stored: a text-to-image reply that
also carries a ``preservation`` score (valid or not) is accepted without it, since text-to-image rows are not
scored on preservation and a harmless extra field is not worth a paid retry.

Errors are ``JudgeReplyError``: retryable ones read ``malformed judge reply: <what is wrong>``; a refusal
("I'm sorry, I can't help ...") is not retryable (asking again gets the same refusal).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from transforms.designer.parse import looks_like_refusal
from transforms.judge.rubric import REASON, Rubric
from transforms.judge.scores import SCORE_MAX, criteria_for

MAX_REPLY_CHARS = 100_000  # a verdict is a few hundred characters; far more is not one
MAX_REASON_CHARS = 500
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)\n?[ \t]*```", re.IGNORECASE | re.DOTALL)
_NUMBER = r"(-?\d+(?:\.\d+)?)"


class JudgeReplyError(ValueError):
    """The reply is not a usable verdict; ``str(error)`` is the row's ``judge_error``."""

    def __init__(self, problem: str, retryable: bool = True):
        super().__init__(f"malformed judge reply: {problem}" if retryable else problem)
        self.retryable = retryable


def parse_verdict(text: str | None, mode: str, rubric: Rubric) -> tuple[dict[str, float], str]:
    """(scores on 0-10 for ``criteria_for(mode)``, reason) from a reply; raises ``JudgeReplyError``."""
    criteria = criteria_for(mode)
    body = _after_thinking(text)
    if looks_like_refusal(body):
        raise JudgeReplyError(f"judge refused: {_excerpt(body)}", retryable=False)
    if rubric.reply == "lines":
        raw, reason = _from_lines(body, criteria, rubric)
    else:
        raw, reason = _from_json(body, criteria, rubric)
    # Rounded: the top of any scale is exactly SCORE_MAX (0.47 * 10 / 0.47 is not), never a hair above.
    scores = {name: round(value * SCORE_MAX / rubric.scale, 6) for name, value in raw.items()}
    return scores, _cut(reason)


def _after_thinking(text: str | None) -> str:
    if text is None or not text.strip():
        raise JudgeReplyError("empty reply")
    if len(text) > MAX_REPLY_CHARS:
        raise JudgeReplyError(f"{len(text)} characters, far longer than a verdict")
    lowered = text.lower()
    if "</think>" in lowered:
        # Some servers put the opening <think> in the chat template, so only the closing tag shows.
        text = text[lowered.rindex("</think>") + len("</think>") :]
    elif "<think>" in lowered:
        raise JudgeReplyError("it ended inside <think> without a verdict (truncated? raise judge.max_tokens)")
    body = text.strip()
    if not body:
        raise JudgeReplyError("nothing after </think>")
    return body


def _from_json(body: str, criteria: tuple[str, ...], rubric: Rubric) -> tuple[dict[str, float], str]:
    if body.startswith("```"):
        fenced = _FENCE.fullmatch(body)
        if fenced is None:
            raise JudgeReplyError(f"a ``` fence that is not one whole ```json block: {_excerpt(body)}")
        body = fenced.group(1).strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise JudgeReplyError(f"expected one JSON object and nothing else, got {_excerpt(body)}")
    try:
        document = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise JudgeReplyError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise JudgeReplyError(f"not a usable JSON object ({exc})") from None
    problems, scores = [], {}
    for name in criteria:
        key = rubric.label(name)
        if key not in document:
            problems.append(f"{key!r} is missing")
            continue
        problem = _score_problem(document[key], rubric.scale)
        if problem:
            problems.append(f"{key!r} {problem}")
        else:
            scores[name] = float(document[key])
    reason_key = rubric.label(REASON)
    reason = document.get(reason_key)
    if reason_key not in document:
        problems.append(f"{reason_key!r} is missing")
    elif not isinstance(reason, str):
        problems.append(f"{reason_key!r} must be a string, got {_kind(reason)}")
    if problems:
        raise JudgeReplyError("; ".join(problems))
    return scores, reason


def _from_lines(body: str, criteria: tuple[str, ...], rubric: Rubric) -> tuple[dict[str, float], str]:
    problems, scores = [], {}
    score_lines: set[int] = set()
    lines = body.splitlines()
    for name in criteria:
        label = rubric.label(name)
        pattern = re.compile(
            rf"^[\s>*#_-]*(?:\d+[.)]\s*)?[*_]*{re.escape(label)}[*_]*\s*[:=]\s*[*_]*\s*{_NUMBER}"
            rf"(?:\s*/\s*{_NUMBER})?",
            re.IGNORECASE,
        )
        found = [(i, m) for i, line in enumerate(lines) if (m := pattern.match(line))]
        if not found:
            problems.append(f"no '{label}: N' line")
            continue
        values = {float(m.group(1)) for _, m in found}
        if len(values) > 1:
            problems.append(f"'{label}' is given {len(found)} different scores")
            continue
        score_lines.update(i for i, _ in found)
        denominators = {float(m.group(2)) for _, m in found if m.group(2) is not None}
        value = values.pop()
        if denominators and denominators != {rubric.scale}:
            problems.append(
                f"'{label}' is out of {denominators.pop():g}, but the rubric's scale is {rubric.scale:g}"
            )
        elif not 0 <= value <= rubric.scale:
            problems.append(f"'{label}' must be in [0, {rubric.scale:g}], got {value:g}")
        else:
            scores[name] = value
    if problems:
        raise JudgeReplyError("; ".join(problems))
    rest = " ".join(line.strip() for i, line in enumerate(lines) if i not in score_lines and line.strip())
    return scores, rest


def _score_problem(value: Any, scale: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {_kind(value)}"
    if not math.isfinite(value) or not 0 <= value <= scale:
        return f"must be in [0, {scale:g}], got {value!r}"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key!r} appears twice")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a score")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def _cut(reason: str) -> str:
    flat = " ".join(reason.split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 1] + "…"


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")
