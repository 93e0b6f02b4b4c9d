"""The judge's criteria, the overall score, and the repaint seed sequence.

**Overall score.** ``overall = sqrt(IF * min(VQ, PR)) / 10`` for edits and ``sqrt(IF * VQ) / 10`` for
text-to-image, where IF is instruction following, VQ visual quality and PR preservation, each 0-10. Why:
a catalog image is only usable when it did what was asked *and* is fit to publish; a geometric mean is
zero when either is zero (an arithmetic mean would let a beautiful non-edit pass at 5/10). Quality and
preservation are two ways of being unfit to publish (a broken render, or the customer's product changed),
so the worse of the two counts, as VIEScore takes the minimum over its perceptual sub-scores; GEdit-Bench
reports sqrt(SC * PQ) on the same reasoning. Dividing by 10 puts it in [0, 1] for ``quality.min_overall``.
"""

from __future__ import annotations

import hashlib
import math

INSTRUCTION_FOLLOWING = "instruction_following"
VISUAL_QUALITY = "visual_quality"
PRESERVATION = "preservation"
CRITERIA = (INSTRUCTION_FOLLOWING, VISUAL_QUALITY, PRESERVATION)
SCORE_MAX = 10.0


def criteria_for(mode: str) -> tuple[str, ...]:
    """The criteria a row of ``mode`` (edit | t2i) is scored on: text-to-image has nothing to preserve."""
    if mode == "edit":
        return CRITERIA
    if mode == "t2i":
        return (INSTRUCTION_FOLLOWING, VISUAL_QUALITY)
    raise ValueError(f"mode must be edit or t2i, got {mode!r}")


def overall(scores: dict[str, float], mode: str) -> float:
    """The overall score in [0, 1] (module docstring); raises ValueError naming a missing or bad score."""
    for name in criteria_for(mode):
        value = scores.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= SCORE_MAX:
            raise ValueError(f"score {name!r} must be a number in [0, {SCORE_MAX:g}], got {value!r}")
    follow = float(scores[INSTRUCTION_FOLLOWING])
    fit = float(scores[VISUAL_QUALITY])
    if mode == "edit":
        fit = min(fit, float(scores[PRESERVATION]))
    return math.sqrt(follow * fit) / SCORE_MAX


def repaint_seed(seed: int, attempt: int) -> int:
    """The seed of paint ``attempt`` (1-based) of a row whose seed is ``seed``: the seed itself first, then a
    deterministic sequence derived from it (so a rerun repaints with the same seeds, and rows with nearby
    seeds do not share repaint seeds). In [0, 2**63)."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if attempt == 1:
        return seed
    digest = hashlib.sha256(f"dimflow-repaint:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
