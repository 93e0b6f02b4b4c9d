"""Full-size Qwen-Image-Edit built on the meta device (no memory, no weights): parameter counts.

Where the sizes come from (none of Qwen/Qwen-Image-Edit-2511's own config.json files could be found with
the search tool, so these are the published sizes of the family, not read from 2511's files):

- transformer: Qwen/Qwen-Image-Edit's ``transformer/config.json`` as quoted in a public write-up (identical
  to diffusers' ``QwenImageTransformer2DModel`` defaults); the same write-up gives 20,430,401,088
  parameters, which this build reproduces. 2511 may set ``zero_cond_t: true`` (DiffSynth-Studio's 2511
  example passes it); that flag adds no parameters (checked below).
- text encoder: Qwen2.5-VL-7B-Instruct's sizes from its module printout (vision: 32 blocks of 1280,
  MLP 3420, 16 heads, merger to 3584; text: 28 layers of 3584, 28 query / 4 key-value heads, MLP 18944,
  vocabulary 152064, an untied lm_head).
- VAE: diffusers' ``AutoencoderKLQwenImage`` defaults (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4],
  num_res_blocks 2, temperal_downsample [False, True, True]): not checked against a published file.
"""

from __future__ import annotations

import pytest
import torch

TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
TEXT = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full():
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(text_config=TEXT, vision_config=VISION, tie_word_embeddings=False)
    with torch.device("meta"):
        return {
            "transformer": QwenImageTransformer2DModel(**TRANSFORMER),
            "transformer_zero_cond_t": QwenImageTransformer2DModel(**TRANSFORMER, zero_cond_t=True),
            "text_encoder": Qwen2_5_VLForConditionalGeneration(config),
            "vae": AutoencoderKLQwenImage(),
        }


def test_parameter_counts(full):
    assert count(full["transformer"]) == 20_430_401_088  # the published count of Qwen-Image's MMDiT
    assert count(full["transformer_zero_cond_t"]) == count(full["transformer"])
    encoder = full["text_encoder"]
    assert count(encoder) == 8_292_166_656  # Qwen2.5-VL-7B-Instruct with its untied lm_head
    assert count(encoder.lm_head) == 152064 * 3584  # loaded, never used (the pipelines take hidden states)
    assert count(encoder.model.visual) == 676_550_144
    assert count(full["vae"]) == 126_892_531


def test_bfloat16_weight_memory_arithmetic(full):
    """What README's table says (arithmetic, 2 bytes per parameter): about 57.7 GB of weights in bfloat16."""
    total = sum(count(full[name]) for name in ("transformer", "text_encoder", "vae"))
    assert total == 28_849_460_275
    assert round(total * 2 / 1e9, 1) == 57.7
