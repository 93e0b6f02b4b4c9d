"""A local transformers image-text-to-text model (Qwen2.5-VL and kin), loaded once per process, generated
greedily in batches: shared by the ``local`` designer and the ``local`` judge.

The model is loaded once per (model, device, dtype) and shared by every provider instance in the process
(Beam may run several DoFn instances per process, and a designer and a judge may use the same model);
``generate`` calls on one loaded model are serialised by its lock.

Without torchvision, ``AutoProcessor`` cannot build Qwen-VL's video processor; the providers need images
only, so the model's processor class is then assembled from the tokenizer and image processor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    device: str
    lock: threading.Lock


@dataclass(frozen=True)
class Generated:
    """Replies of one batch, in order, with each row's prompt and reply token counts."""

    replies: list[str]
    tokens_in: list[int]
    tokens_out: list[int]
    latency_s: float


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, else mps, else cpu; anything else as given."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> bfloat16 on a CUDA device that supports it, else float32; anything else as given."""
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_available(model_id: str, field: str, setup_error: type[Exception]) -> None:
    """The model's config resolves (a local folder, the Hugging Face cache, or the Hub when online)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise setup_error(
            f"{field}={model_id!r} is not available here: not a local model folder, not in "
            f"the Hugging Face cache, and not fetched from the Hub ({first_line(exc)})"
        ) from exc


def shared_model(
    model_id: str, device: str, dtype: str, field: str, setup_error: type[Exception]
) -> LoadedModel:
    """The process-wide copy of ``model_id`` on ``device`` (``auto`` resolved) in ``dtype``, loaded on first use.

    ``field`` (e.g. ``judge.model``) and ``setup_error`` name the spec field and the error a failed load
    raises."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = (model_id, device, dtype)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(model_id, device, dtype, field, setup_error)
        return _LOADED[key]


def generate(
    loaded: LoadedModel, prompts: Sequence[tuple[list[dict[str, Any]], list[Any]]], max_new_tokens: int
) -> Generated:
    """Greedy replies for a batch: each prompt is (user message content parts, its PIL images in order).

    Content parts are chat-template parts (``{"type": "image"}``, ``{"type": "text", "text": ...}``); the
    images of all prompts go to the processor as one flat list, in prompt order.
    """
    import torch

    processor = loaded.processor
    texts, images = [], []
    for content, prompt_images in prompts:
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images.extend(prompt_images)
    inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(loaded.device)
    pad_id = processor.tokenizer.pad_token_id
    started = time.monotonic()
    with loaded.lock, torch.inference_mode():
        output = loaded.model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id
        )
    latency = time.monotonic() - started
    generated = output[:, inputs["input_ids"].shape[1] :]
    replies = processor.batch_decode(generated, skip_special_tokens=True)
    tokens_in = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
    tokens_out = (
        [int(n) for n in (generated != pad_id).sum(dim=1).tolist()]
        if pad_id is not None
        else [int(generated.shape[1])] * len(prompts)
    )
    return Generated(list(replies), tokens_in, tokens_out, latency)


def run_or_split(
    items: list[T], run: Callable[[list[T]], list[R]], fail: Callable[[Exception], R], what: str
) -> list[R]:
    """``run`` on a batch; if it raises (out of memory, one bad row), its rows again one by one, so one bad
    row costs one row (``fail(exc)`` is that row's result)."""
    try:
        return run(items)
    except Exception as exc:
        if len(items) == 1:
            log.warning("%s failed on one row: %s: %s", what, type(exc).__name__, exc)
            return [fail(exc)]
        log.warning("%s batch of %d failed (%s); retrying rows one by one", what, len(items), exc)
        return [result for item in items for result in run_or_split([item], run, fail, what)]


def _load(model_id: str, device: str, dtype: str, field: str, setup_error: type[Exception]) -> LoadedModel:
    import torch
    from transformers import AutoModelForImageTextToText

    log.info("loading local model %s on %s (%s) for %s", model_id, device, dtype, field)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise setup_error(f"{field}={model_id!r}: cannot load the model: {exc}") from exc
    model = model.to(device).eval()
    processor = _load_processor(model_id, field, setup_error)
    processor.tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return LoadedModel(model, processor, device, threading.Lock())


def _load_processor(model_id: str, field: str, setup_error: type[Exception]) -> Any:
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    try:
        return AutoProcessor.from_pretrained(model_id)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        log.info("torchvision is missing: building %s's processor without its video processor", model_id)
    config = AutoConfig.from_pretrained(model_id)
    base = PROCESSOR_MAPPING[type(config)]

    class ImageOnlyProcessor(base):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(model_id)
    template = tokenizer.chat_template or _processor_chat_template(model_id)
    if not template:
        raise setup_error(f"{field}={model_id!r}: no chat template with the tokenizer or processor")
    return ImageOnlyProcessor(
        image_processor=AutoImageProcessor.from_pretrained(model_id),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
    )


def _processor_chat_template(model_id: str) -> str | None:
    """The processor-level template (``chat_template.jinja`` or ``chat_template.json``), if the repo has one."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(model_id, name, _raise_exceptions_for_missing_entries=False)
        if path:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None
