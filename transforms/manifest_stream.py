"""Bytes of one manifest file, bounded: decompression, the size budget, line splitting, nesting scans.

Compressed files are opened UNCOMPRESSED through Beam's ``FileSystems`` (so ``gs://`` keeps working) and
decompressed here, so that a truncated or corrupt stream becomes one ``StreamBroken`` at its position
instead of a bare zlib/EOFError, and so that no read ever returns more than a bounded amount of
output (a one-line gzip bomb costs a chunk of memory, not the whole line).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

MAX_INSTRUCTION_CHARS = 4000
MAX_ROW_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 16 << 30
MAX_NESTING = 32
# Beam pickles a parsed row's data between stages; around 500 levels that hits Python's recursion limit.
NESTING_CEILING = 100

CHUNK = 1 << 20  # decompressed bytes per read
HEAD_BYTES = 64 << 10  # what file checks look at
_PIECE = 256  # compressed bytes per decompress call for zstd/deflate: output <= 256 * 32768 = 8 MiB


@dataclass(frozen=True)
class ManifestLimits:
    """Every bound applied while reading and checking a manifest (the job spec's ``limits.*``)."""

    max_instruction_chars: int = MAX_INSTRUCTION_CHARS
    source_roots: tuple[str, ...] | None = None
    max_row_bytes: int = MAX_ROW_BYTES
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    max_nesting: int = MAX_NESTING

    def __post_init__(self) -> None:
        for name in ("max_instruction_chars", "max_row_bytes", "max_manifest_bytes", "max_nesting"):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_nesting > NESTING_CEILING:
            raise ValueError(f"limits.max_nesting must be at most {NESTING_CEILING}, got {self.max_nesting}")
        if self.source_roots is not None:
            object.__setattr__(self, "source_roots", tuple(self.source_roots))


# ----------------------------------------------------------------------------------------------------
# Compression


class StreamBroken(Exception):
    """The rest of a file cannot (or may not) be read: ``what`` happened, and what that means."""

    def __init__(self, what: str, consequence: str = "rows from here on cannot be read"):
        super().__init__(what)
        self.what = what
        self.consequence = consequence

    def describe(self, position: str) -> str:
        """``the gzip stream is truncated after line 4; rows from here on cannot be read``."""
        return f"{self.what} {position}; {self.consequence}"


class _SourceFailed(Exception):
    """An error of the underlying file (I/O), kept apart from the decompressor's own errors."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Source:
    """The compressed bytes; I/O errors come out wrapped so they are never mistaken for corruption."""

    mode = "rb"

    def __init__(self, handle: IO[bytes]):
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except Exception as exc:  # re-raised unwrapped by ByteStream: the runner retries I/O errors
            raise _SourceFailed(exc) from exc

    def readable(self) -> bool:
        return True


class _FrameReader:
    """A stream of concatenated frames (zstd, zlib), fed ``_PIECE`` compressed bytes per call.

    These decompressors have no output bound per call, so the input is what is bounded. A frame that
    has started but not finished when the input ends raises EOFError, as the stdlib readers do.
    """

    def __init__(self, source: _Source, new_decompressor: Callable[[], Any]):
        self._source = source
        self._new = new_decompressor
        self._decompressor = new_decompressor()
        self._fed = False
        self._input = memoryview(b"")
        self._output = b""
        self._taken = 0

    def read1(self, size: int) -> bytes:
        while True:
            if self._taken < len(self._output):
                piece = self._output[self._taken : self._taken + size]
                self._taken += len(piece)
                return piece
            if not self._input:
                self._input = memoryview(self._source.read(CHUNK))
                if not self._input:
                    if self._fed and not self._decompressor.eof:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                    return b""
            if self._decompressor.eof:
                self._decompressor, self._fed = self._new(), False
            piece, self._input = self._input[:_PIECE], self._input[_PIECE:]
            self._output, self._taken = self._decompressor.decompress(piece), 0
            self._fed = True
            if self._decompressor.eof and self._decompressor.unused_data:
                self._input = memoryview(self._decompressor.unused_data + bytes(self._input))


@dataclass(frozen=True)
class Codec:
    """One compression: how its files start, how to read them, what it is called in messages."""

    name: str
    opens: Callable[[bytes], bool]  # does a file starting with these bytes hold this compression?
    reader: Callable[[_Source], Any]  # -> an object with read1(size)


def _lzma_alone(head: bytes) -> bool:
    try:
        lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(head[:64], max_length=1)
    except lzma.LZMAError:
        return False
    return len(head) >= 13


def _zlib_header(head: bytes) -> bool:
    return len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


_GZIP = Codec("gzip", lambda h: h[:2] == b"\x1f\x8b", lambda s: gzip.GzipFile(fileobj=s, mode="rb"))
# "BZh", a block size, then a block's magic (pi) or the end-of-stream magic (sqrt(pi)) of an empty file.
_BZIP2_MAGIC = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")
_BZIP2 = Codec("bzip2", lambda h: _BZIP2_MAGIC.match(h) is not None, lambda s: bz2.BZ2File(s))
_XZ = Codec("xz", lambda h: h[:6] == b"\xfd7zXZ\x00", lambda s: lzma.LZMAFile(s))
_ZSTD_MAGIC = re.compile(rb"\x28\xb5\x2f\xfd|[\x50-\x5f]\x2a\x4d\x18")  # a frame, or a skippable frame
_ZSTD = Codec(
    "zstd",
    lambda h: _ZSTD_MAGIC.match(h) is not None,
    lambda s: _FrameReader(s, lambda: zstandard.ZstdDecompressor().decompressobj()),
)
# Beam's DEFLATE files are zlib streams (zlib.compressobj with its default header).
_DEFLATE = Codec("deflate (zlib)", _zlib_header, lambda s: _FrameReader(s, zlib.decompressobj))

# Beam's CompressionTypes (what detect_compression_type can return) -> codec
CODECS: dict[str, Codec] = {
    CompressionTypes.GZIP: _GZIP,
    CompressionTypes.BZIP2: _BZIP2,
    CompressionTypes.LZMA: Codec(
        "xz/lzma", lambda h: _XZ.opens(h) or _lzma_alone(h), lambda s: lzma.LZMAFile(s)
    ),
    CompressionTypes.ZSTD: _ZSTD,
    CompressionTypes.DEFLATE: _DEFLATE,
}
# What a file's first bytes say it is, for naming a mismatch (.lzma-alone and zlib are too weak to guess).
_SIGNATURES = (_GZIP, _BZIP2, _XZ, _ZSTD)


def compression_of(path: str) -> str:
    """Beam's compression type for ``path`` by extension (``CompressionTypes.UNCOMPRESSED`` if none)."""
    return CompressionTypes.detect_compression_type(path)


def compression_extension_problem(path: str) -> str | None:
    """A compression Beam detects that dimflow has no codec for, or None."""
    kind = compression_of(path)
    if kind != CompressionTypes.UNCOMPRESSED and kind not in CODECS:
        return f"{kind} compression is not supported (use .gz, .bz2, .xz or .zst)"
    return None


def compression_mismatch(path: str, head: bytes) -> str | None:
    """Why ``head`` (the file's first raw bytes) does not match the compression its name says, or None."""
    kind = compression_of(path)
    actual = next((codec.name for codec in _SIGNATURES if codec.opens(head)), None)
    if kind == CompressionTypes.UNCOMPRESSED:
        if actual:
            return f"its content is {actual}-compressed but its name has no compression extension"
        return None
    codec = CODECS[kind]
    if codec.opens(head):
        return None
    seen = "is empty" if not head else f"is {actual}-compressed" if actual else f"starts with {head[:16]!r}"
    return f"its name says {codec.name} but it is not {codec.name}-compressed (it {seen})"


def open_raw(path: str) -> IO[bytes]:
    """``path`` as stored (never decompressed by Beam), through any registered filesystem."""
    return FileSystems.open(
        path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    )


class ByteStream:
    """The decompressed bytes of one file, read in chunks, at most ``budget`` bytes of them.

    ``read`` returns b"" at the end and raises ``StreamBroken`` when the stream is truncated or corrupt
    or goes over the budget (after returning every byte before that point). I/O errors of the file
    itself propagate unchanged.
    """

    def __init__(self, handle: IO[bytes], compression: str, budget: int):
        self._codec = CODECS.get(compression)
        source = _Source(handle)
        self._reader = self._codec.reader(source) if self._codec else source
        self._budget = budget
        self._delivered = 0
        self._broken: StreamBroken | None = None  # once broken, every later read raises it again
        self._pushed = b""

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of the stream (what a parser peeked at)."""
        self._pushed = data + self._pushed

    def read(self, size: int = CHUNK) -> bytes:
        if self._pushed:
            data, self._pushed = self._pushed[:size], self._pushed[size:]
            return data
        if self._broken is not None:
            raise self._broken
        try:
            data = self._read(size)
        except StreamBroken as exc:
            self._broken = exc
            raise
        room = self._budget - self._delivered
        if len(data) > room:
            data = data[:room]
            self._broken = StreamBroken(
                f"the file is over limits.max_manifest_bytes={self._budget} (decompressed bytes)",
                "the rest of the file is not read",
            )
            if not data:
                raise self._broken
        self._delivered += len(data)
        return data

    def _read(self, size: int) -> bytes:
        try:
            return self._reader.read1(size) if self._codec else self._reader.read(size)
        except _SourceFailed as exc:
            raise exc.error from None
        except EOFError:
            raise StreamBroken(f"the {self._codec.name} stream is truncated") from None
        except (OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
            raise StreamBroken(f"the {self._codec.name} stream is corrupt ({exc})") from None


def read_head(stream: ByteStream, size: int = HEAD_BYTES) -> tuple[bytes, StreamBroken | None]:
    """Up to ``size`` bytes from the start of ``stream``, and the break that stopped it early, if any."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        try:
            data = stream.read(size - got)
        except StreamBroken as exc:
            return b"".join(parts), exc
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts), None


