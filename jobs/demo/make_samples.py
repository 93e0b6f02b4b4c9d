"""Draw the demo's sample catalog photos (simple product shapes on plain backgrounds) with Pillow.

The committed images under jobs/demo/images/ were made by this script (``python jobs/demo/make_samples.py``);
they are our own drawings, so there is no third-party license to track. One JPEG carries an EXIF
orientation tag so the demo shows it being applied.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent / "images"
SIZE = (320, 240)


def _canvas(background: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", SIZE, background)
    return image, ImageDraw.Draw(image)


def sneaker() -> Image.Image:
    image, draw = _canvas((214, 222, 230))
    draw.ellipse((40, 190, 290, 215), fill=(170, 176, 184))  # shadow
    draw.polygon([(60, 190), (70, 120), (130, 110), (190, 150), (280, 165), (285, 195)], fill=(200, 40, 50))
    draw.rectangle((58, 188, 287, 202), fill=(245, 245, 245))  # sole
    for x in range(110, 170, 14):
        draw.line((x, 125, x + 18, 150), fill=(250, 250, 250), width=3)  # laces
    return image


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
    mug().save(HERE / "mug.png", optimize=True)
    lamp().save(HERE / "lamp.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    backpack_rotated().save(HERE / "backpack.jpg", quality=90, exif=exif.tobytes())
    (HERE / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a png" * 4)
    print(f"wrote samples to {HERE}")


if __name__ == "__main__":
    main()
