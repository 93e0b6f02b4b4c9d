"""Cross-attention with keys/values computed once per sampling call instead of once per step.

In the SANA DiT the condition enters only through each block's cross-attention (``attn2``): keys and values
are ``norm_k(to_k(y))`` and ``to_v(y)`` of the projected, normed caption ``y``, which does not change over
the denoising steps. So the painter computes them once per sampling call (for every row and for the null
condition) as ``CrossKV`` tuples, and passes block ``i``'s tuple where the block expects its encoder hidden
states; ``CachedCrossAttnProcessor`` (installed on every ``attn2``) then only projects the queries.

The null condition (classifier-free guidance's unconditional branch) is the same for every row, so its
keys/values are one [1, heads, L, head_dim] tensor per block, never repeated per row: the unconditional
rows' queries are folded into one sequence ([n, Lq, C] -> [1, n * Lq, C], a free view) that attends to that
single tensor, with each row's padding mask folded the same way. At full size (20 blocks, ~1,400-token
conditions, bf16) one row's keys + values take 20 x 2 x 1,400 x 2,240 x 2 bytes ~ 251 MB for the whole
sampling call; [2B] rows took ~4.0 GB at batch 8, B + 1 rows take ~2.26 GB (1.76 GB less).

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
    """One block's cross-attention inputs for a batch ``[null rows (n), conditional rows (B)]``.

    ``key``/``value``: the B conditional rows, [B, heads, L, head_dim] each (keys after ``norm_k``);
    ``bias``: their additive mask [B, 1, 1, L], or None when no row is padded. ``null_key``/``null_value``:
    the null condition's, [1, heads, L, head_dim], shared by the first ``n = batch - B`` query rows (None:
    no null rows); ``null_bias``: the null rows' mask folded to [1, 1, n * Lq, L] (``fold_bias``), or None.
    """

    key: torch.Tensor
    value: torch.Tensor
    bias: torch.Tensor | None = None
    null_key: torch.Tensor | None = None
    null_value: torch.Tensor | None = None
    null_bias: torch.Tensor | None = None


def project_kv(attn: Attention, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    return key, value


def key_bias(lengths: list[int], padded: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive attention bias [B, 1, 1, padded]: 0 on each row's first ``lengths[b]`` keys, -inf after.

    -inf (not diffusers' -10000) makes a padded key's weight exactly 0, so padding changes nothing but cost.
    """
    positions = torch.arange(padded, device=device)
    real = positions[None, :] < torch.tensor(lengths, device=device)[:, None]
    bias = torch.zeros((len(lengths), padded), dtype=dtype, device=device)
    bias.masked_fill_(~real, float("-inf"))
    return bias[:, None, None, :]


def fold_bias(bias: torch.Tensor | None, query_tokens: int) -> torch.Tensor | None:
    """Per-row bias [n, 1, 1, L] -> [1, 1, n * query_tokens, L] for the n rows folded into one sequence
    (each row's queries keep its own mask). Tensor ops only, so a compiled step can build it."""
    if bias is None:
        return None
    rows, length = bias.shape[0], bias.shape[-1]
    return bias.reshape(rows, 1, length).expand(rows, query_tokens, length).reshape(1, 1, -1, length)


def _attend(
    attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Projected queries [B, Lq, inner] against keys/values [B or 1, heads, L, head_dim] -> [B, Lq, inner]."""
    batch = query.shape[0]
    head_dim = key.shape[-1]
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    # bias: None (no padding) or an additive bias broadcastable to [B, heads, Lq, L].
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


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
        if attention_mask is not None:
            raise ValueError("with precomputed keys/values the masks travel in the CrossKV")
        kv = encoder_hidden_states
        query = attn.to_q(hidden_states)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if kv.null_key is None:
            out = _attend(attn, query, kv.key, kv.value, kv.bias)
        else:
            null_rows = query.shape[0] - kv.key.shape[0]
            tokens, channels = query.shape[1], query.shape[2]
            # The null rows' queries as one sequence (a view): one attention against the shared null K/V.
            folded = query[:null_rows].reshape(1, null_rows * tokens, channels)
            uncond = _attend(attn, folded, kv.null_key, kv.null_value, kv.null_bias)
            cond = _attend(attn, query[null_rows:], kv.key, kv.value, kv.bias)
            out = torch.cat([uncond.reshape(null_rows, tokens, -1), cond])
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor
