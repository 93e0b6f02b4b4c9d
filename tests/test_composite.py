"""transforms/composite.py: locked pixels exact, the feather band on the editable side and monotone,
sizes (source vs resolution), and the decoded mask's modes, threshold and invert (transforms/images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from transforms import composite
from transforms.images import ImageError, decode_mask

SOURCE = (50, 100, 150)
PAINTED = (250, 10, 200)


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _half_mask(size: tuple[int, int], locked_columns: int) -> Image.Image:
    """Locked (0) on the left ``locked_columns`` columns, editable (255) on the rest."""
    mask = np.full((size[1], size[0]), 255, dtype=np.uint8)
    mask[:, :locked_columns] = 0
    return Image.fromarray(mask, "L")


def test_locked_pixels_are_the_sources_bit_for_bit_at_source_size():
    source, painted = _noise((40, 30), 1), _noise((64, 64), 2)
    mask = _half_mask((40, 30), 15)
    out, locked_fraction = composite.composite(source, painted, mask, 0, "source")
    assert out.size == (40, 30) and out.mode == "RGB"
    got, src = np.asarray(out), np.asarray(source)
    assert np.array_equal(got[:, :15], src[:, :15])
    assert locked_fraction == pytest.approx(15 / 40)
    # the editable side is the painted image resized (Lanczos) to the source's size, untouched by feather 0
    assert np.array_equal(got[:, 15:], np.asarray(painted.resize((40, 30), Image.Resampling.LANCZOS))[:, 15:])
    assert composite.locked_max_abs_diff(out, source, mask) == 0


def test_a_painting_already_at_the_sources_size_is_composited_there_whatever_output_size():
    source, painted = _noise((32, 32), 3), _noise((32, 32), 4)
    mask = _half_mask((32, 32), 10)
    for output_size in ("source", "resolution"):
        out, _ = composite.composite(source, painted, mask, 0, output_size)
        assert np.array_equal(np.asarray(out)[:, :10], np.asarray(source)[:, :10])
        assert np.array_equal(np.asarray(out)[:, 10:], np.asarray(painted)[:, 10:])


def test_resolution_resamples_source_and_mask_to_the_painted_size():
    source, painted = _noise((40, 20), 5), _noise((64, 32), 6)
    mask = _half_mask((40, 20), 20)
    out, locked_fraction = composite.composite(source, painted, mask, 0, "resolution")
    assert out.size == (64, 32)
    resampled = np.asarray(source.resize((64, 32), Image.Resampling.LANCZOS))
    locked = np.asarray(mask.resize((64, 32), Image.Resampling.NEAREST)) == 0
    assert set(np.unique(np.asarray(mask.resize((64, 32), Image.Resampling.NEAREST)))) == {0, 255}
    assert np.array_equal(np.asarray(out)[locked], resampled[locked])
    assert locked_fraction == pytest.approx(locked.mean()) and 0.4 < locked_fraction < 0.6
    assert composite.locked_max_abs_diff(out, source, mask) == 0
    # a written image that differs inside the locked region is measured
    spoiled = np.asarray(out).copy()
    spoiled[0, 0] = (spoiled[0, 0].astype(int) + 7) % 256
    assert composite.locked_max_abs_diff(Image.fromarray(spoiled), source, mask) == 7


@pytest.mark.parametrize("feather_px", [1, 4, 9])
def test_feather_band_is_on_the_editable_side_and_monotone(feather_px):
    size = (48, 8)
    source, painted = Image.new("RGB", size, SOURCE), Image.new("RGB", size, PAINTED)
    mask = _half_mask(size, 20)
    out, _ = composite.composite(source, painted, mask, feather_px, "source")
    row = np.asarray(out)[4].astype(int)
    assert (row[:20] == SOURCE).all()  # locked pixels exact, feather or not
    assert (row[20 + feather_px :] == PAINTED).all()  # past the band: the painted pixels
    band = row[20 : 20 + feather_px]
    assert not (band == PAINTED).all(axis=1).any() and not (band == SOURCE).all(axis=1).any()
    for channel, (low, high) in enumerate(zip(SOURCE, PAINTED, strict=True)):
        line = row[:, channel]
        steps = np.diff(line)
        assert (steps >= 0).all() if high >= low else (steps <= 0).all(), (channel, line)
        assert line.min() >= min(low, high) and line.max() <= max(low, high)


def test_feather_zero_is_a_hard_edge_and_nothing_locked_is_the_painted_image():
    size = (16, 4)
    source, painted = Image.new("RGB", size, SOURCE), Image.new("RGB", size, PAINTED)
    out, _ = composite.composite(source, painted, _half_mask(size, 5), 0, "source")
    assert [tuple(p) for p in np.asarray(out)[0, 4:6]] == [SOURCE, PAINTED]
    everything, locked_fraction = composite.composite(source, painted, _half_mask(size, 0), 3, "source")
    assert locked_fraction == 0 and (np.asarray(everything) == PAINTED).all()
    assert composite.locked_max_abs_diff(everything, source, _half_mask(size, 0)) == 0


def test_composite_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="mask is 10x10, its source 12x10"):
        composite.composite(_noise((12, 10), 1), _noise((8, 8), 2), _half_mask((10, 10), 2), 0, "source")
    with pytest.raises(ValueError, match="output_size"):
        composite.composite(_noise((10, 10), 1), _noise((8, 8), 2), _half_mask((10, 10), 2), 0, "native")
    with pytest.raises(ValueError, match="feather_px"):
        composite.feather_alpha(np.zeros((2, 2), dtype=bool), -1)


# --- decode_mask: modes, threshold, invert, EXIF --------------------------------------------------------


def _encoded(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _values(img: Image.Image) -> list[int]:
    return list(np.asarray(img).ravel())


@pytest.mark.parametrize(
    "img",
    [
        Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8), "L"),
        Image.fromarray(np.array([[[9, 0], [9, 127], [200, 128], [0, 255]]], dtype=np.uint8), "LA"),
        Image.fromarray(
            np.array([[[255, 255, 255, 0], [1, 2, 3, 127], [0, 0, 0, 128], [0, 0, 0, 255]]], dtype=np.uint8),
            "RGBA",
        ),
        # luminance 0.299 R + 0.587 G + 0.114 B: (127,127,127) -> 127, (128,128,128) -> 128
        Image.fromarray(np.array([[[0, 0, 0], [127, 127, 127], [128, 128, 128], [255, 255, 255]]], np.uint8)),
        Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8), "L").convert("P"),
        Image.fromarray(np.array([[0, 0, 255, 255]], dtype=np.uint8), "L").convert("1"),
    ],
    ids=["L", "LA", "RGBA", "RGB", "P", "1"],
)
def test_mask_value_alpha_or_luminance_binarised_at_128(img):
    mask = decode_mask(_encoded(img), max_pixels=100)
    assert mask.mode == "L" and mask.size == (4, 1)
    assert _values(mask) == [0, 0, 255, 255]
    assert _values(decode_mask(_encoded(img), max_pixels=100, invert=True)) == [255, 255, 0, 0]


def test_mask_in_the_displayed_orientation_and_bad_masks_refused():
    stored = Image.fromarray(np.array([[0, 255, 255]], dtype=np.uint8), "L")  # 3x1 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    upright = decode_mask(_encoded(stored, "JPEG", exif=exif.tobytes(), quality=100), max_pixels=100)
    assert upright.size == (1, 3) and _values(upright) == [0, 255, 255]
    with pytest.raises(ImageError, match="mask is not a recognized image format"):
        decode_mask(b"not an image at all", max_pixels=100)
    with pytest.raises(ImageError, match="mask is empty"):
        decode_mask(b"", max_pixels=100)
    with pytest.raises(ImageError, match="over limits.max_pixels=10"):
        decode_mask(_encoded(Image.new("L", (4, 4))), max_pixels=10)
    with pytest.raises(ImageError, match="mask has pixel mode CMYK"):
        decode_mask(_encoded(Image.new("CMYK", (2, 2)), "JPEG"), max_pixels=100)
    with pytest.raises(ImageError, match="mask PNG 4x4 cannot be decoded"):
        decode_mask(_encoded(Image.new("L", (4, 4)))[:-20], max_pixels=100)