# ----------------------------------------------------------------------------------------------------
# Lines


@dataclass(frozen=True)
class Line:
    """One physical line (1-based ``number``), its bytes without the newline, or why it has none.

    ``data`` is None when the line is over ``max_row_bytes`` (``problem`` says so; ``preview`` holds its
    start) or when the stream broke before it ended (``broken`` is set; no line follows).
    """

    number: int
    data: bytes | None
    problem: str | None = None
    preview: bytes = b""
    broken: StreamBroken | None = None


_PREVIEW = 200


def bounded_lines(stream: ByteStream, max_row_bytes: int) -> Iterator[Line]:
    """Every line of ``stream``; never holds more than ``max_row_bytes`` of one line.

    An overlong line is skipped to its newline without being kept (it comes out with a problem).
    A broken stream ends the iteration with one ``Line`` carrying the break, numbered as the next line.
    """
    number = 0
    pending = bytearray()
    overlong = 0  # bytes of the current line seen so far, once it is over the limit
    preview = b""

    def too_long(size: int) -> str:
        return f"line is over limits.max_row_bytes={max_row_bytes} ({size}+ bytes); it is skipped"

    while True:
        try:
            chunk = stream.read(CHUNK)
        except StreamBroken as exc:
            yield Line(number + 1, None, broken=exc)
            return
        if not chunk:
            break
        view = memoryview(chunk)
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = view[start:] if end < 0 else view[start:end]
            if overlong:
                overlong += len(piece)
            elif len(pending) + len(piece) > max_row_bytes:
                overlong = len(pending) + len(piece)
                preview = (bytes(pending) + bytes(piece[:_PREVIEW]))[:_PREVIEW]
                pending.clear()
            else:
                pending += piece
            if end < 0:
                break
            number += 1
            if overlong:
                yield Line(number, None, too_long(overlong), preview)
            else:
                yield Line(number, bytes(pending))
            pending.clear()
            overlong, preview = 0, b""
            start = end + 1
    if overlong:
        yield Line(number + 1, None, too_long(overlong), preview)
    elif pending:
        yield Line(number + 1, bytes(pending))


