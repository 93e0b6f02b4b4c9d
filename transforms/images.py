"""Images in and out: bounded fetch, safe decode, deterministic encode, atomic write.

Sources are untrusted: reading them is ``transforms.sources``' job (bounded bytes and time, regular
files only, real paths inside the roots, fail-fast on failing storage), and ``decode_image`` checks the
pixel count the header declares before any pixel is decoded, so a small file that declares a huge canvas
(a decompression bomb) is rejected cheaply. The fetch stage decodes each
source fully to validate it and records the sha256 of its ORIGINAL bytes (it enters the render key), its
size and its upright size, but not the bytes: the designer and painter read the source again
(``transforms.reread``, which checks that sha256) and the painter decodes it with the same
``decode_image``, so both see the same pixels.

Decoding policy (one place, so every stage agrees):

- the first frame only (animated GIF/WebP/APNG, multi-page TIFF);
- EXIF orientation applied (``ImageOps.exif_transpose``); an unreadable EXIF block leaves the pixels as
  stored rather than failing the row;
- converted to RGB; transparency is composited over WHITE (catalog convention: a transparent product
  cut-out is meant to sit on a light page, and plain ``convert("RGB")`` would turn it black);
- no color management (ICC profiles are ignored), like most model preprocessing.

Error messages never quote the source's bytes (``_decoder_says``): a source may be any file the worker
can read, and provenance is read by more people than the files are.

PIL's own global bomb guard (``Image.MAX_IMAGE_PIXELS``) is left as is; it only matters when
``max_pixels`` is set above PIL's hard limit (2x ~89.5M pixels), where PIL's error is reported instead.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from transforms import sources
from transforms.records import STAGE_FETCH, EditRecord, Failure, error_text
from transforms.sources import SourceError
from transforms.storage import write_atomic

OUTPUT_FORMATS = ("png", "jpg", "webp")
JPEG_QUALITY = 95
WEBP_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
FAILED = "failed"
OK = "ok"

_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_RENDER_KEY = re.compile(r"[0-9a-f]{16,}")


class ImageError(SourceError):
    """Source bytes that are not a usable image: not an image, corrupt, truncated, or over the pixel limit."""


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


_LITERAL = re.compile(r"b?'(?:[^'\\]|\\.)*'|b?\"(?:[^\"\\]|\\.)*\"")  # 'x', b'x', "x", b"x"
_VALUE_START = re.compile(r": |['\"]")
_WORD = re.compile(r"[A-Za-z0-9_./#%+-]{3,}")
_WITHHELD = "<withheld>"


def _decoder_says(exc: BaseException, data: bytes, *, with_type: bool = True) -> str:
    """``Type: message`` of a decoder error, with anything that may be the source's own bytes withheld.

    Decoders quote what they choke on (PPM: ``Token too long in file header: <token>``; ``invalid literal
    for int() with base 10: b'<token>'``; PNG: ``broken PNG file (chunk b'<id>')``), and a source may be
    any file the worker can read. So quoted literals go, whatever follows the first ": " (the idiom for
    appending the offending value) or an unclosed quote goes, and any remaining word of 3+ characters that
    occurs in the source bytes goes.
    """
    text = _LITERAL.sub(_WITHHELD, str(exc))
    cut = _VALUE_START.search(text)  # ": value", or a quote left open
    if cut:
        text = text[: cut.start()] + f": {_WITHHELD}"

    def screen(match: re.Match[str]) -> str:
        word = match.group(0)
        return _WITHHELD if word != _WITHHELD.strip("<>") and word.encode() in data else word

    text = _WORD.sub(screen, text)
    return f"{type(exc).__name__}: {text}" if with_type else text


def _open(data: bytes, what: str = "source") -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{what} is a decompression bomb: {_decoder_says(exc, data, with_type=False)}"
        ) from exc
    except UnidentifiedImageError as exc:
        kind = _sniff(data)
        if kind:
            raise ImageError(
                f"{what} looks like {kind} but its header is unreadable (truncated or corrupt)"
            ) from exc
        raise ImageError(
            f"{what} is not a recognized image format (no PNG/JPEG/GIF/BMP/TIFF/WebP signature)"
        ) from exc
    except Exception as exc:  # broken headers surface as SyntaxError, struct.error, OSError, ...
        raise ImageError(f"{what} has an unreadable image header: {_decoder_says(exc, data)}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB; anything with transparency is composited over white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":  # 16/32-bit gray: scale to 8 bits, don't clip
        img = img.point(lambda v: v / 257).convert("L") if img.mode.startswith("I;16") else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode_upright(
    data: bytes, max_pixels: int, what: str, pixel_limit: str = "limits.max_pixels"
) -> Image.Image:
    """Decode ``data`` fully, EXIF-upright, in its own mode; ImageError (naming ``what``) if unusable.
    ``pixel_limit`` names where ``max_pixels`` comes from, for the refusal of an image over it."""
    if not data:
        raise ImageError(f"{what} is empty (0 bytes)")
    img = _open(data, what)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} declares an empty canvas {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} declares {width}x{height} = {width * height} pixels, over {pixel_limit}={max_pixels}"
        )
    fmt = img.format or "image"
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed PIL globally; we still refuse partial images
        raise ImageError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; refusing to decode")
    try:
        img.verify()  # structural check (e.g. PNG chunk CRCs); the object is unusable afterwards
        img = _open(data, what)
        img.load()
    except ImageError:
        raise
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, zlib.error, ...
        raise ImageError(
            f"{what} {fmt} {width}x{height} cannot be decoded: {_decoder_says(exc, data)}"
        ) from exc
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF: keep the stored orientation rather than lose the row
        upright = img
    return upright if upright is not None else img


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` fully into an RGB image, EXIF-upright; ImageError for anything unusable.

    The declared width*height is checked against ``max_pixels`` before decoding; the full decode then
    catches truncated or corrupt files (a lazy open alone would not).
    """
    return _to_rgb(_decode_upright(data, max_pixels, "source"))


