"""Region-locked edits: put the painted pixels over the source's, inside the mask only.

The painter regenerates the whole frame; the composite takes back every locked pixel (mask 0) from the
source, so what the mask locks is the source's own pixels whatever the painter did. Pure PIL/numpy (and
scipy's Euclidean distance transform for the feather), no model.

Sizes: with ``output_size: source`` (or a painting already at the source's size) the painted image is
resized (Lanczos) to the source's size and the composite happens there, so locked pixels are the decoded
source's, bit for bit. With ``resolution`` the source (Lanczos) and the mask (NEAREST, so it stays binary)
are resampled to the painted size, and locked pixels are the resampled source's.

Feather: the painted image's weight (alpha) is 0 on every locked pixel and rises linearly with the
distance from the locked region, reaching 1 at ``feather_px + 1`` pixels: the soft band lies on the editable
side only, so the locked region stays exact, and each band pixel lies between the source's and the painted
value, moving monotonically from one to the other across the edge. ``feather_px`` 0: a hard edge.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

OutputSize = Literal["resolution", "source"]


def output_size_of(source_size: tuple[int, int], painted_size: tuple[int, int], output_size: str) -> tuple:
    """The size the row's image is written at: the source's (``source``, or a painting already that size),
    else the painted size."""
    if output_size not in ("resolution", "source"):
        raise ValueError(f"output_size must be 'resolution' or 'source', not {output_size!r}")
    return tuple(source_size) if output_size == "source" else tuple(painted_size)


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` at ``size`` (Lanczos), or ``img`` itself when it already has that size."""
    return img if img.size == tuple(size) else img.resize(size, Image.Resampling.LANCZOS)


def _checked(source: Image.Image, mask: Image.Image) -> None:
    if source.mode != "RGB":
        raise ValueError(f"the source must be RGB, got {source.mode}")
    if mask.mode != "L":
        raise ValueError(f"the mask must be a binary L image, got {mask.mode}")
    if mask.size != source.size:
        raise ValueError(
            f"the mask is {mask.size[0]}x{mask.size[1]}, its source {source.size[0]}x{source.size[1]}"
        )


def locked_region(
    source: Image.Image, mask: Image.Image, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(source pixels at ``size`` as uint8 HxWx3, locked pixels at ``size`` as bool HxW): what a written
    image must equal where it is locked. The mask is resampled NEAREST, so it stays binary."""
    _checked(source, mask)
    size = tuple(size)
    source_at = np.asarray(resize(source, size))
    mask_at = mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)
    return source_at, np.asarray(mask_at) < 128


def feather_alpha(locked: np.ndarray, feather_px: int) -> np.ndarray:
    """The painted image's weight per pixel (float32 HxW in [0, 1]): 0 where locked, rising with the
    Euclidean distance from the locked region to 1 at ``feather_px + 1`` pixels (1 everywhere editable for 0)."""
    if feather_px < 0:
        raise ValueError(f"feather_px must be >= 0, got {feather_px}")
    if not locked.any():
        return np.ones(locked.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~locked)  # 0 on locked pixels, >= 1 on editable ones
    return np.clip(distance / (feather_px + 1), 0.0, 1.0).astype(np.float32)


def composite(
    source: Image.Image,
    painted: Image.Image,
    mask: Image.Image,
    feather_px: int,
    output_size: str,
) -> tuple[Image.Image, float]:
    """(the composited RGB image, the share of its pixels locked to the source's).

    ``source``: RGB at its own (upright) size; ``mask``: binary L at the source's size (255 may change,
    0 locked); ``painted``: the painter's image at any size. See the module docstring for sizes and feather.
    """
    size = output_size_of(source.size, painted.size, output_size)
    source_at, locked = locked_region(source, mask, size)
    painted_at = np.asarray(resize(painted.convert("RGB"), size), dtype=np.float32)
    alpha = feather_alpha(locked, feather_px)[..., None]
    base = source_at.astype(np.float32)
    blended = np.rint(base + (painted_at - base) * alpha)
    out = np.where(locked[..., None], source_at, np.clip(blended, 0, 255).astype(np.uint8))
    return Image.fromarray(out, "RGB"), float(locked.mean())


def locked_max_abs_diff(written: Image.Image, source: Image.Image, mask: Image.Image) -> int:
    """The largest |written - source| over the locked pixels, the source resampled to the written image's
    size (0: the locked region is exact; 0 too when nothing is locked)."""
    source_at, locked = locked_region(source, mask, written.size)
    if not locked.any():
        return 0
    written_at = np.asarray(written.convert("RGB"), dtype=np.int16)
    return int(np.abs(written_at - source_at.astype(np.int16))[locked].max())
