"""Images: bounded reads, safe decode (bombs, truncation, junk), EXIF, RGB, deterministic encode, atomic write."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import zlib
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from transforms import images
from transforms.images import ImageError, decode_image, encode_image, write_output
from transforms.records import STAGE_FETCH, EditRecord, Failure, ManifestRow, RowRef
from transforms.sources import SourceError, read_bounded

KEY = "0123456789abcdef" * 4


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that DECLARES a width x height RGB canvas (a bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


# --- read_bounded ----------------------------------------------------------------------------------


def test_read_bounded_limits(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"a" * 100)
    assert read_bounded(str(path), 100) == b"a" * 100
    with pytest.raises(SourceError, match=r"source is 100\+ bytes, over limits.max_image_bytes=99"):
        read_bounded(str(path), 99)
    with pytest.raises(SourceError, match=r"source is 11\+ bytes, over limits.max_image_bytes=10"):
        read_bounded(str(path), 10)


def test_read_bounded_missing_and_gz_left_alone(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(SourceError, match=f"source not found: {missing}"):
        read_bounded(missing, 10)
    gz = tmp_path / "x.png.gz"
    gz.write_bytes(b"\x1f\x8bnot-really")
    assert read_bounded(str(gz), 100) == b"\x1f\x8bnot-really"  # bytes as stored, no codec


# --- decode_image ----------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 48), (30, 160, 60))
    image.paste((255, 255, 255), (0, 0, 20, 12))  # white block top-left as stored
    decoded = decode_image(jpeg_bytes(image, orientation=6), max_pixels=10_000)
    assert decoded.size == (48, 40) and decoded.mode == "RGB"
    # orientation 6 = rotate 90 degrees clockwise for display: top-left lands top-right
    assert min(decoded.getpixel((44, 3))) > 200 and min(decoded.getpixel((3, 3))) < 200


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # transparent => white
        (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),
        (Image.new("L", (4, 4), 77), (77, 77, 77)),
        (Image.new("I;16", (4, 4), 257 * 100), (100, 100, 100)),  # 16-bit gray scaled, not clipped
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la", "l", "i16", "bilevel"],
)
def test_converted_to_rgb(image, expected):
    decoded = decode_image(png_bytes(image), max_pixels=100)
    assert decoded.mode == "RGB" and decoded.getpixel((1, 1)) == expected


def test_palette_with_transparency_and_cmyk_jpeg():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    decoded = decode_image(png_bytes(palette, transparency=0), max_pixels=100)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    buffer = io.BytesIO()
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue(), max_pixels=100).mode == "RGB"


def test_declared_pixels_over_limit_rejected_before_decoding():
    start = time.perf_counter()
    with pytest.raises(
        ImageError, match=r"declares 5000x5000 = 25000000 pixels, over limits.max_pixels=1000000"
    ):
        decode_image(declared_png(5000, 5000), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="decompression bomb"):  # beyond PIL's own hard limit
        decode_image(declared_png(100_000, 100_000), max_pixels=10**12)
    assert time.perf_counter() - start < 1.0  # nothing was decoded


def test_pixel_limit_is_inclusive():
    data = png_bytes(Image.new("RGB", (10, 10)))
    assert decode_image(data, max_pixels=100).size == (10, 10)
    with pytest.raises(ImageError, match="over limits.max_pixels=99"):
        decode_image(data, max_pixels=99)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_files_fail(kind):
    noisy = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    data = png_bytes(noisy) if kind == "png" else jpeg_bytes(noisy)
    with pytest.raises(ImageError, match="cannot be decoded|unreadable"):
        decode_image(data[: len(data) // 2], max_pixels=10_000)


def test_corrupt_png_body_fails():
    data = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8
    with pytest.raises(ImageError):
        decode_image(data, max_pixels=10_000)


def test_declared_but_missing_pixels_fail():
    with pytest.raises(ImageError, match="cannot be decoded"):
        decode_image(declared_png(50, 50), max_pixels=10_000)


def test_non_image_and_empty_bytes():
    with pytest.raises(
        ImageError, match=r"not a recognized image format \(no PNG/JPEG/GIF/BMP/TIFF/WebP signature\)$"
    ):
        decode_image(b"hello world, not an image", max_pixels=100)
    with pytest.raises(ImageError, match=r"source is empty \(0 bytes\)"):
        decode_image(b"", max_pixels=100)
    assert issubclass(ImageError, ValueError)


def _png_with_bad_chunk(chunk_type: bytes) -> bytes:
    """A valid PNG plus an ancillary chunk ``chunk_type`` whose CRC is wrong (PIL quotes its type)."""
    good = png_bytes(Image.new("RGB", (2, 2)))
    at = good.rindex(b"IEND") - 4
    return good[:at] + struct.pack(">I", 3) + chunk_type + b"abc" + b"\0\0\0\0" + good[at:]


@pytest.mark.parametrize(
    ("data", "secret"),
    [
        (b"hello SECRETVALUE world", b"SECRETVALUE"),  # no signature at all
        (b"P6 SECRETVALUE1234567890 1 1\n", b"SECRETVALUE"),  # PPM: "Token too long in file header: ..."
        (b"P1\nSECRETX 1\n", b"SECRETX"),  # PPM: "invalid literal for int() with base 10: b'SECRETX'"
        (b'/* XPM */\nstatic char *x[] = {\n"1 1 1 1",\n"a c #SECRETVALUE",\n', b"SECRETVALUE"),
        (_png_with_bad_chunk(b"cRET"), b"cRET"),  # "broken PNG file (bad header checksum in b'cRET')"
    ],
    ids=["text", "ppm-token", "ppm-int", "xpm-color", "png-chunk-type"],
)
def test_image_errors_never_echo_source_bytes(data, secret):
    """Each payload makes PIL quote the source's bytes in its own error; none of them reach ours."""
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=10_000)
    message = str(info.value)
    pieces = {secret[i : i + 4].decode() for i in range(len(secret) - 3)}
    assert not [piece for piece in pieces if piece in message], message
    assert "starts with" not in message


