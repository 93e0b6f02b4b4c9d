"""Cross-attention with keys/values computed once per sampling call instead of once per step.

In the SANA DiT the condition enters only through each block's cross-attention (``attn2``): keys and values
are ``norm_k(to_k(y))`` and ``to_v(y)`` of the projected, normed caption ``y``, which does not change over
the denoising steps. So the painter computes them once per sampling call (for every row and for the null
condition) as ``CrossKV`` pairs, and passes block ``i``'s pair where the block expects its encoder hidden
states; ``CachedCrossAttnProcessor`` (installed on every ``attn2``) then only projects the queries.

Nothing is stored on the modules: the K/V live in the caller's ``CrossCondition`` for the duration of one
sampling call and are freed with it, so concurrent calls from several threads cannot see each other's.
Given a plain tensor instead of a ``CrossKV``, the processor is diffusers' stock ``SanaAttnProcessor2_0``
(the standard forward of ``SanaTransformer2DModel`` keeps working, bit for bit).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0


class CrossKV(NamedTuple):
    """One block's cross-attention keys and values, [B, heads, L, head_dim] each (keys after ``norm_k``)."""

    key: torch.Tensor
    value: torch.Tensor


def project_kv(attn: Attention, captions: torch.Tensor) -> CrossKV:
    """Keys and values of ``attn`` for projected, normed captions [B, L, inner_dim] (as the stock processor)."""
    batch, length, _ = captions.shape
    key = attn.to_k(captions)
    value = attn.to_v(captions)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    head_dim = key.shape[-1] // attn.heads
    # Made contiguous once here, so the per-step attention never copies them.
    key = key.view(batch, length, attn.heads, head_dim).transpose(1, 2).contiguous()
    value = value.view(batch, length, attn.heads, head_dim).transpose(1, 2).contiguous()
    return CrossKV(key, value)


def key_bias(lengths: list[int], padded: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive attention bias [B, 1, 1, padded]: 0 on each row's first ``lengths[b]`` keys, -inf after.

    -inf (not diffusers' -10000) makes a padded key's weight exactly 0, so padding changes nothing but cost.
    """
    positions = torch.arange(padded, device=device)
    real = positions[None, :] < torch.tensor(lengths, device=device)[:, None]
    bias = torch.zeros((len(lengths), padded), dtype=dtype, device=device)
    bias.masked_fill_(~real, float("-inf"))
    return bias[:, None, None, :]


class CachedCrossAttnProcessor:
    """``attn2`` processor: precomputed ``CrossKV`` in place of encoder hidden states, else the stock one."""

    def __init__(self) -> None:
        self._stock = SanaAttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | CrossKV | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, CrossKV):
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask)
        key, value = encoder_hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        head_dim = key.shape[-1]
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        # attention_mask: None (no padding) or an additive bias broadcastable to [B, heads, Lq, Lk].
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor
