"""The ``tiny`` Qwen checkpoints: the real diffusers/transformers classes at toy size with random weights.

Sizes follow diffusers' own fast tests of these pipelines (tests/pipelines/qwenimage/), except the VAE keeps
the released 8x spatial compression (three downsamples) so the edit pipeline's fixed 1024^2-pixel source
latents stay 64 x 64 tokens. Each pipeline is saved with ``save_pretrained`` in the ``model_index.json``
layout and loaded by ``from_pretrained`` like a released checkpoint. The tokenizer is DIM's tiny byte-level
BPE (Qwen's special tokens, trained offline on a fixed corpus), so nothing comes from the Hub; builds are
deterministic (fixed seed), and race-safe like DIM's tiny (a private folder renamed into place).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

TINY_VERSION = 1  # bump when anything below changes: the cache folder name carries it
TINY_SEED = 20260115
PIPELINES = {"edit": "QwenImageEditPlusPipeline", "t2i": "QwenImagePipeline"}
TEXT_HIDDEN = 32  # the text encoder's width = the transformer's joint_attention_dim

# Overrides of the published configs, at toy size (the keys are the classes' own arguments).
TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TEXT_HIDDEN,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 4, 4),
}
VAE = {
    "base_dim": 4,
    "z_dim": 4,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * 4,
    "latents_std": [1.0] * 4,
}
TEXT_CONFIG = {
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
}
VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_heads": 2,
    "out_hidden_size": TEXT_HIDDEN,
    "fullatt_block_indexes": [1],
}


def build_components() -> dict:
    """The six components both Qwen pipelines take, freshly built with TINY_SEED."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from transforms.painter.diffusers_processor import ImageTextProcessor
    from transforms.painter.dim.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

    with tempfile.TemporaryDirectory(prefix="dimflow-qwen-tokenizer-") as scratch:
        build_tokenizer().save_pretrained(scratch)
        tokenizer = Qwen2Tokenizer.from_pretrained(scratch)  # the class the released checkpoints name
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    processor = ImageTextProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            **TEXT_CONFIG,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config=VISION_CONFIG,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        with torch.device("cpu"):
            transformer = QwenImageTransformer2DModel(**TRANSFORMER)
            vae = AutoencoderKLQwenImage(**VAE)
            text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "processor": processor,
    }


def build_tiny_checkpoint(task: str, folder: Path) -> None:
    """Write the tiny pipeline for ``task`` into ``folder`` (``model_index.json`` layout)."""
    import diffusers

    components = build_components()
    pipeline_class = getattr(diffusers, PIPELINES[task])
    if task == "t2i":  # QwenImagePipeline takes no processor
        components.pop("processor")
    pipeline_class(**components).save_pretrained(str(folder), safe_serialization=True)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    if "processor" in index:  # as the released checkpoints name it (ours only drops the video processor)
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_tiny_checkpoint(task: str, cache_dir: str | Path | None = None) -> Path:
    """Folder of the tiny Qwen checkpoint for ``task``, built on first use.

    Safe when several processes call it at once: each builds into its own temporary folder and renames it
    into place; a loser of the race discards its copy and uses the winner's (identical) one.
    """
    from transforms.painter.dim.checkpoint import default_cache_dir
    from transforms.painter.tiny_install import install_once

    if task not in PIPELINES:
        raise ValueError(f"task must be one of {sorted(PIPELINES)}, got {task!r}")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return install_once(
        root / f"tiny-qwen-image-{task}-v{TINY_VERSION}",
        "model_index.json",
        lambda folder: build_tiny_checkpoint(task, folder),
    )
