"""Checked facts about ``painter.kind: longcat-image-edit``, each with where it was read.

Checkpoints (Apache-2.0, "License: apache-2.0" on both model pages and "LongCat-Image is licensed under Apache
2.0" in github.com/meituan-longcat/LongCat-Image README.md, commit af39f67 of 2026-02-03):
  - edit: ``meituan-longcat/LongCat-Image-Edit`` (https://huggingface.co/meituan-longcat/LongCat-Image-Edit;
    README "Model Download" table; diffusers 0.42.1 ``LongCatImageEditPipeline`` docstring example).
  - t2i: ``meituan-longcat/LongCat-Image`` (https://huggingface.co/meituan-longcat/LongCat-Image; README;
    ``LongCatImagePipeline`` docstring example; diffusers tests/pipelines/longcat_image/test_longcat_lora.py).
  Also published, not defaults here: ``LongCat-Image-Edit-Turbo`` (distilled: 8 steps, guidance 1, README
  "Turbo Mode") and ``LongCat-Image-Dev`` (mid-training checkpoint for fine-tuning).

Recommended sampling (README.md and scripts/inference_*.py at af39f67):
  - edit: ``num_inference_steps=50, guidance_scale=4.5, negative_prompt=''``; no size argument exists.
  - t2i: ``num_inference_steps=50, guidance_scale=4.0``, example size 768x1344 (h x w),
    ``enable_cfg_renorm=True``, ``enable_prompt_rewrite=True``. An older revision of the scripts
    (commit d8e6859) used ``cfg = 2.5  # original 4.5`` and ``steps = 30  # original 50``; the current one does
    not. Text to be drawn must be in quotes (README "Special Handling for Text Rendering").
  - GPU memory: README comments "Required ~17 GB" (t2i) and "~18 GB" (edit) *with*
    ``enable_model_cpu_offload()``, i.e. one component on the GPU at a time; not a resident figure.

What diffusers 0.42.1 does (read in .venv/.../diffusers/pipelines/longcat_image/):
  - Edit pipeline, ``__call__``: ``check_inputs`` refuses any ``prompt`` that is not a ``str`` or a list of
    length 1, and ``_encode_prompt`` encodes ``prompt[0]`` with one image. So one call paints ONE row (one
    source, one instruction); only ``num_images_per_prompt`` copies of it batch. Different sources per call:
    not possible; rows are painted one at a time.
  - Edit output size is not a parameter: ``calculate_dimensions(1024 * 1024, w / h)`` picks ~1 MP at the
    source's aspect, each side rounded UP to a multiple of 16; the source goes to the VAE at that size and to
    the text encoder at half of it. A painter must resize the result to the size the row asked for.
  - T2I pipeline batches prompts (``prompt: list[str]``, each padded to 512 tokens) with ``height``/``width``
    shared by the call; ``generator`` may be a list of one generator per image (``prepare_latents`` draws
    each row's noise from its own generator via ``randn_tensor``), checked against the batch size.
  - T2I ``enable_prompt_rewrite`` defaults to True: it calls ``text_encoder.generate`` (up to 512 new
    tokens) on all prompts of the call at once, padded together, and never gets the row's generator (if
    the checkpoint's generation_config samples, it draws from torch's global RNG; LongCat's
    generation_config.json was not seen). A per-row-seeded painter whose row must not depend on its batch
    passes False.
  - Both pipelines hard-code 16 latent channels (transformer ``in_channels`` 64 after 2x2 packing), a fixed
    512-token text length, CFG when ``guidance_scale > 1`` (a second transformer pass per step), and the
    negative prompt '' encoded once (batch 1) for a batch of rows.
  - ``text_processor`` is a ``Qwen2VLProcessor``; transformers 5 cannot build one without torchvision (its
    video processor); ``transforms/painter/diffusers_processor.py`` stands in for it, as for Qwen-Image-Edit.

Full-size configs (``tests/painter/test_longcat.py`` builds them on the meta device):
  - The published ``transformer/config.json``, ``vae/config.json`` and ``text_encoder/config.json`` of
    LongCat-Image-Edit were NOT found by the search tool (only the tokenizer files and ``model_index.json``
    of the repo and its mirrors are indexed). What is used instead, and from where:
  - transformer: ``TRANSFORMER_CONFIG`` as copied by two independent third parties: a ComfyUI LongCat node
    (comment "Config from LongCat-Image-Edit/transformer/config.json") and lightx2v
    configs/longcat_image/longcat_image_i2i.json (10 double + 20 single blocks, 24 heads x 128, joint dim
    3584, rope axes 16/56/56, in_channels 64). Unverified against the published file.
  - vae: the FLUX.1-dev VAE (stable-diffusion.cpp docs/longcat_image.md: "LongCat-Image uses ... the FLUX VAE";
    config from FLUX.1-dev's published vae/config.json). LongCat's own vae/config.json not seen.
  - text_encoder: Qwen2.5-VL-7B-Instruct (huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct config.json; the README
    thanks Qwen2.5-VL-7B-Instruct; joint dim 3584 is its hidden size). LongCat's own file not seen.
"""

from __future__ import annotations

from typing import Any

KIND = "longcat-image-edit"
LICENSE = "apache-2.0"
CHECKPOINTS = {"edit": "meituan-longcat/LongCat-Image-Edit", "t2i": "meituan-longcat/LongCat-Image"}
PIPELINE_CLASSES = {"edit": "LongCatImageEditPipeline", "t2i": "LongCatImagePipeline"}

# The models' own recommended settings (README.md / scripts at af39f67).
SAMPLING: dict[str, dict[str, Any]] = {
    "edit": {"num_inference_steps": 50, "guidance_scale": 4.5, "negative_prompt": ""},
    "t2i": {
        "num_inference_steps": 50,
        "guidance_scale": 4.0,
        "height": 768,
        "width": 1344,
        "enable_cfg_renorm": True,
    },
}
# What the painter passes to every text-to-image call: prompt rewriting samples outside the row's generator
# (off, unlike the README); CFG renorm as the README and diffusers' default have it (on).
T2I_FIXED = {"enable_prompt_rewrite": False, "enable_cfg_renorm": True}
EDIT_TARGET_AREA = 1024 * 1024  # diffusers' calculate_dimensions target; the edit size is not a parameter
EDIT_SIZE_MULTIPLE = 16
BATCHES_DIFFERENT_SOURCES = {"edit": False, "t2i": True}
TEXT_TOKENS = 512  # tokenizer_max_length in both pipelines

# Third-party copies of the published transformer config (see the module docstring).
TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 10,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "pooled_projection_dim": 3584,
    "axes_dims_rope": [16, 56, 56],
}
# FLUX.1-dev's published vae/config.json (LongCat's own not seen).
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
# Qwen2.5-VL-7B-Instruct's published config.json (LongCat's own text_encoder/config.json not seen).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "vocab_size": 152064,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}


def edit_output_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) LongCatImageEditPipeline paints for a source of this size (its own arithmetic)."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import calculate_dimensions

    return calculate_dimensions(EDIT_TARGET_AREA, width * 1.0 / height)
