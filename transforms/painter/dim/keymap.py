"""Key mapping between the released DIM checkpoint and our modules, both ways.

Released ``model.safetensors`` (showlab/DIM saves its ``DIM`` nn.Module state dict):

  mllm.*            Qwen2.5-VL-3B in transformers 4.51 naming (``visual.*``, ``model.*``, ``lm_head.*``)
  projector.0/2.*   the MLP connector
  decoder.vae.*     diffusers AutoencoderDC naming: the reference's SANA config says ``vae_type: AutoencoderDC``
                    (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers), so the state dict is diffusers' own
  decoder.model.*   NVlabs Sana naming (SanaMS / SanaMSChannelCond)

Ours: ``encoder.*`` (transformers 5 Qwen2_5_VLForConditionalGeneration), ``projector.*``, ``vae.*``
(AutoencoderDC), ``dit.transformer.*`` (diffusers SanaTransformer2DModel) and ``dit.y_embedding``.

Rules are templates: ``{i}`` is a block index; a template ending in ``.`` renames a prefix (whatever
follows is kept), any other template is a whole key. SPLITS are fused tensors cut along dim 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

_B = "decoder.model.blocks.{i}."
_T = "dit.transformer.transformer_blocks.{i}."

# (released, ours)
RENAMES: tuple[tuple[str, str], ...] = (
    # encoder: transformers 4.x layout -> 5.x layout
    ("mllm.visual.", "encoder.model.visual."),
    ("mllm.model.", "encoder.model.language_model."),
    ("mllm.lm_head.", "encoder.lm_head."),
    # connector and VAE: same module names on both sides
    ("projector.", "projector."),
    ("decoder.vae.", "vae."),
    # DiT: NVlabs Sana -> diffusers
    ("decoder.model.x_embedder.proj.", "dit.transformer.patch_embed.proj."),
    ("decoder.model.t_embedder.mlp.0.", "dit.transformer.time_embed.emb.timestep_embedder.linear_1."),
    ("decoder.model.t_embedder.mlp.2.", "dit.transformer.time_embed.emb.timestep_embedder.linear_2."),
    ("decoder.model.t_block.1.", "dit.transformer.time_embed.linear."),
    ("decoder.model.y_embedder.y_proj.fc1.", "dit.transformer.caption_projection.linear_1."),
    ("decoder.model.y_embedder.y_proj.fc2.", "dit.transformer.caption_projection.linear_2."),
    ("decoder.model.y_embedder.y_embedding", "dit.y_embedding"),
    ("decoder.model.attention_y_norm.", "dit.transformer.caption_norm."),
    (_B + "scale_shift_table", _T + "scale_shift_table"),
    (_B + "attn.q_norm.", _T + "attn1.norm_q."),
    (_B + "attn.k_norm.", _T + "attn1.norm_k."),
    (_B + "attn.proj.", _T + "attn1.to_out.0."),
    (_B + "cross_attn.q_linear.", _T + "attn2.to_q."),
    (_B + "cross_attn.q_norm.", _T + "attn2.norm_q."),
    (_B + "cross_attn.k_norm.", _T + "attn2.norm_k."),
    (_B + "cross_attn.proj.", _T + "attn2.to_out.0."),
    (_B + "mlp.inverted_conv.conv.", _T + "ff.conv_inverted."),
    (_B + "mlp.depth_conv.conv.", _T + "ff.conv_depth."),
    (_B + "mlp.point_conv.conv.", _T + "ff.conv_point."),
    ("decoder.model.final_layer.linear.", "dit.transformer.proj_out."),
    ("decoder.model.final_layer.scale_shift_table", "dit.transformer.scale_shift_table"),
)

# (released fused key, ours keys in the order they are stacked along dim 0)
SPLITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (_B + "attn.qkv.weight", (_T + "attn1.to_q.weight", _T + "attn1.to_k.weight", _T + "attn1.to_v.weight")),
    (_B + "cross_attn.kv_linear.weight", (_T + "attn2.to_k.weight", _T + "attn2.to_v.weight")),
    (_B + "cross_attn.kv_linear.bias", (_T + "attn2.to_k.bias", _T + "attn2.to_v.bias")),
)

# Released keys we drop: the reference drops a bundled text encoder, and ``pos_embed`` is a zero buffer
# (``use_pe: false``) that diffusers does not have.
IGNORED_PREFIXES: tuple[str, ...] = ("decoder.text_encoder.",)
IGNORED_KEYS: tuple[str, ...] = ("decoder.model.pos_embed",)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    target: str  # template with {i}
    prefix: bool


def _compile(template: str, target: str) -> _Pattern:
    prefix = template.endswith(".")
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
    regex = re.compile("^" + body + ("(?P<rest>.+)$" if prefix else "$"))
    return _Pattern(regex, target, prefix)


def _apply(pattern: _Pattern, key: str) -> str | None:
    match = pattern.regex.match(key)
    if match is None:
        return None
    groups = match.groupdict()
    out = pattern.target.replace("{i}", groups.get("i") or "")
    return out + (groups["rest"] if pattern.prefix else "")


_FORWARD = [_compile(src, dst) for src, dst in RENAMES]
_BACKWARD = [_compile(dst, src) for src, dst in RENAMES]
_SPLIT_FORWARD = [(_compile(src, ""), dsts) for src, dsts in SPLITS]


class KeyMapError(ValueError):
    """Raised with the full list of keys that no rule explains."""


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def released_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map released keys (and split fused tensors); unknown keys fail loudly, all listed."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if is_ignored(key):
            continue
        targets = _split_targets(key)
        if targets is not None:
            if tensor.shape[0] % len(targets):
                raise KeyMapError(
                    f"{key}: dim 0 of shape {tuple(tensor.shape)} does not split into {len(targets)}"
                )
            for name, part in zip(targets, torch.chunk(tensor, len(targets), dim=0), strict=True):
                out[name] = part
            continue
        name = _first(_FORWARD, key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = tensor
    if unknown:
        raise KeyMapError(f"{len(unknown)} checkpoint keys match no mapping rule: {_listing(unknown)}")
    return out


def ours_to_released(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse (used to save the tiny preset in the released layout): fused tensors are re-stacked."""
    pending = dict(state)
    out: dict[str, torch.Tensor] = {}
    for src, dsts in SPLITS:
        first = _compile(dsts[0], src)
        for key in [k for k in pending if first.regex.match(k)]:
            index = first.regex.match(key).group("i")  # type: ignore[union-attr]
            parts = [d.replace("{i}", index) for d in dsts]
            absent = [p for p in parts if p not in pending]
            if absent:
                raise KeyMapError(f"cannot fuse {src.replace('{i}', index)}: missing {absent}")
            out[src.replace("{i}", index)] = torch.cat([pending.pop(p) for p in parts], dim=0)
    unknown: list[str] = []
    for key, tensor in pending.items():
        name = _first(_BACKWARD, key)
        if name is None:
            unknown.append(key)
        else:
            out[name] = tensor
    if unknown:
        raise KeyMapError(f"{len(unknown)} module keys have no released name: {_listing(unknown)}")
    return out


def released_name(key: str) -> str:
    """The released name of one of our keys (the fused name for a split part); ``key`` if it has none."""
    for src, dsts in SPLITS:
        for dst in dsts:
            name = _apply(_compile(dst, src), key)
            if name is not None:
                return name
    return _first(_BACKWARD, key) or key


def _split_targets(key: str) -> tuple[str, ...] | None:
    for pattern, dsts in _SPLIT_FORWARD:
        match = pattern.regex.match(key)
        if match is not None:
            index = match.group("i")
            return tuple(d.replace("{i}", index) for d in dsts)
    return None


def _first(patterns: list[_Pattern], key: str) -> str | None:
    for pattern in patterns:
        name = _apply(pattern, key)
        if name is not None:
            return name
    return None


def _listing(keys: list[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
