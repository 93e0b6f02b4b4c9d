"""The judge seam: (instruction, source image, edited image) -> scores, an overall score and a reason.

A judge is a vision-language model asked, with dimflow's rubric (or the user's, ``judge.rubric``), how well
an edited image follows its instruction, how good it looks, and whether what should not change did not.
Providers (``openai``, ``local``) implement ``JudgeProvider``; the Beam stage hands them batches and gets
exactly one ``Verdict`` or ``JudgeFailure`` back per request, in order. A failure is never a row failure:
the row keeps its (paid-for) image and records ``judge_error``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class JudgeSetupError(RuntimeError):
    """The judge cannot start (missing API key, bad settings, unreadable rubric, unloadable model)."""


@dataclass(frozen=True)
class JudgeRequest:
    key: str  # row id, for error messages
    instruction: str  # the manifest's instruction (not the blueprint): what the user asked for
    source: bytes | None  # the source's encoded bytes for edits; None for text-to-image rows
    edited: bytes  # the painted image, encoded as written to the output


@dataclass(frozen=True)
class Verdict:
    """A parsed judgement. ``scores`` maps each criterion (``transforms.judge.scores.CRITERIA``; no
    ``preservation`` for text-to-image) to a number in [0, 10]; ``overall`` is ``scores.overall(...)``."""

    scores: dict[str, float]
    overall: float
    reason: str
    attempts: int = 1  # calls made for this judgement (retries included)
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class JudgeFailure:
    """No usable judgement (timeouts, errors, a reply that is not the asked-for JSON after retries)."""

    error: str
    attempts: int = 1
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float = 0.0


class JudgeProvider(abc.ABC):
    """One judge backend. Built once per worker (``setup``), then called with batches."""

    #: Short name written to provenance ``judge`` (e.g. ``openai:gpt-4o``, ``local:Qwen/...``).
    name: str

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes a verdict (model, endpoint host, rubric version, temperature, seed, ...).

        It enters the row's ``quality_key``; secrets and rate limits never do.
        """

    def preflight(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Cheap driver-side check that ``setup`` can work; raises ``JudgeSetupError``. Sends nothing."""

    def setup(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Acquire clients/models; called once per worker before the first batch."""

    def teardown(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release what ``setup`` acquired."""

    @abc.abstractmethod
    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict | JudgeFailure]:
        """One result per request, in order; per-row problems are ``JudgeFailure``, not raises."""


@dataclass(frozen=True)
class JudgedAttempt:
    """One paint of a row and what the judge said of it (an element of provenance ``paint_attempts``)."""

    attempt: int  # 1-based
    seed: int
    render_key: str
    output_uri: str | None = None
    output_sha256: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    overall: float | None = None
    judge_error: str | None = None
    error: str | None = None  # the paint/write error of a repaint that failed

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
