"""Tiny LongCat checkpoints: diffusers' and transformers' real classes at toy size, random weights.

Saved with ``save_pretrained`` in the released model_index.json layout (scheduler, vae, text_encoder,
tokenizer, text_processor, transformer), so tests load them through the same ``from_pretrained`` path as
``meituan-longcat/LongCat-Image(-Edit)``. Sizes follow diffusers' own LongCat transformer test
(tests/models/transformers/test_models_transformer_longcat_image.py: 1 double + 1 single block, 2 heads x 16,
rope axes summing to 16); what the pipelines hard-code is kept: 16 latent channels (transformer in_channels
64) and an 8x VAE (four blocks), since the edit pipeline sizes images in multiples of 16. The VAE's mid-block
attention is off: at the edit pipeline's fixed ~1 MP it would attend over 128x128 latents on the CPU.

No hub access: the tokenizer is DIM's tiny BPE (``transforms/painter/dim/tiny.py``) with Qwen's special
tokens, the image processor the PIL Qwen2-VL one capped at 112x112 pixels (16 image tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from transforms.painter.diffusers_processor import ImageTextProcessor
from transforms.painter.dim.checkpoint import default_cache_dir
from transforms.painter.dim.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer
from transforms.painter.longcat.facts import KIND, PIPELINE_CLASSES
from transforms.painter.tiny_install import install_once

TINY_VERSION = 1  # bump when anything below changes: the cache folder name carries it
TINY_SEED = 20250917
MODEL_INDEX = "model_index.json"
TEXT_PROCESSOR_DIR = "text_processor"
META_FILE = "dimflow.json"  # what this folder is; outside model_index.json, which diffusers validates

TEXT_HIDDEN = 32
TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x 2x2 packing, hard-coded by both pipelines
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TEXT_HIDDEN,
    "pooled_projection_dim": TEXT_HIDDEN,
    "axes_dims_rope": [4, 6, 6],
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "latent_channels": 16,
    "norm_num_groups": 4,
    "mid_block_add_attention": False,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
TINY_TEXT_ENCODER: dict[str, Any] = {
    "text_config": {
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TEXT_HIDDEN,
        "fullatt_block_indexes": [1],
    },
}
# LongCat's scheduler settings as a ComfyUI LongCat loader writes them (the published
# scheduler_config.json was not found); the pipelines pass their own sigmas and mu.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
PROCESSOR_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}


def build_qwen_tokenizer():
    """DIM's tiny BPE as transformers' ``Qwen2Tokenizer`` (the class model_index.json names)."""
    from transformers import Qwen2Tokenizer

    trained = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(pair) for pair in trained["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def build_components(tokenizer) -> dict[str, Any]:
    """Every component of a LongCat pipeline at tiny size (call under a fixed torch seed)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, LongCatImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text_config = dict(TINY_TEXT_ENCODER["text_config"])
    text_config.update(
        vocab_size=len(tokenizer), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]
    )
    encoder_config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=dict(TINY_TEXT_ENCODER["vision_config"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    processor = ImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil(size=dict(PROCESSOR_PIXELS)),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        "vae": AutoencoderKL(**TINY_VAE),
        "text_encoder": Qwen2_5_VLForConditionalGeneration(encoder_config).eval(),
        "tokenizer": tokenizer,
        "text_processor": processor,
        "transformer": LongCatImageTransformer2DModel(**TINY_TRANSFORMER),
    }


def build_tiny_checkpoint(task: str, folder: Path) -> None:
    """Write a complete tiny pipeline folder for ``task`` into ``folder``."""
    import diffusers

    tokenizer = build_qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        with torch.device("cpu"):
            components = build_components(tokenizer)
    getattr(diffusers, PIPELINE_CLASSES[task])(**components).save_pretrained(
        str(folder), safe_serialization=True
    )
    # transformers 5 nests the image processor in processor_config.json under our subclass's name; the
    # released text_processor folder has a plain preprocessor_config.json next to the tokenizer files.
    processor_dir = folder / TEXT_PROCESSOR_DIR
    (processor_dir / "processor_config.json").unlink()
    components["text_processor"].image_processor.save_pretrained(str(processor_dir))
    # save_pretrained records our processor subclass by its module; the released layout names transformers'.
    index_path = folder / MODEL_INDEX
    index = json.loads(index_path.read_text(encoding="utf-8"))
    index["text_processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    meta = {"kind": KIND, "task": task, "preset": "tiny", "weights": "random", "version": TINY_VERSION}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_tiny_checkpoint(task: str, cache_dir: str | Path | None = None) -> Path:
    """Folder of the tiny LongCat checkpoint for ``task``, built on first use.

    Safe when several processes call it at once: each builds into its own temporary folder and renames it
    into place; a loser of the race discards its copy and uses the winner's (identical) one.
    """
    if task not in ("edit", "t2i"):
        raise ValueError(f"task must be 'edit' or 't2i', got {task!r}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return install_once(
        root / f"tiny-{KIND}-{task}-v{TINY_VERSION}",
        MODEL_INDEX,
        lambda folder: build_tiny_checkpoint(task, folder),
    )
