"""Load a LongCat pipeline folder (model_index.json layout) with diffusers' own ``from_pretrained``.

The only component we build ourselves is ``text_processor``: the folder names transformers'
``Qwen2VLProcessor``, which transformers 5 refuses to construct without torchvision (it checks its video
processor class). The pipeline uses only its image processor and tokenizer (and chat template for the t2i
prompt rewrite), so we load those two from the same subfolder into a processor without the video half, as
the DIM kind does (``transforms/painter/dim/encoder.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2Tokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from transforms.painter.longcat.facts import PIPELINE_CLASSES

TEXT_PROCESSOR_DIR = "text_processor"


class ImageTextProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without the video processor (needs torchvision; LongCat never sends video)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
        )


def load_text_processor(folder: str | Path) -> ImageTextProcessor:
    """Tokenizer + PIL image processor (+ chat template if present) from a ``text_processor`` folder."""
    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: no preprocessor_config.json (not a LongCat text_processor folder)"
        )
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder))
    return ImageTextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None),
    )


def pipeline_class(task: str):
    """diffusers' pipeline class for ``task`` (``edit`` or ``t2i``)."""
    import diffusers

    if task not in PIPELINE_CLASSES:
        raise ValueError(f"task must be one of {sorted(PIPELINE_CLASSES)}, got {task!r}")
    return getattr(diffusers, PIPELINE_CLASSES[task])


def load_pipeline(folder: str | Path, task: str, *, dtype: torch.dtype = torch.float32):
    """``LongCatImageEditPipeline`` / ``LongCatImagePipeline`` from a local folder, on the CPU, in ``dtype``."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json (not a diffusers pipeline folder)")
    text_processor = load_text_processor(folder / TEXT_PROCESSOR_DIR)
    return pipeline_class(task).from_pretrained(str(folder), text_processor=text_processor, dtype=dtype)
