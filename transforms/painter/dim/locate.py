"""Checkpoint names -> local folders: the ``tiny`` preset (built on first use), a folder, or an HF repo id.

It sits above ``checkpoint`` (the released layout) and ``tiny`` (which saves through ``checkpoint``), so
the two never import each other.
"""

from __future__ import annotations

from pathlib import Path

from transforms.painter.dim.checkpoint import TINY, locate_checkpoint
from transforms.painter.dim.tiny import ensure_tiny_checkpoint


def resolve_checkpoint(checkpoint: str, task: str) -> Path:
    """Checkpoint name -> local folder holding ``model.safetensors`` (``tiny`` is built for ``task``)."""
    if checkpoint == TINY:
        return Path(ensure_tiny_checkpoint(task))
    return locate_checkpoint(checkpoint)
