"""The painter seam: (source image or none, prompt, seed, params) -> image plus provenance fields.

Nothing here knows about DIM: another open editor can plug in behind the same types. The pipeline only
builds ``PaintRequest`` values and reads ``Painting`` values; the painter behind them is chosen by
``painter.kind``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image, ImageOps

TASKS = ("edit", "t2i")


@dataclass(frozen=True)
class PaintParams:
    """Sampling parameters shared by every row of a job (they enter the render key)."""

    steps: int
    guidance_scale: float
    resolution: int  # output is resolution x resolution


@dataclass(frozen=True)
class PaintRequest:
    """One row to paint. ``source`` holds encoded image bytes (PNG/JPEG/WEBP); None means text-to-image."""

    key: str
    prompt: str
    seed: int
    source: bytes | None


@dataclass(frozen=True)
class Painting:
    """A painted row: the image, its share of the batch's wall time, and provenance fields.

    ``fields`` carries: painter, checkpoint_sha256, steps, guidance_scale, width, height, dtype, device,
    batch_size (names match the provenance columns).
    """

    key: str
    image: Image.Image
    paint_s: float
    fields: dict[str, Any] = field(default_factory=dict)


class Painter(Protocol):
    """What a loaded painter model offers the ModelHandler."""

    name: str
    task: str
    checkpoint_sha256: str

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]: ...


def check_request(request: PaintRequest, task: str) -> None:
    """Loud, row-named errors for requests no painter can serve."""
    if task not in TASKS:
        raise ValueError(f"painter task must be one of {TASKS}, got {task!r}")
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ValueError(f"row {request.key!r}: empty prompt")
    if task == "edit" and request.source is None:
        raise ValueError(f"row {request.key!r}: task is 'edit' but the request has no source image")
    if task == "t2i" and request.source is not None:
        raise ValueError(f"row {request.key!r}: task is 't2i' but the request carries a source image")
    if not isinstance(request.seed, int) or isinstance(request.seed, bool) or not 0 <= request.seed < 2**64:
        raise ValueError(f"row {request.key!r}: seed must be an integer in [0, 2**64), got {request.seed!r}")


def check_params(params: PaintParams, *, grid: int) -> None:
    """``grid`` is the pixel size of one latent cell (the VAE's spatial compression)."""
    if not isinstance(params.steps, int) or params.steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {params.steps!r}")
    if params.guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {params.guidance_scale!r}")
    if params.resolution < grid or params.resolution % grid:
        raise ValueError(
            f"resolution {params.resolution} is not a positive multiple of the latent grid ({grid} px per latent cell)"
        )


def decode_source(request: PaintRequest) -> Image.Image:
    """Encoded bytes -> upright PIL image (EXIF orientation applied), mode kept for the painter to convert."""
    assert request.source is not None
    try:
        image = Image.open(io.BytesIO(request.source))
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(
            f"row {request.key!r}: cannot decode the source image: {type(exc).__name__}: {exc}"
        ) from exc
