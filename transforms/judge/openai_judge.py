"""The ``openai`` judge: any OpenAI-compatible vision chat endpoint (OpenAI, Azure, vLLM/SGLang serving
Qwen2.5-VL-72B or ImgEdit-Judge) scores each painted image with the rubric.

It uses the designer's endpoint machinery (``transforms.vlm.openai_chat``: key from the environment,
per-worker limits, Retry-After, bounded attempts, scrubbing) with a limiter scope of its own (``judge|``
before endpoint and model), so a judge and a designer on one endpoint each keep to their own section's
budget. One user message carries the images (the source first, then the edited image, for edits; the
edited image alone for text-to-image), each a bounded base64 JPEG, then the rubric's prompt. A reply that
is not the asked-for verdict is asked for again (the server may sample differently, or recover from a
truncated reply); after ``max_attempts`` the row gets a ``JudgeFailure`` and keeps its image.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from transforms.designer.image import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SIDE,
    ImageError,
    image_tokens,
    prepare_jpeg,
)
from transforms.judge.base import JudgeFailure, JudgeProvider, JudgeRequest, JudgeSetupError, Verdict
from transforms.judge.parse import JudgeReplyError, parse_verdict
from transforms.judge.rubric import DEFAULT_RUBRIC, Rubric
from transforms.judge.scores import overall
from transforms.vlm.openai_chat import ChatEndpoint, ChatFailure, FinalReply, OnChatEndpoint, RetryableReply

log = logging.getLogger(__name__)

SCOPE_PREFIX = "judge|"


class OpenAIJudge(OnChatEndpoint, JudgeProvider):
    """Verdicts from an OpenAI-compatible vision chat model, under the judge's own per-worker limits."""

    def __init__(
        self,
        *,
        model: str,
        max_tokens: int = 512,
        rubric: Rubric = DEFAULT_RUBRIC,
        image_max_side: int = DEFAULT_MAX_SIDE,
        image_max_bytes: int = DEFAULT_MAX_BYTES,
        **endpoint: Any,
    ):
        """``endpoint``: the other settings of ``ChatEndpoint`` (base_url, api_key_env, limits, retries,
        sampling, workers), with its defaults; a verdict is short, so ``max_tokens`` is smaller than the
        designer's."""
        self._endpoint = ChatEndpoint(
            section="judge",
            setup_error=JudgeSetupError,
            scope_prefix=SCOPE_PREFIX,
            model=model,
            max_tokens=max_tokens,
            **endpoint,
        )
        self.model = model
        self.rubric = rubric
        self.image_max_side = int(image_max_side)
        self.image_max_bytes = int(image_max_bytes)
        self.name = f"openai:{model}"

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, endpoint={self.endpoint!r}, rubric={self.rubric.name!r})"

    def config(self) -> dict[str, Any]:
        return {
            "kind": "openai",
            "model": self.model,
            "endpoint": self.endpoint,
            "rubric": self.rubric.version,
            **self.sampling(),
            "image_max_side": self.image_max_side,
        }

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict | JudgeFailure]:
        return self._endpoint.fan_out(requests, self._judge_row)

    def _judge_row(self, request: JudgeRequest) -> Verdict | JudgeFailure:
        try:
            return self._judge_one(request)
        except Exception as exc:  # a bug here must cost one row's verdict, not the batch
            log.exception("judge row %s: unexpected error", request.key)
            scrubbed = self._endpoint.scrub(str(exc))
            return JudgeFailure(f"judge internal error: {type(exc).__name__}: {scrubbed}", 0)

    def _judge_one(self, request: JudgeRequest) -> Verdict | JudgeFailure:
        mode = "t2i" if request.source is None else "edit"
        try:
            messages, estimate = self._messages(request, mode)
        except ImageError as exc:
            return JudgeFailure(str(exc), attempts=0)

        def parse(text: str | None) -> tuple[dict[str, float], str]:
            try:
                return parse_verdict(text, mode, self.rubric)
            except JudgeReplyError as exc:
                raise (RetryableReply if exc.retryable else FinalReply)(str(exc)) from None

        outcome = self._endpoint.complete(request.key, messages, estimate, parse)
        if isinstance(outcome, ChatFailure):
            return JudgeFailure(
                outcome.error, outcome.attempts, outcome.tokens_in, outcome.tokens_out, outcome.latency_s
            )
        scores, reason = outcome.value
        return Verdict(
            scores,
            overall(scores, mode),
            reason,
            outcome.attempts,
            outcome.tokens_in,
            outcome.tokens_out,
            outcome.latency_s,
        )

    def _messages(self, request: JudgeRequest, mode: str) -> tuple[list[dict[str, Any]], int]:
        """The chat messages (images first, then the prompt) and the request's token estimate."""
        prompt = self.rubric.prompt(mode, request.instruction)
        images = [(request.source, "source image")] if request.source is not None else []
        images.append((request.edited, "edited image"))
        content: list[dict[str, Any]] = []
        estimate = len(prompt) // 4 + 16 + self._endpoint.max_tokens
        for data, label in images:
            prepared = prepare_jpeg(data, self.image_max_side, self.image_max_bytes, label, "judge")
            url = "data:image/jpeg;base64," + base64.b64encode(prepared.jpeg).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url, "detail": "high"}})
            estimate += image_tokens(prepared.width, prepared.height)
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}], estimate
