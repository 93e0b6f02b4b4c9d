"""The painter kinds (``painter.kind``): for each, where its loader and fingerprint live, and its defaults.

Plain data, no torch: the spec reads the defaults, the driver calls ``fingerprint`` (the checkpoint's
sha256 for render keys, no model load; it also checks the checkpoint suits the task and the sampling
settings), and ``PainterModelHandler.load_model`` calls ``load_painter`` on each device. Both are imported
when first called, by module path, so a kind's model code (and torch) loads only where it is used.

A kind's loader is called as ``load_painter(checkpoint, task, *, dtype, device, noise_device, compile,
vae_tile_pixels, vae_dtype) -> Painter``; its fingerprint as ``fingerprint(checkpoint, task, params)``.
Sampling defaults apply where the job spec leaves the field unset. The defaults of ``dim`` are those the
spec has always had, so existing specs keep their render keys.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class PainterKind:
    """One painter kind: ``loader``/``fingerprinter`` are ``module:function`` paths, imported when called."""

    name: str
    loader: str
    fingerprinter: str
    # Sampling defaults (painter.steps / guidance_scale / resolution) and default checkpoints.
    steps: int
    guidance_scale: float
    resolution: int
    checkpoint: str | None
    t2i_checkpoint: str | None
    # Settings only this kind's painter reads; other values than their defaults are refused for other kinds.
    only: tuple[str, ...] = ()
    # Whether the kind's edit painter takes a row's mask itself (``mask.mode: native+composite``): it paints
    # masked rows with an inpainting pipeline built from the same loaded weights. Others only composite.
    native_masks: bool = False

    def spec_defaults(self) -> dict[str, Any]:
        """The job spec's ``painter.*`` defaults for this kind."""
        return {
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "resolution": self.resolution,
            "checkpoint": self.checkpoint,
            "t2i_checkpoint": self.t2i_checkpoint,
        }

    def load_painter(self, checkpoint: str, task: str, **settings: Any):
        """The kind's painter for ``checkpoint`` and ``task`` (settings: dtype, device, ... as the handler has
        them). The function is looked up on its module at each call (tests may stand in for it)."""
        return _function(self.loader)(checkpoint, task, **settings)

    def fingerprint(self, checkpoint: str, task: str, params: Any = None) -> str:
        return _function(self.fingerprinter)(checkpoint, task, params)


def _function(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_KINDS: dict[str, PainterKind] = {
    "dim": PainterKind(
        name="dim",
        loader="transforms.painter.dim.pipeline:load_dim_painter",
        fingerprinter="transforms.painter.dim.locate:fingerprint",
        steps=30,
        guidance_scale=7.5,
        resolution=1024,
        checkpoint="stdKonjac/DIM-4.6B-Edit",
        t2i_checkpoint=None,
        only=("compile", "vae_dtype"),
    ),
    # Qwen-Image-Edit-2511's model card: 40 steps, true_cfg_scale 4.0 (negative prompt " "), guidance_scale
    # 1.0 (ignored: not a guidance-distilled model); outputs at about 1024^2 pixels by default in diffusers.
    "qwen-image-edit": PainterKind(
        name="qwen-image-edit",
        loader="transforms.painter.qwen.kind:load_painter",
        fingerprinter="transforms.painter.qwen.kind:fingerprint",
        steps=40,
        guidance_scale=4.0,
        resolution=1024,
        checkpoint="Qwen/Qwen-Image-Edit-2511",
        t2i_checkpoint=None,  # e.g. Qwen/Qwen-Image (not by default: a job would fetch 40 GB it may not use)
        native_masks=True,  # diffusers' QwenImageEditInpaintPipeline over the same components
    ),
    # LongCat-Image-Edit's README and scripts (transforms/painter/longcat/facts.py): edits 50 steps, guidance
    # 4.5 (negative prompt ''), painted at about 1024^2 pixels whatever is asked (resized to the row's size).
    # Text-to-image rows share painter.guidance_scale: the README's 4.0 for LongCat-Image is not a default.
    "longcat-image-edit": PainterKind(
        name="longcat-image-edit",
        loader="transforms.painter.longcat.kind:load_painter",
        fingerprinter="transforms.painter.longcat.kind:fingerprint",
        steps=50,
        guidance_scale=4.5,
        resolution=1024,
        checkpoint="meituan-longcat/LongCat-Image-Edit",
        t2i_checkpoint=None,  # e.g. meituan-longcat/LongCat-Image (not by default: ~29 GB a job may not use)
    ),
}
KINDS: Mapping[str, PainterKind] = MappingProxyType(_KINDS)
KIND_NAMES: tuple[str, ...] = tuple(_KINDS)
NATIVE_MASK_KINDS: tuple[str, ...] = tuple(name for name, kind in _KINDS.items() if kind.native_masks)


def get_kind(name: object) -> PainterKind:
    """The registered kind called ``name``; an error naming the choices otherwise."""
    if not isinstance(name, str) or name not in _KINDS:
        raise ValueError(f"painter kind must be one of {', '.join(KIND_NAMES)}; got {name!r}")
    return _KINDS[name]
