"""The ``openai`` designer: any OpenAI-compatible chat-completions endpoint, rate limited and retried.

One user message carries the source image (a bounded base64 JPEG) and our prompt; DIM's defaults are
temperature 0 and a fixed seed. The endpoint machinery (client, key from the environment, per-worker
limits, retries with Retry-After, scrubbing of every server text) is ``transforms.vlm.openai_chat``,
shared with the judge; this module only says what to ask and how to read the answer.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

from transforms.designer.base import (
    Design,
    DesignerProvider,
    DesignerSetupError,
    DesignFailure,
    DesignRequest,
)
from transforms.designer.image import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SIDE,
    ImageError,
    image_tokens,
    prepare_jpeg,
)
from transforms.designer.parse import ReplyError, parse_reply
from transforms.designer.prompt import PROMPT_VERSION, build_prompt
from transforms.vlm.openai_chat import ChatEndpoint, ChatFailure, FinalReply, OnChatEndpoint

log = logging.getLogger(__name__)


class OpenAIDesigner(OnChatEndpoint, DesignerProvider):
    """Blueprints from an OpenAI-compatible vision chat model, under per-worker rate-limit shares."""

    def __init__(
        self,
        *,
        model: str,
        max_tokens: int = 1024,
        image_max_side: int = DEFAULT_MAX_SIDE,
        image_max_bytes: int = DEFAULT_MAX_BYTES,
        **endpoint: Any,
    ):
        """``endpoint``: the other settings of ``ChatEndpoint`` (base_url, api_key_env, limits, retries,
        sampling, workers), with its defaults."""
        self._endpoint = ChatEndpoint(
            section="designer",
            setup_error=DesignerSetupError,
            model=model,
            max_tokens=max_tokens,
            **endpoint,
        )
        self.model = model
        self.image_max_side = int(image_max_side)
        self.image_max_bytes = int(image_max_bytes)
        self.name = f"openai:{model}"

    def __repr__(self) -> str:
        return f"OpenAIDesigner(model={self.model!r}, endpoint={self.endpoint!r}, workers={self.workers})"

    def config(self) -> dict[str, Any]:
        return {
            "kind": "openai",
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": PROMPT_VERSION,
            **self.sampling(),
            "image_max_side": self.image_max_side,
        }

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        return self._endpoint.fan_out(requests, self._design_row)

    def _design_row(self, request: DesignRequest) -> Design | DesignFailure:
        try:
            return self._design_one(request)
        except Exception as exc:  # a bug here must cost one row, not the batch
            log.exception("designer row %s: unexpected error", request.key)
            scrubbed = self._endpoint.scrub(str(exc))
            return DesignFailure(f"designer internal error: {type(exc).__name__}: {scrubbed}", 0)

    def _design_one(self, request: DesignRequest) -> Design | DesignFailure:
        try:
            messages, estimate = self._messages(request)
        except ImageError as exc:
            return DesignFailure(str(exc), attempts=0)
        outcome = self._endpoint.complete(request.key, messages, estimate, _blueprint)
        if isinstance(outcome, ChatFailure):
            return DesignFailure(
                outcome.error, outcome.attempts, outcome.tokens_in, outcome.tokens_out, outcome.latency_s
            )
        return Design(
            outcome.value, outcome.attempts, outcome.tokens_in, outcome.tokens_out, outcome.latency_s
        )

    def _messages(self, request: DesignRequest) -> tuple[list[dict[str, Any]], int]:
        """The chat messages and the request's token estimate (prompt + image + the reply's ceiling)."""
        prompt = build_prompt(request.instruction, has_image=request.image is not None)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        estimate = len(prompt) // 4 + 16 + self._endpoint.max_tokens
        if request.image is not None:
            prepared = prepare_jpeg(request.image, self.image_max_side, self.image_max_bytes)
            url = "data:image/jpeg;base64," + base64.b64encode(prepared.jpeg).decode("ascii")
            content.insert(0, {"type": "image_url", "image_url": {"url": url, "detail": "high"}})
            estimate += image_tokens(prepared.width, prepared.height)
        return [{"role": "user", "content": content}], estimate


def _blueprint(text: str | None) -> str:
    """A designer reply that is not a blueprint fails its row without another call (as it always has)."""
    try:
        return parse_reply(text)
    except ReplyError as exc:
        raise FinalReply(str(exc)) from None
