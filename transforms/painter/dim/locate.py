"""Checkpoint names -> local folders: the ``tiny`` preset (built on first use), a folder, or an HF repo id.

It sits above ``checkpoint`` (the released layout) and ``tiny`` (which saves through ``checkpoint``), so
the two never import each other.
"""

from __future__ import annotations

from pathlib import Path

from transforms.painter.base import PaintParams, check_params
from transforms.painter.dim import checkpoint as ckpt
from transforms.painter.dim.checkpoint import TINY, locate_checkpoint
from transforms.painter.dim.tiny import ensure_tiny_checkpoint


def resolve_checkpoint(checkpoint: str, task: str) -> Path:
    """Checkpoint name -> local folder holding ``model.safetensors`` (``tiny`` is built for ``task``)."""
    if checkpoint == TINY:
        return Path(ensure_tiny_checkpoint(task))
    return locate_checkpoint(checkpoint)


def fingerprint(checkpoint: str, task: str, params: PaintParams | None = None) -> str:
    """sha256 of the checkpoint's weights file, without loading a model (``tiny`` is built if needed).

    Also checks that the checkpoint suits ``task`` (edit vs t2i) and, given ``params``, that it can paint
    them (e.g. a resolution on its latent grid), so a job that would fail every row fails on the driver.
    """
    folder = resolve_checkpoint(checkpoint, task)
    arch = ckpt.read_arch(folder, task)
    if params is not None:
        check_params(params, grid=arch.vae_grid)
    return ckpt.file_sha256(folder / ckpt.MODEL_FILE)
