"""Test inputs for the painter tests."""

from __future__ import annotations

import io


def image_bytes(
    size: tuple[int, int] = (80, 64), color=(10, 200, 30), fmt: str = "PNG", mode: str = "RGB"
) -> bytes:
    """A small image with some structure (a gradient and a block), encoded."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, color if mode == "RGB" else (*color, 128))
    draw = ImageDraw.Draw(image)
    for x in range(size[0]):
        draw.line(
            [(x, 0), (x, size[1] // 3)],
            fill=(x * 3 % 256, 40, 255 - x * 3 % 256) + (() if mode == "RGB" else (255,)),
        )
    draw.rectangle(
        [size[0] // 4, size[1] // 2, size[0] // 2, size[1] - 4],
        fill=(250, 250, 0) + (() if mode == "RGB" else (200,)),
    )
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()
