"""The ``local`` judge: a transformers vision-language model (Qwen2.5-VL, ImgEdit-Judge, ...) on the worker.

Rows are decoded and downscaled, then generated greedily (temperature 0, so a ``quality_key`` always names
the same verdict) in batches of ``max_concurrency`` rows; edit rows (two images: source, then edited) and
text-to-image rows (one image) go in separate batches. The model is loaded once per process and shared with
a local designer of the same model (``transforms.vlm.local_model``). A failing batch is retried row by row.

A reply that is not a verdict is a ``JudgeFailure`` at once, without asking again: greedy decoding of the
same input writes the same reply, so a retry would only cost time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transforms.designer.image import DEFAULT_MAX_SIDE, ImageError, load_image
from transforms.judge.base import JudgeFailure, JudgeProvider, JudgeRequest, JudgeSetupError, Verdict
from transforms.judge.parse import JudgeReplyError, parse_verdict
from transforms.judge.rubric import DEFAULT_RUBRIC, Rubric
from transforms.judge.scores import overall
from transforms.vlm.local_model import LoadedModel, check_available, generate, run_or_split, shared_model

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"

# (index in the request list, mode, prompt, images)
_Item = tuple[int, str, str, list[Any]]


class LocalJudge(JudgeProvider):
    """Verdicts from a local vision-language model, greedy decoding, batched on one device."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 512,
        max_concurrency: int = 8,
        temperature: float = 0.0,
        device: str = "auto",
        dtype: str = "auto",
        rubric: Rubric = DEFAULT_RUBRIC,
        image_max_side: int = DEFAULT_MAX_SIDE,
    ):
        if temperature != 0:
            raise JudgeSetupError(
                f"judge.temperature={temperature!r}: the local judge decodes greedily (temperature 0) so that "
                "a quality_key always names the same verdict"
            )
        if int(max_tokens) < 1 or int(max_concurrency) < 1:
            raise JudgeSetupError("judge.max_tokens and judge.max_concurrency must be >= 1")
        self.model_id = model or DEFAULT_MODEL
        self.max_tokens = int(max_tokens)
        self.batch_size = int(max_concurrency)
        self.device = device
        self.dtype = dtype
        self.rubric = rubric
        self.image_max_side = int(image_max_side)
        self.name = f"local:{self.model_id}"
        self._loaded: LoadedModel | None = None

    def __repr__(self) -> str:
        return f"LocalJudge(model={self.model_id!r}, device={self.device!r}, batch_size={self.batch_size})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def config(self) -> dict[str, Any]:
        # dtype and device are left out on purpose: they change rounding, not what was asked for.
        return {
            "kind": "local",
            "model": self.model_id,
            "rubric": self.rubric.version,
            "decoding": "greedy",
            "max_tokens": self.max_tokens,
            "image_max_side": self.image_max_side,
        }

    def preflight(self) -> None:
        check_available(self.model_id, "judge.model", JudgeSetupError)

    def setup(self) -> None:
        self._loaded = shared_model(self.model_id, self.device, self.dtype, "judge.model", JudgeSetupError)

    def teardown(self) -> None:
        self._loaded = None  # the process-wide copy stays for other instances

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict | JudgeFailure]:
        if self._loaded is None:
            raise RuntimeError(f"{self!r}: judge() called before setup()")
        results: list[Verdict | JudgeFailure | None] = [None] * len(requests)
        groups: dict[str, list[_Item]] = {"edit": [], "t2i": []}
        for index, request in enumerate(requests):
            mode = "t2i" if request.source is None else "edit"
            try:
                images = [] if request.source is None else [self._image(request.source, "source image")]
                images.append(self._image(request.edited, "edited image"))
            except ImageError as exc:
                results[index] = JudgeFailure(str(exc), attempts=0)
                continue
            groups[mode].append((index, mode, self.rubric.prompt(mode, request.instruction), images))
        for items in groups.values():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                outcomes = run_or_split(chunk, self._generate, _failed, "local judge")
                for (index, *_), result in zip(chunk, outcomes, strict=True):
                    results[index] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _image(self, data: bytes, label: str) -> Any:
        return load_image(data, self.image_max_side, label, "judge")

    def _generate(self, chunk: list[_Item]) -> list[Verdict | JudgeFailure]:
        assert self._loaded is not None
        prompts = [
            ([{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}], images)
            for _, _, prompt, images in chunk
        ]
        out = generate(self._loaded, prompts, self.max_tokens)
        results: list[Verdict | JudgeFailure] = []
        for (_, mode, _, _), reply, n_in, n_out in zip(
            chunk, out.replies, out.tokens_in, out.tokens_out, strict=True
        ):
            try:
                scores, reason = parse_verdict(reply, mode, self.rubric)
            except JudgeReplyError as exc:
                results.append(JudgeFailure(str(exc), 1, n_in, n_out, out.latency_s))
                continue
            results.append(Verdict(scores, overall(scores, mode), reason, 1, n_in, n_out, out.latency_s))
        return results


def _failed(exc: Exception) -> JudgeFailure:
    return JudgeFailure(f"local judge failed: {type(exc).__name__}: {str(exc)[:300]}", attempts=1)
