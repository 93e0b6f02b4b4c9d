"""The frozen Qwen2.5-VL encoder and DIM's condition: the hidden states of the user turn.

As in showlab/DIM (``data/tos_dataset.py``, ``models/modeling_dim.py``): the conversation is one user
message (the source image, then the prompt; the prompt alone for text-to-image) rendered by the chat
template without a generation prompt, so the template's default system turn comes first. The condition is
the last hidden state (after the final norm) of the tokens strictly between ``<|im_start|>user\\n`` and
``<|im_end|>``: ``<|vision_start|>``, the image tokens, ``<|vision_end|>``, then the prompt tokens.

The source goes to the encoder as the reference's vision helper prepares it: RGBA composited on white,
otherwise converted to RGB, then resized (bicubic) to a square of ``encoder_image_size``.

A micro-batch's rows are encoded in one forward (``encode_batch``), padded on the right as DIM's processor
is (``padding_side='right'`` in showlab/DIM ``infer/demo_edit.py``) with the attention mask: the model is
causal, so a row's real tokens never see the padding after them, and Qwen2.5-VL's 3-D rope positions are
computed from the mask (``get_rope_index``), so they are the row's positions alone; each image goes through
the vision tower as its own sequence (``cu_seqlens``). Rows with and without an image mix freely. A row's
condition is therefore the one it has alone, up to floating-point rounding of the larger matrix products
(one row alone is exactly the single-row forward).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from transforms.painter.diffusers_processor import WithoutVideoProcessor

USER_MARKER = "user\n"


class ImageTextProcessor(WithoutVideoProcessor, Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video processor (which needs torchvision; we never send video)."""


def load_processor(path: str | Path) -> ImageTextProcessor:
    """Tokenizer, PIL image processor and chat template from one folder (an HF snapshot or ours)."""
    folder = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    template = _chat_template(folder) or getattr(tokenizer, "chat_template", None)
    if not template:
        raise FileNotFoundError(
            f"{folder}: no chat template (chat_template.jinja, chat_template.json or tokenizer)"
        )
    return ImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def _chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = folder / "chat_template.json"
    if js.is_file():
        return json.loads(js.read_text(encoding="utf-8"))["chat_template"]
    return None


def encoder_image(image: Image.Image, size: int) -> Image.Image:
    """RGB (alpha over white) at ``size``x``size``; an image already so is returned as is (prefetch made it)."""
    if image.mode == "RGB" and image.size == (size, size):
        return image
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    else:
        image = image.convert("RGB")
    return image.resize((size, size), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class Condition:
    hidden: torch.Tensor  # [N, hidden_size], the user-turn tokens' last hidden states
    token_ids: torch.Tensor  # [N], for inspection and tests


class ConditionEncoder:
    def __init__(
        self, model: Qwen2_5_VLForConditionalGeneration, processor: ImageTextProcessor, image_size: int
    ):
        self.model = model
        self.processor = processor
        self.image_size = image_size
        tokenizer = processor.tokenizer
        self._im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self._im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._marker = [self._im_start, *tokenizer.encode(USER_MARKER, add_special_tokens=False)]
        self._special = sorted({t for t in tokenizer.all_special_tokens} | set(tokenizer.get_added_vocab()))

    def check_prompt(self, key: str, prompt: str) -> None:
        """Control tokens inside a prompt would break the turn structure the condition is cut from."""
        found = [token for token in self._special if token and token in prompt]
        if found:
            raise ValueError(f"row {key!r}: the prompt contains tokenizer control tokens {found}")

    def inputs(self, prompt: str, image: Image.Image | None):
        """Processor inputs for one row's one-turn conversation (see ``batch_inputs``)."""
        return self.batch_inputs([prompt], [image])

    def batch_inputs(self, prompts: Sequence[str], images: Sequence[Image.Image | None]):
        """Processor inputs for each row's one-turn conversation, right-padded to the longest row, with the
        attention mask. The prompt is stripped (the reference's designer output is), which also keeps
        ``user\n`` a token pair of its own for ``user_span``. ``images[i]`` None: a text-only row."""
        if len(prompts) != len(images) or not prompts:
            raise ValueError(
                f"{len(prompts)} prompts and {len(images)} images: one of each per row, at least one"
            )
        texts = []
        for prompt, image in zip(prompts, images, strict=True):
            content: list[dict] = [{"type": "image"}] if image is not None else []
            content.append({"type": "text", "text": prompt.strip()})
            texts.append(
                self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=False
                )
            )
        # The processor hands the images to the image placeholders in order, row by row.
        pictures = [encoder_image(image, self.image_size) for image in images if image is not None]
        return self.processor(
            text=texts, images=pictures or None, padding=True, padding_side="right", return_tensors="pt"
        )

    def user_span(self, input_ids: torch.Tensor) -> tuple[int, int]:
        """[begin, end) of the single user turn's content in a 1-D id sequence."""
        ids = input_ids.tolist()
        width = len(self._marker)
        begins = [i + width for i in range(len(ids) - width + 1) if ids[i : i + width] == self._marker]
        if len(begins) != 1:
            raise ValueError(f"expected exactly one user turn in the encoder input, found {len(begins)}")
        begin = begins[0]
        try:
            end = ids.index(self._im_end, begin)
        except ValueError:
            raise ValueError("the user turn is not closed by <|im_end|>") from None
        return begin, end

    def encode(self, prompt: str, image: Image.Image | None) -> Condition:
        return self.encode_batch([prompt], [image])[0]

    @torch.inference_mode()
    def encode_batch(self, prompts: Sequence[str], images: Sequence[Image.Image | None]) -> list[Condition]:
        """Each row's condition, from one forward over the right-padded batch."""
        batch = self.batch_inputs(prompts, images)
        mask = batch["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        for row, length in enumerate(lengths):  # right padding: a row's real tokens come first
            if not bool(mask[row, :length].all()) or bool(mask[row, length:].any()):
                raise ValueError(f"encoder input row {row} is not right-padded")
        device = self.model.device
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        # The base model (no lm_head): its last_hidden_state is after the final norm, as hidden_states[-1] was
        # in the reference.
        hidden = self.model.model(**batch, use_cache=False).last_hidden_state
        ids = batch["input_ids"].cpu()
        conditions = []
        for row, length in enumerate(lengths):
            begin, end = self.user_span(ids[row, :length])
            conditions.append(Condition(hidden=hidden[row, begin:end], token_ids=ids[row, begin:end]))
        return conditions
