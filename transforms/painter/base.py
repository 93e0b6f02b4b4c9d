"""The painter seam: (source image or none, prompt, seed, params) -> image plus provenance fields.

Nothing here knows about DIM: another open editor can plug in behind the same types. The pipeline only
builds ``PaintRequest`` values and reads ``Painting`` values; the painter behind them is chosen by
``painter.kind``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import ExifTags, Image, ImageOps

TASKS = ("edit", "t2i")
ASPECTS = ("square", "preserve")
# Where each row's initial noise is drawn: its own CPU generator (same image on any device and in any
# batch), or on the accelerator (to bit-match a reference that draws there).
NOISE_DEVICES = ("cpu", "accelerator")
# Outputs with more pixels than this decode in tiles (bounded memory; tiles blend, so approximately). The
# painters' native outputs (about 1024^2, also in aspect buckets) stay well below it and decode exactly;
# 2048^2-class outputs, 4x the decoder memory per row, are tiled.
DEFAULT_VAE_TILE_PIXELS = 1536 * 1536
# How the VAE runs when the painter's dtype is bfloat16/float16: ``auto`` as DIM does (float32 compute on the
# half weights' values), ``same`` in the painter's dtype (see transforms/painter/dim/vae.py).
VAE_DTYPES = ("auto", "same")
# torch.compile modes for the denoiser (``painter.compile``); False runs it eagerly, True means "default".
COMPILE_MODES = ("default", "max-autotune")
COMPILE_CHOICES = "false, true (= default), default or max-autotune"
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
# ``painter.device``: where the painter replicas load, one per device named (see ``device_choice``).
DEVICE_SYNTAX = (
    "auto (every visible CUDA device, else the CPU), a count N (the first N visible CUDA devices), or a "
    "comma-separated or YAML list of cpu, cuda, cuda:N or mps, all of one kind (one painter replica each; "
    "a device may repeat)"
)
_ONE_DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")


@dataclass(frozen=True)
class PaintParams:
    """Sampling parameters shared by every row of a job (they enter the render key).

    ``aspect``: ``square`` paints every row at ``resolution x resolution`` (DIM's default); ``preserve``
    paints an edit row at about ``resolution**2`` pixels in the source's aspect ratio, bucketed to sizes the
    painter's model supports (so similar aspects share one shape); text-to-image rows stay square.
    """

    steps: int
    guidance_scale: float
    resolution: int
    aspect: Literal["square", "preserve"] = "square"


@dataclass(frozen=True)
class PaintRequest:
    """One row to paint. ``source`` holds encoded image bytes (PNG/JPEG/WEBP); None means text-to-image."""

    key: str
    prompt: str
    seed: int
    source: bytes | None
    # The row's mask (encoded, white = may change), only for painter kinds that take one natively
    # (``mask.mode: native+composite``); every masked row is composited after painting whatever the kind.
    mask: bytes | None = None


@dataclass(frozen=True)
class Painting:
    """A painted row: the image, its share of the batch's wall time, and provenance fields.

    ``fields`` carries: painter, checkpoint_sha256, steps, guidance_scale, width, height, dtype, vae_dtype,
    device, batch_size (names match the provenance columns).
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


def device_choice(setting: object) -> str | int | tuple[str, ...]:
    """``painter.device`` -> ``"auto"``, a count of CUDA devices, or the devices to load one replica on each.

    Only the syntax is checked here (no torch): whether the devices exist is known where the model loads.
    """
    if isinstance(setting, int) and not isinstance(setting, bool):
        text = str(setting)
    elif isinstance(setting, str):
        text = re.sub(r"\s+", "", setting)
    elif isinstance(setting, list | tuple) and setting and all(isinstance(item, str) for item in setting):
        text = re.sub(r"\s+", "", ",".join(setting))  # a YAML list of devices
    else:
        raise ValueError(f"painter device must be {DEVICE_SYNTAX}; got {setting!r}")
    if text == "auto":
        return text
    if re.fullmatch(r"[0-9]+", text):
        if int(text) < 1:
            raise ValueError(f"painter device count must be at least 1, got {setting!r}")
        return int(text)
    devices = tuple(text.split(","))
    bad = [device for device in devices if not _ONE_DEVICE.fullmatch(device)]
    if bad:
        raise ValueError(
            f"painter device must be {DEVICE_SYNTAX}; got {setting!r} ({bad[0]!r} is not a device)"
        )
    kinds = sorted({device.partition(":")[0] for device in devices})
    if len(kinds) > 1:  # dtype auto differs between them: one job's rows would not paint alike
        raise ValueError(
            f"painter device must name devices of one kind, got {setting!r} ({' and '.join(kinds)})"
        )
    return devices


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
    if not isinstance(params.resolution, int) or params.resolution < grid or params.resolution % grid:
        raise ValueError(
            f"resolution {params.resolution} is not a positive multiple of the latent grid ({grid} px per latent cell)"
        )
    if params.aspect not in ASPECTS:
        raise ValueError(f"aspect must be one of {ASPECTS}, got {params.aspect!r}")


def compile_mode(value: object) -> str | None:
    """``painter.compile`` as a torch.compile mode, None for eager (``False``). ``True`` is ``default`` (the
    setting was a boolean before it took modes); anything else is an error naming the choices."""
    if value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"painter compile must be {COMPILE_CHOICES}, got {value!r}")


def valid_vae_tile_pixels(value: object) -> bool:
    """A tiling threshold is a positive int (bools excluded) or None (never tile)."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


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


def source_size(request: PaintRequest) -> tuple[int, int]:
    """Upright (width, height) of the source, from its header: no pixel decoding.

    The size ``decode_source`` gives, as long as the EXIF orientation is where headers keep it (JPEG, WEBP,
    TIFF, PNG's eXIf before the image data): Orientation values 5-8 swap the sides.
    """
    assert request.source is not None
    try:
        image = Image.open(io.BytesIO(request.source))
        width, height = image.size
        # The base implementation reads what the header gave; PNG's override would decode the whole image
        # to look for an eXIf chunk after the pixels.
        orientation = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # PIL raises several types for broken files
        raise ValueError(
            f"row {request.key!r}: cannot decode the source image: {type(exc).__name__}: {exc}"
        ) from exc
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