# A mask's value at or above this is "may change" (before ``mask.invert``).
MASK_THRESHOLD = 128
MASK_MODES = ("1", "L", "P", "RGB", "LA", "RGBA")


def decode_mask(
    data: bytes, *, max_pixels: int, invert: bool = False, pixel_limit: str = "limits.max_pixels"
) -> Image.Image:
    """Decode a region-lock mask into a binary ``L`` image, EXIF-upright: 255 = may change, 0 = locked.

    The one reading of a mask: the fetch stage's check, the painter's native mask and the report's outline
    all call it, so they see the same pixels. Decoded like a source (same pixel limit, full decode, EXIF
    orientation: a mask is drawn on the image as it is displayed). What is read as the mask's value:
    single-channel images (``1``, ``L``) their value, ``LA``/``RGBA`` (and a ``P`` image with transparency)
    their alpha (opaque = may change), ``RGB`` (and an opaque ``P``) their luminance. Values >= 128 may
    change; ``invert`` swaps the two. Other modes (16-bit, CMYK, ...) raise ImageError rather than be guessed
    at. ``pixel_limit`` names where ``max_pixels`` comes from (said when a mask is over it).
    """
    img = _decode_upright(data, max_pixels, "mask", pixel_limit)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in MASK_MODES:
        raise ImageError(
            f"mask has pixel mode {img.mode}; a mask must be one of {', '.join(MASK_MODES)}"
            " (grayscale, black and white, or an alpha channel)"
        )
    if img.mode in ("LA", "RGBA"):
        value = img.getchannel("A")
    else:
        value = img.convert("L")  # "1" -> 0/255; RGB and palette -> ITU-R 601 luminance
    editable, locked = (0, 255) if invert else (255, 0)
    return value.point([locked] * MASK_THRESHOLD + [editable] * (256 - MASK_THRESHOLD))


_SOURCE_WORD = re.compile(r"\bsource\b")


def _reader_said(exc: SourceError) -> str:
    """The reader's message about a mask it read: its first word "source" (the reader names every file it
    reads a source) said as "mask"."""
    return _SOURCE_WORD.sub("mask", str(exc), count=1)


