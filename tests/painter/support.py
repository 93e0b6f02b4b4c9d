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


def max_abs_diff(a, b) -> int:
    """Largest difference of any channel of any pixel between two images (as RGB, 0-255)."""
    import numpy as np

    def pixels(image):
        return np.asarray(image.convert("RGB"), dtype=np.int16)

    return int(np.abs(pixels(a) - pixels(b)).max())


def t2i_parity(kind: str, rows, params, direct) -> dict[str, list[int]]:
    """Max abs pixel differences of painter ``kind``'s tiny text-to-image painter against ``direct(prompts,
    seeds)`` (a direct pipeline call, the reference, at 64x64): row by row (the CPU default) against one
    call per row (``alone``), batched as on an accelerator against one batched call (``batched``), and the
    pipeline's own batched call against its calls per row (``batch_vs_alone``)."""
    import torch

    from transforms.painter.kinds import get_kind

    painters = [get_kind(kind).load_painter("tiny", "t2i", dtype=torch.float32, device=torch.device("cpu"))]
    painters.append(
        get_kind(kind).load_painter("tiny", "t2i", dtype=torch.float32, device=torch.device("cpu"))
    )
    painters[1].row_by_row = False  # as on an accelerator: the rows go through one call
    n = len(rows)
    assert painters[0].calls([(64, 64)] * n) == [[i] for i in range(n)]
    assert painters[1].calls([(64, 64)] * n) == [list(range(n))]
    one_by_one = [direct([row.prompt], [row.seed])[0] for row in rows]
    together = direct([row.prompt for row in rows], [row.seed for row in rows])
    assert max_abs_diff(one_by_one[0], one_by_one[1]) > 0  # rows differ: the comparisons can fail

    def diffs(images, expected):
        return [max_abs_diff(a, b) for a, b in zip(images, expected, strict=True)]

    return {
        "alone": diffs([p.image for p in painters[0].paint(rows, params)], one_by_one),
        "batched": diffs([p.image for p in painters[1].paint(rows, params)], together),
        "batch_vs_alone": diffs(together, one_by_one),
    }