# ----------------------------------------------------------------------------------------------------
# Nesting


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_RUN = re.compile(r"[\[{]+|[\]}]+")


def json_nesting(text: str) -> int:
    """How deep a JSON parser would nest objects/arrays reading ``text`` (an upper bound), without parsing.

    Strings are removed first (brackets inside them do not count); after a string that never closes
    the parser can go no deeper, so the scan stops there. Iterative and linear: safe on any input.
    """
    text = _JSON_STRING.sub("", text)
    stray = text.find('"')
    if stray >= 0:
        text = text[:stray]
    depth = deepest = 0
    for run in _BRACKET_RUN.finditer(text):
        size = run.end() - run.start()
        if text[run.start()] in "[{":
            depth += size
            deepest = max(deepest, depth)
        else:
            depth -= size
    return deepest


def value_nesting(value: Any) -> int:
    """How deep dicts/lists nest in an already parsed ``value``, walked iteratively (no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def json_error(exc: ValueError) -> str:
    """Why ``json.loads`` refused a text: a syntax error, or a number too long for Python's int."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc).split(";")[0]  # e.g. "Exceeds the limit (4300 digits) for integer string conversion..."


def nesting_problem(depth: int, limit: int) -> str | None:
    if depth <= limit:
        return None
    return f"nests objects/arrays {depth} levels deep, over limits.max_nesting={limit}"
