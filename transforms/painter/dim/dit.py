"""The SANA 1.5 DiT (diffusers SanaTransformer2DModel) plus DIM's learned null condition.

diffusers has no place for SANA's ``y_embedding`` (the unconditional caption used for classifier-free
guidance), so this wrapper holds it. As in NVlabs Sana, the null condition is a *caption* (caption_channels
wide) that goes through the same caption projection and y-norm as a real condition: it replaces the
condition before ``y_proj``.

Variable condition lengths: the reference pads every condition with zeros to 8192 tokens and masks the
padding out of cross-attention; the unconditional branch uses the same mask, i.e. the first N rows of
``y_embedding``. Here rows are padded only to the longest condition in the batch, with the same mask
semantics (an additive -inf bias on the padded keys, so they get exactly zero weight), which gives the same
result for less work.

The condition is constant over the denoising steps, so ``cross_condition`` runs the caption projection, the
y-norm and every block's cross-attention key/value projections once per sampling call (see ``attention``);
``forward`` then runs the blocks with those keys/values. The null condition's keys/values are computed once
for the longest condition of the batch (``y_embedding[:L]``), kept as one [1, heads, L, head_dim] tensor per
block, and shared by every unconditional row without being copied per row: a row of N tokens masks
everything after its first N, i.e. it attends to exactly ``y_embedding[:N]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SanaTransformer2DModel
from torch import nn

from transforms.painter.dim.attention import (
    CachedCrossAttnProcessor,
    CrossKV,
    fold_bias,
    key_bias,
    project_kv,
)


@dataclass
class CrossCondition:
    """Cross-attention inputs of one sampling call, for rows ``[uncond rows, cond rows]`` (or cond only).

    ``keys``/``values``: the B conditional rows', one [B, heads, L, head_dim] tensor per block; ``bias``:
    [B, 1, 1, L] additive mask, or None when no row is padded (the unconditional rows share it: row b of
    either branch has the same length); ``lengths``: each conditional row's real token count;
    ``null_keys``/``null_values``: the null condition's, one [1, heads, L, head_dim] tensor per block, shared
    by the B unconditional rows (None: no unconditional rows).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    bias: torch.Tensor | None
    lengths: tuple[int, ...]
    null_keys: list[torch.Tensor] | None = None
    null_values: list[torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        """Rows of the DiT batch these keys/values serve (2B with the null condition)."""
        return len(self.lengths) * (1 if self.null_keys is None else 2)


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
            block.attn2.set_processor(CachedCrossAttnProcessor())
        self._compiled_step = None  # torch.compile(self.step), set by enable_compile

    @property
    def max_condition_length(self) -> int:
        return int(self.y_embedding.shape[0])

    def null_condition(self, length: int) -> torch.Tensor:
        """The unconditional caption for a condition of ``length`` tokens."""
        return self.y_embedding[:length]

    # ------------------------------------------------------------------------------- once per sampling call

    def project_captions(self, captions: torch.Tensor) -> torch.Tensor:
        """Captions [B, L, caption_channels] -> projected, y-normed [B, L, inner_dim] (per token)."""
        transformer = self.transformer
        return transformer.caption_norm(transformer.caption_projection(captions))

    def caption_kv(self, captions: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every block's cross-attention keys and values for captions [B, L, caption_channels]."""
        projected = self.project_captions(captions)
        pairs = [project_kv(block.attn2, projected) for block in self.transformer.transformer_blocks]
        return [key for key, _ in pairs], [value for _, value in pairs]

    def cross_condition(
        self, conditions: Sequence[torch.Tensor], *, with_null: bool, pad_multiple: int = 1
    ) -> CrossCondition:
        """Keys/values for rows ``[null(c) for c in conditions] + conditions`` (``with_null``) or ``conditions``.

        Conditions [N_i, caption_channels] are zero-padded to the longest (rounded up to ``pad_multiple``,
        which suits fused GPU attention kernels) and masked. With ``with_null`` the null keys/values are
        computed once, from ``y_embedding[:L]``, and shared by the unconditional rows (batch 1, not copied).
        """
        if not conditions:
            raise ValueError("no conditions")
        lengths = [int(c.shape[0]) for c in conditions]
        longest = max(lengths)
        padded = -(-longest // pad_multiple) * pad_multiple
        if with_null:
            if longest > self.max_condition_length:
                raise ValueError(
                    f"a condition of {longest} tokens is longer than the null condition "
                    f"({self.max_condition_length})"
                )
            padded = min(padded, self.max_condition_length)
        dtype = self.y_embedding.dtype
        captions = pad_conditions(conditions, dtype=dtype, length=padded)
        keys, values = self.caption_kv(captions)
        null_keys = null_values = None
        if with_null:
            null_keys, null_values = self.caption_kv(self.null_condition(padded)[None])
        bias = None
        if any(length != padded for length in lengths):
            bias = key_bias(lengths, padded, dtype, self.y_embedding.device)
        return CrossCondition(
            keys=keys,
            values=values,
            bias=bias,
            lengths=tuple(lengths),
            null_keys=null_keys,
            null_values=null_values,
        )

    # ------------------------------------------------------------------------------------------ per step

    def forward(
        self,
        latents: torch.Tensor,
        conditions: Sequence[torch.Tensor] | CrossCondition,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """latents [B, C, h, w]; conditions: a ``CrossCondition`` for B rows, or B caption tensors
        [N_i, caption_channels] (projected here, for this call only); timestep [B] -> velocity."""
        if not isinstance(conditions, CrossCondition):
            if len(conditions) != latents.shape[0]:
                raise ValueError(f"{len(conditions)} conditions for a batch of {latents.shape[0]}")
            conditions = self.cross_condition(conditions, with_null=False)
        if conditions.batch_size != latents.shape[0]:
            raise ValueError(
                f"a cross condition for {conditions.batch_size} rows, a batch of {latents.shape[0]}"
            )
        step = self.step if self._compiled_step is None else self._compiled_step
        c = conditions
        return step(latents, timestep, c.keys, c.values, c.bias, c.null_keys, c.null_values)

    def step(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        bias: torch.Tensor | None,
        null_keys: list[torch.Tensor] | None = None,
        null_values: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """SanaTransformer2DModel's forward with the caption stage done beforehand (tensors only: compilable).
        With ``null_keys``/``null_values`` the first half of ``latents`` are the unconditional rows."""
        transformer = self.transformer
        batch, _, height, width = latents.shape
        patch = transformer.config.patch_size
        rows, cols = height // patch, width // patch
        hidden = transformer.patch_embed(latents)
        temb, embedded = transformer.time_embed(timestep, batch_size=batch, hidden_dtype=hidden.dtype)
        blocks = transformer.transformer_blocks
        null_bias = None
        if null_keys is None or null_values is None:
            null_keys = null_values = [None] * len(blocks)
        else:
            null_bias = fold_bias(bias, rows * cols)  # once per step, for every block
        layers = zip(blocks, keys, values, null_keys, null_values, strict=True)
        for block, key, value, null_key, null_value in layers:
            kv = CrossKV(key, value, bias, null_key, null_value, null_bias)
            # The block hands encoder_hidden_states to attn2 untouched: CachedCrossAttnProcessor takes it.
            hidden = block(hidden, None, kv, None, temb, rows, cols)
        hidden = transformer.norm_out(hidden, embedded, transformer.scale_shift_table)
        hidden = transformer.proj_out(hidden)
        hidden = hidden.reshape(batch, rows, cols, patch, patch, -1).permute(0, 5, 1, 3, 2, 4)
        return hidden.reshape(batch, -1, rows * patch, cols * patch)

    def enable_compile(self, **options: Any) -> None:
        """Run ``step`` through ``torch.compile`` (shapes that vary, e.g. condition length, go dynamic)."""
        self._compiled_step = torch.compile(self.step, **options)

    @property
    def compiled(self) -> bool:
        return self._compiled_step is not None


def pad_conditions(conditions: Sequence[torch.Tensor], dtype: torch.dtype, length: int) -> torch.Tensor:
    """Zero-pad every condition to ``length`` tokens (which tokens are real travels as lengths, not a mask)."""
    first = conditions[0]
    captions = first.new_zeros((len(conditions), length, first.shape[-1]), dtype=dtype)
    for row, condition in enumerate(conditions):
        captions[row, : condition.shape[0]] = condition.to(dtype)
    return captions
