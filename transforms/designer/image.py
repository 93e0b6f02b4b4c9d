"""The source image as the designer sees it: upright, RGB, downscaled, and (for APIs) a bounded JPEG.

A vision API bills and rate-limits by image size, and rejects large payloads; the designer needs the
layout and objects, not every pixel. So the image is scaled to fit ``max_side`` and its JPEG is kept under
``max_bytes`` (lower quality first, then smaller). These bounds change the designer's input, so they are
part of the provider's config (and therefore of ``design_key``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageOps

DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BYTES = 400_000
_QUALITIES = (90, 80, 70, 60)


class ImageError(ValueError):
    """The source bytes cannot be shown to the designer; the message is the row's failure reason."""


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes
    width: int
    height: int


def load_image(
    data: bytes, max_side: int = DEFAULT_MAX_SIDE, label: str = "source image", user: str = "designer"
) -> Image.Image:
    """Decode, apply EXIF orientation, flatten alpha onto white, and fit within ``max_side``.

    ``label`` and ``user`` name the image and who looks at it in errors (the judge sees edited images)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except Exception as exc:  # PIL raises many types for bad input; all mean the same to the row
        raise ImageError(f"cannot decode {label} for the {user}: {type(exc).__name__}: {exc}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    else:
        image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def prepare_jpeg(
    data: bytes,
    max_side: int = DEFAULT_MAX_SIDE,
    max_bytes: int = DEFAULT_MAX_BYTES,
    label: str = "source image",
    user: str = "designer",
) -> PreparedImage:
    """A JPEG of the image that fits ``max_side`` pixels and ``max_bytes`` bytes (names as ``load_image``)."""
    image = load_image(data, max_side, label, user)
    while True:
        for quality in _QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality, optimize=True)
            if buffer.tell() <= max_bytes:
                return PreparedImage(buffer.getvalue(), image.width, image.height)
        if max(image.size) <= 64:
            raise ImageError(f"cannot fit the {label} into {max_bytes} bytes of JPEG")
        image = image.resize(
            (max(1, int(image.width * 0.75)), max(1, int(image.height * 0.75))), Image.Resampling.LANCZOS
        )


def image_tokens(width: int, height: int) -> int:
    """A generous estimate of an image's prompt tokens, for the tokens/minute budget before the call.

    The larger of OpenAI's high-detail tiling (fit 2048², shortest side 768, 170 per 512² tile + 85) and
    Qwen2.5-VL's one token per 28×28 patch; the reply's ``usage`` corrects the budget afterwards.
    """
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiled = 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)
    patched = math.ceil(width / 28) * math.ceil(height / 28)
    return max(tiled, patched)