# --- encode + write --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encode_is_deterministic_and_metadata_free(fmt):
    pixels = Image.frombytes("RGB", (32, 24), bytes(range(256)) * 9)
    tagged = pixels.copy()
    tagged.info.update({"exif": b"Exif\x00\x00junk", "icc_profile": b"not-a-profile", "dpi": (300, 300)})
    first, second, third = encode_image(pixels, fmt), encode_image(pixels, fmt), encode_image(tagged, fmt)
    assert first == second == third
    back = Image.open(io.BytesIO(first))
    assert back.size == (32, 24) and "exif" not in back.info and "icc_profile" not in back.info
    if fmt == "png":
        assert back.convert("RGB").tobytes() == pixels.tobytes()  # lossless


def test_encode_rejects_unknown_format_and_flattens_alpha_for_jpeg():
    with pytest.raises(ValueError, match="png, jpg, webp"):
        encode_image(Image.new("RGB", (2, 2)), "gif")
    data = encode_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "jpg")
    assert min(Image.open(io.BytesIO(data)).getpixel((4, 4))) > 250


def test_write_output_is_atomic_and_idempotent(tmp_path):
    out = str(tmp_path / "out")
    uri = write_output(out, "row-1", KEY, "png", b"first")
    assert uri == str(tmp_path / "out/images/row-1/0123456789abcdef.png")
    assert Path(uri).read_bytes() == b"first"
    assert write_output(out, "row-1", KEY, "png", b"second") == uri
    assert Path(uri).read_bytes() == b"second"
    assert os.listdir(tmp_path / "out/images/row-1") == ["0123456789abcdef.png"]  # no temp files left


def test_write_output_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_rename(source, destination, **dir_fds):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk went away"):
        write_output(str(tmp_path), "row-1", KEY, "webp", b"data")
    assert os.listdir(tmp_path / "images/row-1") == []


@pytest.mark.parametrize(("row_id", "key"), [("..", KEY), ("a/b", KEY), ("ok", "short"), ("ok", "Z" * 16)])
def test_write_output_refuses_unsafe_names(tmp_path, row_id, key):
    with pytest.raises(ValueError):
        write_output(str(tmp_path), row_id, key, "png", b"x")


# --- the Beam stage --------------------------------------------------------------------------------


def _record(row_id: str, source: str | None) -> EditRecord:
    return EditRecord(ManifestRow(row_id, "x", source, None, None, RowRef("/m.jsonl", 1)))


def test_fetch_images_stage(tmp_path):
    good = png_bytes(Image.new("RGB", (6, 5), (1, 2, 3)))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "big.png").write_bytes(png_bytes(Image.frombytes("RGB", (40, 40), os.urandom(4800))))
    (tmp_path / "junk.png").write_bytes(b"junk")
    records = [
        _record("good", str(tmp_path / "good.png")),
        _record("t2i", None),
        _record("missing", str(tmp_path / "missing.png")),
        _record("big", str(tmp_path / "big.png")),
        _record("junk", str(tmp_path / "junk.png")),
    ]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create(records) | images.FetchImages(max_image_bytes=2000, max_pixels=1000)
        assert_that(
            result.ok
            | "Ok"
            >> beam.Map(lambda r: (r.id, r.source_sha256, r.source_size, r.source_width, r.source_height)),
            equal_to(
                [("good", hashlib.sha256(good).hexdigest(), len(good), 6, 5), ("t2i", None, None, None, None)]
            ),
            label="ok",
        )

        root = str(tmp_path)

        def describe(failure: Failure) -> tuple[str, str, str]:
            assert failure.record is not None
            return failure.id, failure.stage, failure.error.replace(root, "TMP")

        assert_that(
            result.failed | "Failed" >> beam.Map(describe),
            equal_to(
                [
                    ("missing", STAGE_FETCH, "source not found: TMP/missing.png"),
                    ("big", STAGE_FETCH, "source is 2001+ bytes, over limits.max_image_bytes=2000"),
                    (
                        "junk",
                        STAGE_FETCH,
                        "source is not a recognized image format (no PNG/JPEG/GIF/BMP/TIFF/WebP signature)"
                        " (TMP/junk.png)",
                    ),
                ]
            ),
            label="failed",
        )


def test_truncated_header_names_the_format():
    data = png_bytes(Image.new("RGB", (8, 8)))
    with pytest.raises(ImageError, match=r"looks like PNG but its header is unreadable"):
        decode_image(data[:30], max_pixels=100)
