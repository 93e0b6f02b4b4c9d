"""The ``local`` designer: a transformers image-text-to-text model (Qwen2.5-VL by default), batched.

Rows are decoded and downscaled like the API designer's, then generated greedily (temperature 0, as DIM)
in batches of ``max_concurrency`` rows on the worker's device; rows with and without an image go in
separate batches. If a batch fails (out of memory, a bad row), its rows are retried one by one, so
one bad row costs one row. Loading (once per process, shared with the local judge), device and dtype
resolution and batched generation are ``transforms.vlm.local_model``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transforms.designer.base import (
    Design,
    DesignerProvider,
    DesignerSetupError,
    DesignFailure,
    DesignRequest,
)
from transforms.designer.image import DEFAULT_MAX_SIDE, ImageError, load_image
from transforms.designer.parse import ReplyError, parse_reply
from transforms.designer.prompt import PROMPT_VERSION, build_prompt
from transforms.vlm.local_model import LoadedModel, check_available, generate, run_or_split, shared_model

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


class LocalDesigner(DesignerProvider):
    """Blueprints from a local vision-language model, greedy decoding, batched on one device."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 1024,
        max_concurrency: int = 8,
        temperature: float = 0.0,
        device: str = "auto",
        dtype: str = "auto",
        image_max_side: int = DEFAULT_MAX_SIDE,
    ):
        if temperature != 0:
            raise DesignerSetupError(
                f"designer.temperature={temperature!r}: the local designer decodes greedily (temperature 0, "
                "DIM's setting) so that a design_key always names the same blueprint"
            )
        if int(max_tokens) < 1 or int(max_concurrency) < 1:
            raise DesignerSetupError("designer.max_tokens and designer.max_concurrency must be >= 1")
        self.model_id = model or DEFAULT_MODEL
        self.max_tokens = int(max_tokens)
        self.batch_size = int(max_concurrency)
        self.device = device
        self.dtype = dtype
        self.image_max_side = int(image_max_side)
        self.name = f"local:{self.model_id}"
        self._loaded: LoadedModel | None = None

    def __repr__(self) -> str:
        return f"LocalDesigner(model={self.model_id!r}, device={self.device!r}, batch_size={self.batch_size})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def config(self) -> dict[str, Any]:
        # dtype and device are left out on purpose: they change rounding, not what was asked for.
        return {
            "kind": "local",
            "model": self.model_id,
            "prompt": PROMPT_VERSION,
            "decoding": "greedy",
            "max_tokens": self.max_tokens,
            "image_max_side": self.image_max_side,
        }

    def preflight(self) -> None:
        check_available(self.model_id, "designer.model", DesignerSetupError)

    def setup(self) -> None:
        self._loaded = shared_model(
            self.model_id, self.device, self.dtype, "designer.model", DesignerSetupError
        )

    def teardown(self) -> None:
        self._loaded = None  # the process-wide copy stays for other instances

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        if self._loaded is None:
            raise RuntimeError(f"{self!r}: design() called before setup()")
        results: list[Design | DesignFailure | None] = [None] * len(requests)
        groups: dict[bool, list[tuple[int, str, Any]]] = {True: [], False: []}
        for index, request in enumerate(requests):
            image = None
            if request.image is not None:
                try:
                    image = load_image(request.image, self.image_max_side)
                except ImageError as exc:
                    results[index] = DesignFailure(str(exc), attempts=0)
                    continue
            prompt = build_prompt(request.instruction, has_image=image is not None)
            groups[image is not None].append((index, prompt, image))
        for items in groups.values():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                outcomes = run_or_split(chunk, self._generate, _failed, "local designer")
                for (index, _, _), result in zip(chunk, outcomes, strict=True):
                    results[index] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _generate(self, chunk: list[tuple[int, str, Any]]) -> list[Design | DesignFailure]:
        assert self._loaded is not None
        prompts = [
            (
                ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}],
                [] if image is None else [image],
            )
            for _, prompt, image in chunk
        ]
        out = generate(self._loaded, prompts, self.max_tokens)
        results: list[Design | DesignFailure] = []
        for reply, n_in, n_out in zip(out.replies, out.tokens_in, out.tokens_out, strict=True):
            try:
                results.append(Design(parse_reply(reply), 1, n_in, n_out, out.latency_s))
            except ReplyError as exc:
                results.append(DesignFailure(str(exc), 1, n_in, n_out, out.latency_s))
        return results


def _failed(exc: Exception) -> DesignFailure:
    return DesignFailure(f"local designer failed: {type(exc).__name__}: {str(exc)[:300]}", attempts=1)
