"""DIM-4.6B architecture as data.

The released checkpoints (stdKonjac/DIM-4.6B-Edit, -T2I, -Edit-Stage1) ship only ``model.safetensors``, so
the architecture lives here. A checkpoint folder may carry ``dimflow.json`` whose ``arch`` object is merged
over these defaults (the tiny preset writes a complete one).

Sources (read, not copied): showlab/DIM ``models/modeling_dim.py`` (projector 2048->2304, condition length
8192, seed/steps/guidance hard-coded in ``denoise``), ``models/sana1-5_config/1024ms/*.yaml`` (SANA 1.5 1.6B
with qk-norm on self- and cross-attention, y-norm, no positional embedding, AutoencoderDC from
mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers, flow shift 3.0, flow DPM-Solver), Qwen2.5-VL-3B-Instruct's
config (its parameter count, 3,754,622,976, is checked by the tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

ARCH_FORMAT = 1

FULL_ARCH: dict[str, Any] = {
    # Frozen Qwen2.5-VL-3B-Instruct (transformers Qwen2_5_VLForConditionalGeneration).
    "encoder": {
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "tie_word_embeddings": True,
        },
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_channels": 3,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "hidden_act": "silu",
        },
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
    },
    # The reference asks Qwen's vision helper for a gen_resolution (1024) square, which rounds to a
    # multiple of 28: 1036 px -> 37 x 37 = 1369 image tokens. Fixed at the trained value.
    "encoder_image_size": 1036,
    # Tokenizer, image processor and chat template: an HF id, or a folder relative to the checkpoint.
    "processor": "Qwen/Qwen2.5-VL-3B-Instruct",
    # nn.Sequential(Linear, GELU(exact), Linear): keys projector.0.* and projector.2.*.
    "projector": {"in_features": 2048, "out_features": 2304},
    # diffusers SanaTransformer2DModel kwargs (in_channels is derived from the task).
    "dit": {
        "out_channels": 32,
        "num_attention_heads": 70,
        "attention_head_dim": 32,
        "num_layers": 20,
        "num_cross_attention_heads": 20,
        "cross_attention_head_dim": 112,
        "cross_attention_dim": 2240,
        "caption_channels": 2304,
        "mlp_ratio": 2.5,
        "attention_bias": False,
        "sample_size": 32,
        "patch_size": 1,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": None,
        "qk_norm": "rms_norm_across_heads",
    },
    # NVlabs MultiHeadCrossAttention builds its q/k RMSNorm with eps 1e-6 (diffusers' default is 1e-5).
    "cross_attention_qk_norm_eps": 1e-6,
    # Rows of the learned null condition y_embedding == the reference's max condition length.
    "max_condition_length": 8192,
    # diffusers AutoencoderDC kwargs: DC-AE f32c32, SANA 1.1 release.
    "vae": {
        "in_channels": 3,
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": [
            "ResBlock",
            "ResBlock",
            "ResBlock",
            "EfficientViTBlock",
            "EfficientViTBlock",
            "EfficientViTBlock",
        ],
        "decoder_block_types": [
            "ResBlock",
            "ResBlock",
            "ResBlock",
            "EfficientViTBlock",
            "EfficientViTBlock",
            "EfficientViTBlock",
        ],
        "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
        "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "upsample_block_type": "interpolate",
        "downsample_block_type": "Conv",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    },
    # Flow-matching DPM-Solver++ (2M) as in NVlabs Sana's flow_dpm-solver.
    "sampler": {"num_train_timesteps": 1000, "flow_shift": 3.0, "solver_order": 2},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge, anything else in ``override`` replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class DimArch:
    """A resolved architecture for one task; ``data`` is the merged arch dict."""

    task: str
    data: dict[str, Any]

    @property
    def latent_channels(self) -> int:
        return int(self.data["vae"]["latent_channels"])

    @property
    def vae_grid(self) -> int:
        """Pixels per latent cell (DC-AE compresses by 2 per stage after the first)."""
        return 2 ** (len(self.data["vae"]["encoder_block_out_channels"]) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.data["vae"]["scaling_factor"])

    @property
    def encoder_image_size(self) -> int:
        return int(self.data["encoder_image_size"])

    @property
    def max_condition_length(self) -> int:
        return int(self.data["max_condition_length"])

    @property
    def caption_channels(self) -> int:
        return int(self.data["dit"]["caption_channels"])

    def dit_kwargs(self) -> dict[str, Any]:
        """Edit concatenates the source latent on channels: 2x latent channels in."""
        kwargs = copy.deepcopy(self.data["dit"])
        kwargs["in_channels"] = self.latent_channels * (2 if self.task == "edit" else 1)
        return kwargs

    def vae_kwargs(self) -> dict[str, Any]:
        return copy.deepcopy(self.data["vae"])


def resolve_arch(task: str, override: dict[str, Any] | None = None) -> DimArch:
    if task not in ("edit", "t2i"):
        raise ValueError(f"task must be 'edit' or 't2i', got {task!r}")
    data = merge(FULL_ARCH, override or {})
    missing = sorted(set(FULL_ARCH) - set(data))
    if missing:
        raise ValueError(f"architecture is missing {missing}")
    return DimArch(task=task, data=data)
