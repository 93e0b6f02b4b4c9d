"""Draw the demo's sample catalog photos (simple product shapes on plain backgrounds) with Pillow.

The committed images under jobs/demo/images/ were made by this script (``python jobs/demo/make_samples.py``);
they are our own drawings, so there is no third-party license to track. One JPEG carries an EXIF
orientation tag so the demo shows it being applied; ``sneaker-mask.png`` is the mask of the demo's
region-locked row (white = may change, black = the shoe, which must stay).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent / "images"
SIZE = (320, 240)


def _canvas(background: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", SIZE, background)
    return image, ImageDraw.Draw(image)


def _draw_sneaker(draw: ImageDraw.ImageDraw, *, upper, sole, laces) -> None:
    """The shoe itself (upper, sole, laces): drawn in colour for the photo, in black for its mask."""
    draw.polygon([(60, 190), (70, 120), (130, 110), (190, 150), (280, 165), (285, 195)], fill=upper)
    draw.rectangle((58, 188, 287, 202), fill=sole)
    for x in range(110, 170, 14):
        draw.line((x, 125, x + 18, 150), fill=laces, width=3)


def sneaker() -> Image.Image:
    image, draw = _canvas((214, 222, 230))
    draw.ellipse((40, 190, 290, 215), fill=(170, 176, 184))  # shadow
    _draw_sneaker(draw, upper=(200, 40, 50), sole=(245, 245, 245), laces=(250, 250, 250))
    return image


def sneaker_mask() -> Image.Image:
    """The region lock of sneaker.png (manifest row sneaker-locked): white = may change (the background and
    the shadow), black = must stay (the shoe, drawn with the photo's own shapes, so it covers every shoe
    pixel: Pillow draws these shapes without antialiasing)."""
    mask = Image.new("L", SIZE, 255)
    _draw_sneaker(ImageDraw.Draw(mask), upper=0, sole=0, laces=0)
    return mask


def mug() -> Image.Image:
    image, draw = _canvas((240, 226, 200))
    draw.rectangle((110, 70, 200, 190), fill=(40, 90, 160))
    draw.ellipse((110, 60, 200, 80), fill=(30, 70, 130))
    draw.arc((180, 95, 240, 160), start=-90, end=90, fill=(40, 90, 160), width=12)
    return image


def lamp() -> Image.Image:
    image, draw = _canvas((60, 64, 72))
    draw.polygon([(120, 60), (200, 60), (230, 130), (90, 130)], fill=(250, 210, 120))
    draw.rectangle((155, 130, 165, 200), fill=(180, 180, 180))
    draw.ellipse((120, 195, 200, 215), fill=(150, 150, 150))
    return image


def backpack_rotated() -> Image.Image:
    """Drawn upright, stored rotated, with EXIF orientation 6 (display rotates 90 degrees clockwise)."""
    image, draw = _canvas((225, 235, 220))
    draw.rounded_rectangle((110, 50, 210, 210), radius=30, fill=(60, 120, 70))
    draw.rounded_rectangle((125, 130, 195, 195), radius=12, fill=(50, 100, 60))
    draw.arc((135, 25, 185, 75), start=180, end=360, fill=(40, 80, 50), width=8)
    return image.transpose(Image.Transpose.ROTATE_90)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    sneaker().save(HERE / "sneaker.png", optimize=True)
    sneaker_mask().save(HERE / "sneaker-mask.png", optimize=True)
    mug().save(HERE / "mug.png", optimize=True)
    lamp().save(HERE / "lamp.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    backpack_rotated().save(HERE / "backpack.jpg", quality=90, exif=exif.tobytes())
    (HERE / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a png" * 4)
    print(f"wrote samples to {HERE}")


if __name__ == "__main__":
    main()
