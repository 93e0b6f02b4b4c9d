"""Qwen2-VL's processor without its video processor, for diffusers pipelines whose folder names one.

Qwen-Image-Edit's ``processor`` and LongCat-Image(-Edit)'s ``text_processor`` components are transformers'
``Qwen2VLProcessor``, which transformers 5 cannot construct without torchvision (its video processor; not a
dependency: painters never send video), so diffusers' own loading of that component fails here. The kinds
load this one from the same subfolder (tokenizer, PIL image processor, the tokenizer's chat template) and
hand it to ``from_pretrained``; the pipelines call it exactly as they call ``Qwen2VLProcessor``. The PIL
image processor stands in for the torchvision one a released ``preprocessor_config.json`` may name; pixel
parity between the two backends is not checked here.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

# How a model_index.json names the processors this module stands in for.
PROCESSOR_CLASSES = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")


class WithoutVideoProcessor:
    """Mixin for a Qwen-VL processor class (put it first among the bases): built with no video processor,
    which needs torchvision; painters never send video. DIM's encoder processor uses it too."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
        )


class ImageTextProcessor(WithoutVideoProcessor, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with no video processor."""


def load_processor(folder: str | Path, component: str) -> ImageTextProcessor:
    """Tokenizer and PIL image processor of a pipeline folder's ``component`` subfolder (a released snapshot
    or ours), with the tokenizer's chat template if it has one."""
    path = Path(folder) / component
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} has no {component}/ folder")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return ImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(path)),
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None),
    )


def processor_components(model_index: dict) -> list[str]:
    """The components of a ``model_index.json`` that name a Qwen2-VL processor (loaded by ``load_processor``)."""
    return [
        name
        for name, value in model_index.items()
        if isinstance(value, list) and len(value) == 2 and value[1] in PROCESSOR_CLASSES
    ]
