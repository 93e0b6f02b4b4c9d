"""The mask outline on `dimflow report --html` cards: rows with a ``mask_uri`` show the mask's edge drawn over
their before/after thumbnails, with ``locked_fraction`` and ``locked_max_abs_diff`` in the card text.

The mask is re-read through Beam's filesystems (local or gs://) under the run's ``limits.max_image_bytes``
and ``limits.max_pixels`` and decoded as the run decoded it (``transforms.images.decode_mask``: upright,
alpha or grey level, binarised at 128, flipped when the run's ``mask.invert`` was set: the convention the
run painted by). At thumbnail size the editable pixels next to a locked one (4-neighbours,
the image border not counting) are the outline: a transparent PNG with those pixels coloured, laid over
both thumbnails, so the page stays self-contained and its size bounded by the thumbnail's. A mask that
cannot be read is said on the card; the page still renders.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.spec import LimitsSpec
from transforms.images import MASK_THRESHOLD, ImageError, decode_mask

OUTLINE_RGBA = (255, 0, 200, 255)  # magenta: visible over photos and over white product backgrounds


@dataclass(frozen=True)
class MaskOutline:
    """The outline overlay (a PNG data URI, None when the mask has no edge) or why the mask was not read."""

    overlay: str | None
    error: str | None = None


def mask_limits(spec: dict[str, Any]) -> tuple[int, int]:
    """(max bytes, max pixels) of the run's spec ``limits``, the spec's defaults where the record has none."""
    limits = LimitsSpec.model_validate(
        {
            name: value
            for name, value in (spec.get("limits") or {}).items()
            if name in ("max_image_bytes", "max_pixels")
        }
    )
    return limits.max_image_bytes, limits.max_pixels


def mask_invert(spec: dict[str, Any]) -> bool:
    """The run's ``mask.invert`` (False when the run record has no mask section: the spec's default)."""
    return bool((spec.get("mask") or {}).get("invert", False))


def read_mask(uri: str, *, max_bytes: int, max_pixels: int, invert: bool) -> np.ndarray:
    """The mask at ``uri`` as an upright boolean array, True = may change, read as the run read it
    (``transforms.images.decode_mask``). ValueError saying why not."""
    try:
        with FileSystems.open(uri) as handle:
            data = handle.read(max_bytes + 1)
    except Exception as exc:  # Beam's filesystems raise several types (missing file, no scheme, GCS errors)
        raise ValueError(f"cannot open: {type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:
        raise ValueError(f"larger than limits.max_image_bytes={max_bytes}")
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        binary = decode_mask(data, max_pixels=max_pixels, invert=invert)
    except ImageError as exc:
        raise ValueError(f"cannot decode: {exc}") from exc
    return np.asarray(binary) >= MASK_THRESHOLD


def outline(editable: np.ndarray, thumb_px: int) -> np.ndarray:
    """Edge pixels of the editable region at thumbnail size (the longer side ``thumb_px``, as the thumbnails):
    the region is resized by area (a thumbnail pixel is editable when at least half its area is), and an
    editable pixel with a locked 4-neighbour is an edge."""
    from PIL import Image

    height, width = editable.shape
    scale = min(1.0, thumb_px / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = Image.fromarray(editable.astype(np.uint8) * 255, mode="L").resize(size, Image.Resampling.BOX)
    small = np.asarray(grey) >= MASK_THRESHOLD
    padded = np.pad(small, 1, mode="edge")  # the image border is no edge of the mask
    locked_next = ~padded[:-2, 1:-1] | ~padded[2:, 1:-1] | ~padded[1:-1, :-2] | ~padded[1:-1, 2:]
    return small & locked_next


def overlay_png(edges: np.ndarray) -> str:
    """A transparent PNG data URI, the edge pixels in ``OUTLINE_RGBA``."""
    from PIL import Image

    rgba = np.zeros((*edges.shape, 4), dtype=np.uint8)
    rgba[edges] = OUTLINE_RGBA
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_outline(uri: str, spec: dict[str, Any], thumb_px: int) -> MaskOutline:
    """The card's overlay for the mask at ``uri`` under the run's spec, or the reason it cannot be shown."""
    try:
        max_bytes, max_pixels = mask_limits(spec)  # a damaged record's limits: said, as an unreadable mask
        editable = read_mask(uri, max_bytes=max_bytes, max_pixels=max_pixels, invert=mask_invert(spec))
    except ValueError as exc:
        return MaskOutline(overlay=None, error=str(exc))
    edges = outline(editable, thumb_px)
    return MaskOutline(overlay=overlay_png(edges) if edges.any() else None)


def mask_text(row: dict[str, Any], found: MaskOutline) -> str:
    """The card's mask line: locked share, largest locked difference, and whether the outline is shown."""
    esc = html.escape
    fraction = row.get("locked_fraction")
    diff = row.get("locked_max_abs_diff")
    locked = f"locked {fraction:.1%}" if fraction is not None else "locked share not recorded"
    exact = f"locked max abs diff {diff}" if diff is not None else "locked max abs diff not recorded"
    if found.error is not None:
        shown = f" · <b>mask unreadable now</b> ({esc(found.error)})"
    elif found.overlay is None:
        shown = " · no mask edge to outline"
    else:
        shown = ""
    return (
        f"<div class='mask' data-locked-max-abs-diff='{esc(str(diff))}'>mask: {esc(locked)} · "
        f"{esc(exact)}{shown}<br><span class='uri'>{esc(row['mask_uri'])}</span></div>"
    )
