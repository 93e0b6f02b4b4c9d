"""Qwen2-VL's processor without its video processor, loaded from a checkpoint's ``processor/`` folder.

transformers' ``Qwen2VLProcessor`` requires a video processor, which needs torchvision (not a dependency:
painters never send video), so diffusers' own loading of the ``processor`` component would fail here. The
painter loads this one from the same folder and hands it to ``from_pretrained``; the pipelines call it
exactly as they call ``Qwen2VLProcessor`` (text + images).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

PROCESSOR_DIR = "processor"


class ImageTextProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with no video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
        )


def load_processor(folder: Path) -> ImageTextProcessor:
    """Tokenizer and PIL image processor of a pipeline's ``processor/`` folder (a released snapshot or ours)."""
    path = Path(folder) / PROCESSOR_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} has no {PROCESSOR_DIR}/ folder")
    return ImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(str(path)),
        tokenizer=AutoTokenizer.from_pretrained(str(path)),
    )
