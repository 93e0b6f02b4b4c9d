"""Images in and out: bounded fetch, safe decode, deterministic encode, atomic write.

Sources are untrusted: ``read_bounded`` never reads more than the byte limit (+1 to detect "over"), and
``decode_image`` checks the pixel count the header declares before any pixel is decoded, so a small
file that declares a huge canvas (a decompression bomb) is rejected cheaply. The fetch stage keeps the
ORIGINAL bytes in the record (their sha256 enters the render key); the painter decodes them again with
the same ``decode_image``, so both see the same pixels.

Decoding policy (one place, so every stage agrees):

- the first frame only (animated GIF/WebP/APNG, multi-page TIFF);
- EXIF orientation applied (``ImageOps.exif_transpose``); an unreadable EXIF block leaves the pixels as
  stored rather than failing the row;
- converted to RGB; transparency is composited over WHITE (catalog convention: a transparent product
  cut-out is meant to sit on a light page, and plain ``convert("RGB")`` would turn it black);
- no color management (ICC profiles are ignored), like most model preprocessing.

PIL's own global bomb guard (``Image.MAX_IMAGE_PIXELS``) is left as is; it only matters when
``max_pixels`` is set above PIL's hard limit (2x ~89.5M pixels), where PIL's error is reported instead.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from transforms.records import STAGE_FETCH, EditRecord, Failure
from transforms.storage import write_atomic

OUTPUT_FORMATS = ("png", "jpg", "webp")
JPEG_QUALITY = 95
WEBP_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
FAILED = "failed"
OK = "ok"

_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_RENDER_KEY = re.compile(r"[0-9a-f]{16,}")
_CHUNK = 1 << 20


class ImageError(ValueError):
    """A source that cannot be used: missing, too big, not an image, corrupt, or over the pixel limit."""


def _is_not_found(exc: BaseException) -> bool:
    """FileNotFoundError locally, google.api_core NotFound on GCS (also when Beam wraps it)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, FileNotFoundError) or any(
            c.__name__ == "NotFound" for c in type(current).__mro__
        ):
            return True
        details = getattr(current, "exception_details", None)  # BeamIOError
        if isinstance(details, dict):
            stack.extend(details.values())
        stack.extend([current.__cause__, current.__context__])
    return False


def read_bounded(uri: str, max_bytes: int) -> bytes:
    """The bytes at ``uri`` (any Beam filesystem), reading at most ``max_bytes + 1`` of them.

    Raises ImageError: "source not found: URI", "source is N+ bytes, over limits.max_image_bytes=M", or
    "cannot read source URI: ..." for other storage errors.
    """
    limit = max_bytes + 1
    parts: list[bytes] = []
    size = 0
    try:
        with FileSystems.open(
            uri, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            while size < limit:
                chunk = handle.read(min(_CHUNK, limit - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
    except Exception as exc:
        if _is_not_found(exc):
            raise ImageError(f"source not found: {uri}") from exc
        raise ImageError(f"cannot read source {uri}: {type(exc).__name__}: {exc}") from exc
    if size > max_bytes:
        raise ImageError(f"source is {size}+ bytes, over limits.max_image_bytes={max_bytes}")
    return b"".join(parts)


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


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"source is a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        kind = _sniff(data)
        if kind:
            raise ImageError(
                f"source looks like {kind} but its header is unreadable (truncated or corrupt)"
            ) from exc
        raise ImageError(f"source is not a recognized image format (starts with {data[:8]!r})") from exc
    except Exception as exc:  # broken headers surface as SyntaxError, struct.error, OSError, ...
        raise ImageError(f"source has an unreadable image header: {type(exc).__name__}: {exc}") from exc


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


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode ``data`` fully into an RGB image, EXIF-upright; ImageError for anything unusable.

    The declared width*height is checked against ``max_pixels`` before decoding; the full decode then
    catches truncated or corrupt files (a lazy open alone would not).
    """
    if not data:
        raise ImageError("source is empty (0 bytes)")
    img = _open(data)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"source declares an empty canvas {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"source declares {width}x{height} = {width * height} pixels, over limits.max_pixels={max_pixels}"
        )
    fmt = img.format or "image"
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed PIL globally; we still refuse partial images
        raise ImageError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process; refusing to decode")
    try:
        img.verify()  # structural check (e.g. PNG chunk CRCs); the object is unusable afterwards
        img = _open(data)
        img.load()
    except ImageError:
        raise
    except Exception as exc:  # OSError("image file is truncated"), SyntaxError, zlib.error, ...
        raise ImageError(
            f"source {fmt} {width}x{height} cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # broken EXIF: keep the stored orientation rather than lose the row
        upright = img
    return _to_rgb(upright if upright is not None else img)


class FetchImage(beam.DoFn):
    """Read + decode each record's source (to validate it); keep the original bytes and their facts.

    Records without a source (text-to-image) pass through untouched. Never raises: a bad source becomes
    ``Failure(record, "fetch", message)`` on the ``failed`` output.
    """

    def __init__(self, *, max_image_bytes: int, max_pixels: int):
        self._max_bytes = max_image_bytes
        self._max_pixels = max_pixels

    def process(self, record: EditRecord) -> Iterator[Any]:
        uri = record.row.source
        if not uri:
            yield record
            return
        try:
            data = read_bounded(uri, self._max_bytes)
            try:
                img = decode_image(data, max_pixels=self._max_pixels)
            except ImageError as exc:
                raise ImageError(f"{exc} ({uri})") from exc
            width, height = img.size
            img.close()
        except ImageError as exc:
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_FETCH, str(exc)))
            return
        except Exception as exc:  # never let one row take the bundle down
            message = f"cannot fetch source {uri}: {type(exc).__name__}: {exc}"
            yield beam.pvalue.TaggedOutput(FAILED, Failure(record, STAGE_FETCH, message))
            return
        yield record.evolve(
            source_bytes=data,
            source_sha256=hashlib.sha256(data).hexdigest(),
            source_width=width,
            source_height=height,
        )


class FetchImages(beam.PTransform):
    """``EditRecord`` -> outputs ``ok`` (records with source facts) and ``failed`` (``Failure``)."""

    def __init__(self, *, max_image_bytes: int, max_pixels: int):
        super().__init__()
        self._fn = FetchImage(max_image_bytes=max_image_bytes, max_pixels=max_pixels)

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
