"""The ``local`` designer: a transformers image-text-to-text model (Qwen2.5-VL by default), batched.

Rows are decoded and downscaled like the API designer's, then generated greedily (temperature 0, as DIM)
in batches of ``max_concurrency`` rows on the worker's device; rows with and without an image go in
separate batches. If a batch fails (out of memory, a bad row), its rows are retried one by one, so
one bad row costs one row. The model is loaded once per process and shared by every provider instance
in it (Beam may run several DoFn instances per process), and ``generate`` calls are serialised.

Without torchvision, ``AutoProcessor`` cannot build Qwen-VL's video processor; the designer needs
images only, so it then assembles the model's processor class from the tokenizer and image processor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass
class _Loaded:
    model: Any
    processor: Any
    device: str
    lock: threading.Lock


_LOADED: dict[tuple[str, str, str], _Loaded] = {}
_LOAD_LOCK = threading.Lock()


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
        self._loaded: _Loaded | None = None

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
        """The model's config resolves (a local folder, the Hugging Face cache, or the Hub when online)."""
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(self.model_id)
        except (OSError, ValueError) as exc:
            raise DesignerSetupError(
                f"designer.model={self.model_id!r} is not available here: not a local model folder, not in "
                f"the Hugging Face cache, and not fetched from the Hub ({_first_line(exc)})"
            ) from exc

    def setup(self) -> None:
        device = _resolve_device(self.device)
        dtype = _resolve_dtype(self.dtype, device)
        key = (self.model_id, device, dtype)
        with _LOAD_LOCK:
            if key not in _LOADED:
                _LOADED[key] = _load(self.model_id, device, dtype)
            self._loaded = _LOADED[key]

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
                for (index, _, _), result in zip(chunk, self._run(chunk), strict=True):
                    results[index] = result
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _run(self, chunk: list[tuple[int, str, Any]]) -> list[Design | DesignFailure]:
        """Generate for a chunk; on failure, retry its rows one at a time."""
        try:
            return self._generate(chunk)
        except Exception as exc:
            if len(chunk) == 1:
                log.warning("local designer failed on one row: %s: %s", type(exc).__name__, exc)
                return [
                    DesignFailure(
                        f"local designer failed: {type(exc).__name__}: {str(exc)[:300]}", attempts=1
                    )
                ]
            log.warning("local designer batch of %d failed (%s); retrying rows one by one", len(chunk), exc)
            return [result for item in chunk for result in self._run([item])]

    def _generate(self, chunk: list[tuple[int, str, Any]]) -> list[Design | DesignFailure]:
        import torch

        assert self._loaded is not None
        loaded = self._loaded
        processor = loaded.processor
        texts, images = [], []
        for _, prompt, image in chunk:
            content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
            messages = [{"role": "user", "content": content}]
            texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            if image is not None:
                images.append(image)
        inputs = processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(
            loaded.device
        )
        pad_id = processor.tokenizer.pad_token_id
        started = time.monotonic()
        with loaded.lock, torch.inference_mode():
            output = loaded.model.generate(
                **inputs, do_sample=False, max_new_tokens=self.max_tokens, pad_token_id=pad_id
            )
        latency = time.monotonic() - started
        generated = output[:, inputs["input_ids"].shape[1] :]
        replies = processor.batch_decode(generated, skip_special_tokens=True)
        tokens_in = inputs["attention_mask"].sum(dim=1).tolist()
        tokens_out = (
            (generated != pad_id).sum(dim=1).tolist()
            if pad_id is not None
            else [generated.shape[1]] * len(chunk)
        )
        results: list[Design | DesignFailure] = []
        for reply, n_in, n_out in zip(replies, tokens_in, tokens_out, strict=True):
            try:
                results.append(Design(parse_reply(reply), 1, int(n_in), int(n_out), latency))
            except ReplyError as exc:
                results.append(DesignFailure(str(exc), 1, int(n_in), int(n_out), latency))
        return results


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _resolve_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _load(model_id: str, device: str, dtype: str) -> _Loaded:
    import torch
    from transformers import AutoModelForImageTextToText

    log.info("loading local designer %s on %s (%s)", model_id, device, dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise DesignerSetupError(f"designer.model={model_id!r}: cannot load the model: {exc}") from exc
    model = model.to(device).eval()
    processor = _load_processor(model_id)
    processor.tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return _Loaded(model, processor, device, threading.Lock())


def _load_processor(model_id: str) -> Any:
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
        raise DesignerSetupError(
            f"designer.model={model_id!r}: no chat template with the tokenizer or processor"
        )
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
