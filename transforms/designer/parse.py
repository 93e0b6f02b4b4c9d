"""Turn a designer reply into a blueprint, or say precisely why it cannot be one.

A row whose reply is empty, refused or cut off inside its reasoning fails at the design stage with that
reason; it is never painted with garbage.
"""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)

# Refusals are recognised at the start of the reply only: a real blueprint may well contain "sorry"
# (a sign in the picture) or "can't" somewhere in its prose.
_REFUSAL = re.compile(
    r"^[\s\"'*_>#-]*(?:"
    r"i(?:'|’)?m\s+(?:so\s+|really\s+)?sorry"
    r"|i\s+am\s+(?:so\s+|really\s+)?sorry"
    r"|sorry,?\s+(?:but\s+)?i\b"
    r"|i\s+(?:can(?:'|’)?t|cannot|can\s+not|won(?:'|’)?t|will\s+not|am\s+unable|(?:'|’)?m\s+unable|am\s+not\s+able|(?:'|’)?m\s+not\s+able)"
    r"\s+(?:to\s+)?(?:help|assist|comply|fulfil|fulfill|provide|do\s+that|process|edit|create|describe|support|engage)"
    r"|as\s+an\s+ai\b"
    r"|i\s+apologi[sz]e"
    r")",
    re.IGNORECASE,
)


class ReplyError(ValueError):
    """The reply is not a usable blueprint; ``str(error)`` is the row's failure reason."""


def parse_reply(text: str | None) -> str:
    """Strip ``<think>…</think>``, unwrap ``<answer>…</answer>``, reject empty and refused replies."""
    if text is None or not text.strip():
        raise ReplyError("empty reply")
    body = _THINK_BLOCK.sub("", text)
    lowered = body.lower()
    if "</think>" in lowered:
        # Some servers put the opening <think> in the chat template, so only the closing tag shows.
        body = body[lowered.rindex("</think>") + len("</think>") :]
    elif "<think>" in lowered and "<answer>" not in lowered[lowered.index("<think>") :]:
        raise ReplyError(
            "reply ended inside <think> without an answer (truncated? raise designer max_tokens)"
        )
    answers = [match.group(1) for match in _ANSWER_BLOCK.finditer(body)]
    if answers:
        body = next((a for a in reversed(answers) if a.strip()), "")
    blueprint = _TAG.sub("", body).strip()
    if not blueprint:
        raise ReplyError("empty reply (nothing outside <think> / inside <answer>)")
    if looks_like_refusal(blueprint):
        raise ReplyError(f"designer refused: {_excerpt(blueprint)}")
    return blueprint


def looks_like_refusal(text: str) -> bool:
    """Whether ``text`` opens like a model's refusal ("I'm sorry, but I can't help ..."); the judge uses it."""
    return _REFUSAL.match(text) is not None


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")
