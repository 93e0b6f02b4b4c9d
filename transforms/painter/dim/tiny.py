"""The ``tiny`` preset: DIM's classes at toy size with random weights, saved in the released layout.

Tests and the offline demo use it; it goes through the same loader as a real checkpoint. Everything is
deterministic (fixed torch seed on CPU, a BPE trained on a fixed corpus), so two builds give byte-identical
``model.safetensors``. The folder also carries ``processor/`` (tokenizer with Qwen's special tokens, a chat
template rendering the same turn format as Qwen2.5-VL's, the PIL image processor) and ``dimflow.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from transforms.painter.dim.checkpoint import (
    ARCH_FILE,
    MODEL_FILE,
    build_components,
    components_state,
    default_cache_dir,
    save_released,
)
from transforms.painter.dim.config import ARCH_FORMAT, resolve_arch
from transforms.painter.tiny_install import install_once

TINY_VERSION = 1  # bump when anything below changes: the cache folder name carries it
TINY_SEED = 20250902
PROCESSOR_DIR = "processor"
ENCODER_IMAGE_SIZE = 56  # 4 x 4 patches of 14 px -> 2 x 2 merged = 4 image tokens

# Qwen2.5-VL's added tokens, in Qwen's order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The same turn format as Qwen2.5-VL's template (default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|>), written for this preset.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "system\nYou are a helpful assistant.\nuser\nassistant\n",
    "Replace the red car with a blue bicycle and keep the street unchanged.",
    "Remove the lemons on the table. Make the sky purple at sunset, with soft light on the water.",
    "Edit instruction: add a small white cat sleeping on the sofa near the window.",
    "Global layout: a kitchen with a wooden table in the center and a lamp on the left.",
    "Local objects: the mug is green, the chair is made of metal, the wall is painted yellow.",
    "Edit area: the upper right corner of the image, where the clock hangs on the wall.",
    "Edited image: the same scene in the style of a watercolor painting, bright and clean.",
]

# Overrides of config.FULL_ARCH (token ids and vocab size are filled from the tokenizer).
TINY_ARCH: dict[str, Any] = {
    "encoder": {
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
        },
    },
    "encoder_image_size": ENCODER_IMAGE_SIZE,
    "processor": PROCESSOR_DIR,
    "projector": {"in_features": 64, "out_features": 48},
    "dit": {
        "out_channels": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "num_layers": 2,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 32,
        "caption_channels": 48,
        "sample_size": 8,
    },
    "max_condition_length": 256,
    "vae": {
        "latent_channels": 4,
        "attention_head_dim": 8,
        "encoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        "decoder_block_types": ["ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        "encoder_block_out_channels": [8, 16, 16, 32],
        "decoder_block_out_channels": [8, 16, 16, 32],
        "encoder_layers_per_block": [1, 1, 1, 1],
        "decoder_layers_per_block": [1, 1, 1, 1],
        "encoder_qkv_multiscales": [[], [], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [5], [5]],
    },
}


def build_tokenizer():
    """A byte-level BPE trained on CORPUS (deterministic), wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def tiny_arch_override(tokenizer) -> dict[str, Any]:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    arch = copy.deepcopy(TINY_ARCH)
    arch["encoder"]["text_config"].update(
        vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]
    )
    arch["encoder"].update(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return arch


def build_tiny_checkpoint(task: str, folder: Path) -> None:
    """Write a complete tiny checkpoint (weights, arch, processor) into ``folder``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tokenizer()
    processor_dir = folder / PROCESSOR_DIR
    tokenizer.save_pretrained(str(processor_dir))
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 12845056}).save_pretrained(
        str(processor_dir)
    )

    override = tiny_arch_override(tokenizer)
    arch = resolve_arch(task, override)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        with torch.device("cpu"):
            components = build_components(arch)
    save_released(components_state(components, arch), folder / MODEL_FILE)
    meta = {"format": ARCH_FORMAT, "task": task, "preset": "tiny", "weights": "random", "arch": override}
    (folder / ARCH_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_tiny_checkpoint(task: str, cache_dir: str | None = None) -> str:
    """Path of the tiny checkpoint for ``task``, built on first use.

    Safe when several processes call it at once: each builds into its own temporary folder and renames it
    into place; a loser of the race discards its copy and uses the winner's (identical) one.
    """
    if task not in ("edit", "t2i"):
        raise ValueError(f"task must be 'edit' or 't2i', got {task!r}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = root / f"tiny-{task}-v{TINY_VERSION}"
    return str(install_once(final, MODEL_FILE, lambda folder: build_tiny_checkpoint(task, folder)))