class FetchImage(beam.DoFn):
    """Read + decode each record's source (to validate it); record its facts, not its bytes.

    The record leaves with the source's sha256, size in bytes and upright width/height; the bytes are
    dropped (stages that need pixels read them again, see ``transforms.reread``). Records without a
    source (text-to-image) pass through untouched. The read goes through
    ``sources.SourceReader`` (regular files only, real paths inside ``source_roots``, a deadline per
    source, fail-fast per storage location). A row with a ``mask`` has it read by the same reader, decoded
    (``decode_mask``) and checked against the source: the same upright size, and at least one pixel that
    may change; the record gets its sha256 and locked share. Never raises: a bad source or mask becomes
    ``Failure(record, "fetch", message)`` on the ``failed`` output.
    """

    def __init__(
        self,
        *,
        max_image_bytes: int,
        max_pixels: int,
        fetch_timeout_s: float = sources.DEFAULT_TIMEOUT_S,
        source_roots: Sequence[str] | None = None,
        storage_errors_before_fail_fast: int = sources.DEFAULT_ERRORS_BEFORE_FAIL_FAST,
        storage_cooldown_s: float = sources.DEFAULT_COOLDOWN_S,
        reader: sources.SourceReader | None = None,
        mask_invert: bool = False,
    ):
        self._max_pixels = max_pixels
        self._mask_invert = mask_invert
        self._reader = reader or sources.SourceReader(
            max_bytes=max_image_bytes,
            timeout_s=fetch_timeout_s,
            roots=source_roots,
            errors_before_fail_fast=storage_errors_before_fail_fast,
            cooldown_s=storage_cooldown_s,
        )

    def process(self, record: EditRecord) -> Iterator[Any]:
        uri = record.row.source
        if not uri:
            yield record
            return
        try:
            data = self._reader.read(uri)
            try:
                img = decode_image(data, max_pixels=self._max_pixels)
            except ImageError as exc:
                raise ImageError(f"{exc} ({uri})") from exc
            width, height = img.size
            img.close()
        except SourceError as exc:
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_FETCH, str(exc)))
            return
        except Exception as exc:  # never let one row take the bundle down
            message = f"cannot fetch source {uri}: {type(exc).__name__}: {exc}"
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_FETCH, message))
            return
        record = record.evolve(
            source_sha256=hashlib.sha256(data).hexdigest(),
            source_size=len(data),
            source_width=width,
            source_height=height,
        )
        if record.row.mask:
            try:
                record = self._fetch_mask(record)
            except Exception as exc:  # SourceError, ImageError, or anything else: this row only
                if isinstance(exc, ImageError):
                    message = str(exc)
                else:
                    message = _reader_said(exc) if isinstance(exc, SourceError) else error_text(exc)
                error = f"{record.row.ref}, field 'mask': {message}"
                yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_FETCH, error))
                return
        yield record

    def _fetch_mask(self, record: EditRecord) -> EditRecord:
        """``record`` with its mask's sha256 and locked share; ImageError for a mask that cannot lock it."""
        uri = record.row.mask
        assert uri is not None
        data = self._reader.read(uri)
        try:
            mask = decode_mask(data, max_pixels=self._max_pixels, invert=self._mask_invert)
        except ImageError as exc:
            raise ImageError(f"{exc} ({uri})") from exc
        source_size = (record.source_width, record.source_height)
        if mask.size != source_size:
            raise ImageError(
                f"mask is {mask.size[0]}x{mask.size[1]} but its source is {source_size[0]}x{source_size[1]}"
                f" (both after EXIF orientation): a mask must have its source's displayed size ({uri})"
            )
        histogram = mask.histogram()
        locked = histogram[0]
        total = mask.size[0] * mask.size[1]
        if locked == total:
            colour = "white (opaque)" if self._mask_invert else "black (transparent)"
            raise ImageError(
                f"mask locks every pixel (all {colour} at threshold {MASK_THRESHOLD},"
                f" mask.invert={str(self._mask_invert).lower()}): nothing to edit, not painted ({uri})"
            )
        return record.evolve(mask_sha256=hashlib.sha256(data).hexdigest(), locked_fraction=locked / total)


class FetchImages(beam.PTransform):
    """``EditRecord`` -> outputs ``ok`` (records with source facts) and ``failed`` (``Failure``).

    Keyword arguments are those of ``FetchImage``.
    """

    def __init__(self, **fetch_options: Any):
        super().__init__()
        self._fn = FetchImage(**fetch_options)

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "Fetch" >> beam.ParDo(self._fn).with_outputs(FAILED, main=OK)


def _check_format(fmt: str) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")


def encode_image(img: Image.Image, fmt: str) -> bytes:
    """Encode to ``fmt`` with fixed settings and no metadata, so equal pixels give equal bytes.

    The pixels are copied into a fresh image first, so nothing in ``img.info`` (EXIF, ICC, text chunks,
    timestamps) can leak into the file. JPEG and WebP are lossy at quality 95 (JPEG 4:4:4, baseline).
    """
    _check_format(fmt)
    mode = img.mode if img.mode in ("RGB", "RGBA", "L") else "RGB"
    if fmt == "jpg" and mode == "RGBA":
        source = _to_rgb(img)
        mode = "RGB"
    else:
        source = img if img.mode == mode else img.convert(mode)
    clean = Image.frombytes(mode, source.size, source.tobytes())
    buffer = io.BytesIO()
    if fmt == "png":
        clean.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpg":
        clean.save(
            buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False
        )
    else:
        clean.save(buffer, format="WEBP", quality=WEBP_QUALITY, method=4, lossless=False, exact=False)
    return buffer.getvalue()


def output_uri(output_root: str, row_id: str, render_key: str, fmt: str) -> str:
    """``{output}/images/{id}/{render_key[:16]}.{fmt}`` (ids and keys are checked: they are path segments)."""
    _check_format(fmt)
    if not _ID.fullmatch(row_id) or row_id in (".", ".."):
        raise ValueError(f"row id {row_id!r} cannot name an output folder (need [A-Za-z0-9._-]{{1,128}})")
    if not _RENDER_KEY.fullmatch(render_key):
        raise ValueError(f"render key must be lowercase hex of at least 16 digits, got {render_key!r}")
    return FileSystems.join(output_root, "images", row_id, f"{render_key[:16]}.{fmt}")


def write_output(output_root: str, row_id: str, render_key: str, fmt: str, data: bytes) -> str:
    """Write ``data`` to its output URI and return the URI; readers never see a partial file.

    See ``storage.write_atomic``: object stores get the final name at once; locally a hidden temp name is
    renamed into place (a rerun replaces an existing file with the same bytes), and a symlink planted
    anywhere below ``output_root`` is refused, never written through.
    """
    final = output_uri(output_root, row_id, render_key, fmt)
    write_atomic(
        final, data, {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[fmt], root=output_root
    )
    return final
