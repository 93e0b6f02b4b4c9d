"""The SANA 1.5 DiT (diffusers SanaTransformer2DModel) plus DIM's learned null condition.

diffusers has no place for SANA's ``y_embedding`` (the unconditional caption used for classifier-free
guidance), so this wrapper holds it. As in NVlabs Sana, the null condition is a *caption* (caption_channels
wide) that goes through the same caption projection and y-norm as a real condition: it replaces the
condition before ``y_proj``.

Variable condition lengths: the reference pads every condition with zeros to 8192 tokens and masks the
padding out of cross-attention; the unconditional branch uses the same mask, i.e. the first N rows of
``y_embedding``. Here rows are padded only to the longest condition in the batch, with the same mask
semantics, which gives the same result for less work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import SanaTransformer2DModel
from torch import nn


class DimDiT(nn.Module):
    def __init__(
        self, transformer_kwargs: dict[str, Any], max_condition_length: int, cross_qk_norm_eps: float
    ):
        super().__init__()
        self.transformer = SanaTransformer2DModel(**transformer_kwargs)
        channels = int(transformer_kwargs["caption_channels"])
        # Same initialisation as the reference (only matters for the random tiny preset).
        self.y_embedding = nn.Parameter(torch.randn(max_condition_length, channels) / channels**0.5)
        for block in self.transformer.transformer_blocks:
            for norm in (block.attn2.norm_q, block.attn2.norm_k):
                if norm is not None:
                    norm.eps = cross_qk_norm_eps

    @property
    def max_condition_length(self) -> int:
        return int(self.y_embedding.shape[0])

    def null_condition(self, length: int) -> torch.Tensor:
        """The unconditional caption for a condition of ``length`` tokens."""
        return self.y_embedding[:length]

    def forward(
        self, latents: torch.Tensor, conditions: Sequence[torch.Tensor], timestep: torch.Tensor
    ) -> torch.Tensor:
        """latents [B, C, h, w]; conditions: B tensors [N_i, caption_channels]; timestep [B] -> velocity."""
        if len(conditions) != latents.shape[0]:
            raise ValueError(f"{len(conditions)} conditions for a batch of {latents.shape[0]}")
        captions, mask = pad_conditions(conditions, dtype=latents.dtype)
        return self.transformer(
            hidden_states=latents,
            encoder_hidden_states=captions,
            timestep=timestep,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]


def pad_conditions(
    conditions: Sequence[torch.Tensor], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad to the longest condition; mask is 1 on real tokens (diffusers turns 0s into -10000 bias)."""
    longest = max(int(c.shape[0]) for c in conditions)
    first = conditions[0]
    captions = first.new_zeros((len(conditions), longest, first.shape[-1]), dtype=dtype)
    mask = torch.zeros((len(conditions), longest), dtype=dtype, device=first.device)
    for row, condition in enumerate(conditions):
        captions[row, : condition.shape[0]] = condition.to(dtype)
        mask[row, : condition.shape[0]] = 1
    return captions, mask
