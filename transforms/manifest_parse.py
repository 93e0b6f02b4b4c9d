"""Manifest files -> ``RawRow``: the file checks (refusals) and one parser per format.

Every record a file holds comes out as exactly one ``RawRow`` (a bad one with ``error`` set), so no
record vanishes silently: JSONL and CSV are read one record per physical line, a JSON array element by
element, Parquet row by row; a stream that breaks (truncated, corrupt, over the size budget) ends the
file with one row at that position. Problems of a whole file are found by ``check_file`` from its
first 64 KiB and refuse the file before any row is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from transforms.manifest_stream import (
    CHUNK,
    HEAD_BYTES,
    NESTING_CEILING,
    ByteStream,
    ManifestLimits,
    StreamBroken,
    bounded_lines,
    compression_extension_problem,
    compression_mismatch,
    compression_of,
    json_error,
    json_nesting,
    nesting_problem,
    open_raw,
    read_head,
    value_nesting,
)
from transforms.records import RowRef
from transforms.sources import special_file_kind

# extension -> parser; text formats may be compressed (.jsonl.gz, .csv.xz, ...).
FORMATS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
CSV_DELIMITERS = (",", ";", "\t", "|")
ID_COLUMNS = ("id", "key")
INSTRUCTION_COLUMNS = ("instruction", "prompt")
SOURCE_COLUMNS = ("source", "image_path", "input_image")
CATEGORY_COLUMNS = ("category", "edit_type", "task_type")
MASK_COLUMNS = ("mask", "mask_path")
KNOWN_COLUMNS = frozenset(
    {*ID_COLUMNS, *INSTRUCTION_COLUMNS, *SOURCE_COLUMNS, *CATEGORY_COLUMNS, *MASK_COLUMNS, "seed", "metadata"}
)

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BOM = b"\xef\xbb\xbf"
_PREVIEW = 200


@dataclass(frozen=True)
class RawRow:
    """One manifest row as read: its parsed mapping, or why it could not be parsed.

    ``ref.index`` 0 stands for a whole file that was refused at run time (it appeared, or changed,
    after the pipeline was built).
    """

    ref: RowRef
    data: dict[str, Any] | None
    error: str | None
    raw: str
    # Set when the manifest was planned in chunks (transforms/chunks.py): an earlier row of the whole
    # manifest has this row's id, so it fails as that row's duplicate.
    first_ref: RowRef | None = None
    # The member name of a row read from an object of rows keyed by id (ImgEdit-Bench's layout): the
    # row's id (validation reads the member's own ``id`` field as its source image; see check_row).
    member: str | None = None


class ManifestRefused(ValueError):
    """A whole manifest file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"manifest file {path}: {reason}")
        self.path = path
        self.reason = reason


# ----------------------------------------------------------------------------------------------------
# File checks


def manifest_format(path: str) -> str:
    """The parser for ``path`` ('jsonl', 'json', 'csv' or 'parquet'), by extension; ValueError if none."""
    name = path.lower()
    compressed = compression_of(name) != "uncompressed"
    if compressed:
        name = name.rsplit(".", 1)[0]
    for extension, kind in FORMATS.items():
        if name.endswith(extension) and not (compressed and kind == "parquet"):
            return kind
    raise ValueError(
        f"unsupported manifest format: {path} (expected {', '.join(FORMATS)}; "
        "text formats may be compressed, e.g. .jsonl.gz)"
    )


def _not_regular(path: str) -> str | None:
    """Why a local ``path`` must not be opened (opening a FIFO blocks), or None. URIs are objects."""
    if URI.match(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    kind = special_file_kind(mode)
    if kind is None:
        return None
    return f"is a {kind}, not a regular file; dimflow reads manifests only from regular files"


_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32 BE", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32 LE", "UTF-32"),
    (b"\xfe\xff", "UTF-16 BE", "UTF-16"),
    (b"\xff\xfe", "UTF-16 LE", "UTF-16"),
)


def _wide_encoding(head: bytes) -> tuple[str, str, str] | None:
    """(encoding, how it was seen, iconv name) when ``head`` is UTF-16/32 text, else None."""
    for bom, name, iconv in _WIDE_BOMS:
        if head.startswith(bom):
            return name, f"byte-order mark {bom.hex(' ').upper()}", iconv
    nuls = head.count(0)
    if not nuls or nuls * 8 < len(head):  # a few stray NUL bytes: those lines fail on their own
        return None
    if b"\x00\x00\x00" in head:
        order = "LE" if head[:1] != b"\x00" else "BE"
    else:
        order = "LE" if head[1::2].count(0) >= head[0::2].count(0) else "BE"
    width = "32" if b"\x00\x00\x00" in head else "16"
    return f"UTF-{width} {order}", "no byte-order mark; NUL bytes in its first 64 KiB", f"UTF-{width}{order}"


def encoding_problem(path: str, head: bytes) -> str | None:
    """Why a text manifest starting with ``head`` is not UTF-8, naming its encoding and the fix."""
    wide = _wide_encoding(head)
    if wide is None:
        return None
    name, seen, iconv = wide
    return (
        f"it is {name} encoded ({seen}); dimflow reads UTF-8 manifests only (a UTF-8 BOM is fine): "
        f"convert it with iconv -f {iconv} -t UTF-8 {os.path.basename(path)} > converted"
    )


def csv_columns(header: str) -> tuple[str, list[str]]:
    """The delimiter and column names of a CSV header line; ValueError saying what is missing.

    The delimiter is the first of ``, ; tab |`` that splits the header into columns holding an id
    column and an instruction column.
    """
    for delimiter in CSV_DELIMITERS:
        try:
            columns = next(csv.reader([header], delimiter=delimiter, strict=True))
        except csv.Error:
            continue
        if any(c in columns for c in ID_COLUMNS) and any(c in columns for c in INSTRUCTION_COLUMNS):
            twice = sorted({c for c in columns if c in KNOWN_COLUMNS and columns.count(c) > 1})
            if twice:
                raise ValueError(f"the CSV header names column {twice[0]!r} more than once")
            return delimiter, columns
    try:
        shown = next(csv.reader([header]))
    except csv.Error:
        shown = header.split(",")
    listed = ", ".join(repr(c) for c in shown[:12]) + (" ..." if len(shown) > 12 else "")
    raise ValueError(
        f"the CSV header has columns [{listed}] (split at ','), but needs an id column ('id' or 'key') "
        "and an instruction column ('instruction' or 'prompt'), separated by one of: , ; tab |"
    )


def _csv_header_problem(
    head: bytes, at_end: bool, broken: StreamBroken | None, limits: ManifestLimits
) -> str | None:
    """Why the header line at the start of ``head`` is unusable (``at_end``: head is the whole file)."""
    end = head.find(b"\n")
    if end < 0 and not at_end:
        if broken is not None:
            return f"{broken.what} before the end of the CSV header line"
        return f"no complete CSV header line in the first {HEAD_BYTES // 1024} KiB"
    line = head if end < 0 else head[:end]
    if len(line) > limits.max_row_bytes:
        return f"the CSV header line is over limits.max_row_bytes={limits.max_row_bytes}"
    try:
        text = line.decode("utf-8-sig").removesuffix("\r")
    except UnicodeDecodeError as exc:
        return f"the CSV header line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not text.strip():
        return "the CSV file has no header line" + (" (the file is empty)" if not head else "")
    try:
        csv_columns(text)
    except ValueError as exc:
        return str(exc)
    return None


def check_file(path: str, limits: ManifestLimits) -> str:
    """Refuse (``ManifestRefused``) a file whose problem is the whole file; returns its format.

    Looks only at what the file is (a regular file, for local paths) and its first 64 KiB: format and
    compression by name and magic bytes, UTF-16/32 text, the CSV header. Never opens a FIFO or device.
    """
    try:
        kind = manifest_format(path)
    except ValueError as exc:
        raise ManifestRefused(path, str(exc)) from None
    for problem in (compression_extension_problem(path), _not_regular(path)):
        if problem:
            raise ManifestRefused(path, problem)
    with open_raw(path) as handle:
        raw = handle.read(HEAD_BYTES + 1)
    whole = len(raw) <= HEAD_BYTES
    raw = raw[:HEAD_BYTES]
    mismatch = compression_mismatch(path, raw)
    if mismatch:
        raise ManifestRefused(path, mismatch)
    if kind == "parquet":
        if not raw.startswith(b"PAR1"):
            raise ManifestRefused(path, f"not a Parquet file (it starts with {raw[:16]!r}, not b'PAR1')")
        return kind
    head, broken = read_head(ByteStream(io.BytesIO(raw), compression_of(path), budget=HEAD_BYTES))
    problem = encoding_problem(path, head)
    if problem is None and kind == "csv":
        problem = _csv_header_problem(head, whole and broken is None, broken if whole else None, limits)
    if problem:
        raise ManifestRefused(path, problem)
    return kind


# ----------------------------------------------------------------------------------------------------
# Rows


def type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _preview(data: bytes) -> str:
    return data[:_PREVIEW].decode("utf-8", errors="replace")


def _after(unit: str, number: int) -> str:
    return f"after {unit} {number}" if number else f"before {unit} 1"


def _object_row(ref: RowRef, value: Any, raw: str) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(ref, None, f"not a JSON object (got {type_name(value)})", raw)
    return RawRow(ref, value, None, raw)


def _json_row(ref: RowRef, text: str, limits: ManifestLimits) -> RawRow:
    """One JSON record's text -> a row; its nesting is checked before the parser can recurse."""
    problem = nesting_problem(json_nesting(text), limits.max_nesting)
    if problem:
        return RawRow(ref, None, problem, text[:_PREVIEW])
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        return RawRow(ref, None, f"not valid JSON ({json_error(exc)})", text)
    return _object_row(ref, value, text)


def _decode(data: bytes, first: bool) -> str:
    return data.decode("utf-8-sig" if first else "utf-8").removesuffix("\r")


def _not_utf8(ref: RowRef, data: bytes, exc: UnicodeDecodeError, where: str = "") -> RawRow:
    return RawRow(ref, None, f"{where}not valid UTF-8 ({exc.reason} at byte {exc.start})", repr(data)[:1000])


def _parse_jsonl(path: str, stream: ByteStream, limits: ManifestLimits) -> Iterator[RawRow]:
    for line in bounded_lines(stream, limits.max_row_bytes):
        ref = RowRef(path, line.number)
        if line.broken is not None:
            yield RawRow(ref, None, line.broken.describe(_after("line", line.number - 1)), "")
            return
        if line.data is None:
            yield RawRow(ref, None, line.problem, _preview(line.preview))
            continue
        try:
            text = _decode(line.data, line.number == 1)
        except UnicodeDecodeError as exc:
            yield _not_utf8(ref, line.data, exc)
            continue
        if text.strip():
            yield _json_row(ref, text, limits)


# --- CSV -------------------------------------------------------------------------------------------


def _quote_problem(text: str, delimiter: str) -> str | None:
    """Explain the quoting error in one CSV line (csv only says 'unexpected end of data')."""
    position, size = 0, len(text)
    while position <= size:
        if position < size and text[position] == '"':
            opened = position
            position += 1
            while True:
                close = text.find('"', position)
                if close < 0:
                    return (
                        f"a quoted field opened at column {opened + 1} is never closed on this line; "
                        "dimflow reads CSV one record per line: put multi-line instructions in JSONL"
                    )
                if text.startswith('""', close):
                    position = close + 2
                    continue
                position = close + 1
                break
            if position < size and text[position] != delimiter:
                return (
                    f"the quoted field opened at column {opened + 1} closes at column {position} but is "
                    f"followed by {text[position]!r} instead of {delimiter!r} (write a quote inside a quoted "
                    'field as "")'
                )
        else:
            next_delimiter = text.find(delimiter, position)
            position = size if next_delimiter < 0 else next_delimiter
        position += 1
    return None


def _csv_line(ref: RowRef, number: int, text: str, delimiter: str, columns: list[str]) -> RawRow:
    where = f"line {number}: "
    try:
        fields = next(csv.reader([text], delimiter=delimiter, strict=True))
    except csv.Error as exc:
        return RawRow(ref, None, where + (_quote_problem(text, delimiter) or f"not valid CSV ({exc})"), text)
    if len(fields) != len(columns):
        difference = len(fields) - len(columns)
        more = f"{difference} more" if difference > 0 else f"{-difference} fewer"
        hint = f"an unquoted {delimiter!r} inside a value?" if difference > 0 else "a missing field?"
        message = f"{where}has {more} field(s) than the header ({len(fields)}, not {len(columns)}; {hint})"
        return RawRow(ref, None, message, text)
    record = dict(zip(columns, fields, strict=True))
    return RawRow(ref, record, None, json.dumps(record, ensure_ascii=False))


def _parse_csv(path: str, stream: ByteStream, limits: ManifestLimits) -> Iterator[RawRow]:
    """One record per physical line; row N is the N-th line after the header (blank lines keep numbers)."""
    lines = bounded_lines(stream, limits.max_row_bytes)
    header = next(lines, None)
    try:
        if header is None or header.data is None:
            raise ValueError("the CSV file has no readable header line")
        delimiter, columns = csv_columns(_decode(header.data, first=True))
    except ValueError as exc:  # UnicodeDecodeError too; the file changed since it was checked
        yield RawRow(RowRef(path, 0), None, str(exc), "")
        return
    for line in lines:
        ref = RowRef(path, line.number - 1)
        if line.broken is not None:
            yield RawRow(ref, None, line.broken.describe(_after("line", line.number - 1)), "")
            return
        if line.data is None:
            yield RawRow(ref, None, f"line {line.number}: {line.problem}", _preview(line.preview))
            continue
        try:
            text = _decode(line.data, first=False)
        except UnicodeDecodeError as exc:
            yield _not_utf8(ref, line.data, exc, f"line {line.number}: ")
            continue
        if text.strip():
            yield _csv_line(ref, line.number, text, delimiter, columns)


# --- JSON arrays ----------------------------------------------------------------------------------


_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_STRUCTURE = re.compile(rb'[\[{]+|[\]}]+|[",]')
_QUOTE, _COMMA, _OPENERS = ord('"'), ord(","), b"[{"


class _ElementScanner:
    """Finds where one JSON array element ends (the ``,`` or ``]`` after it), across refills.

    Tracks only string state and bracket depth (iteratively), so it is safe on any input; ``deepest``
    is how deep the element nests.
    """

    def __init__(self) -> None:
        self.in_string = False
        self.depth = 0
        self.deepest = 0
        self.resume = 0

    def scan(self, buf: bytearray, start: int) -> int | None:
        """Index of the terminator, or None (then bytes before ``resume`` are fully scanned)."""
        position, end = start, len(buf)
        while position < end:
            if self.in_string:
                stop = _STRING_BODY.match(buf, position, end).end()
                if stop < end and buf[stop] == _QUOTE:
                    self.in_string, position = False, stop + 1
                    continue
                self.resume = stop  # the string goes on (or an escape is split): rescan from here
                return None
            token = _STRUCTURE.search(buf, position, end)
            if token is None:
                break
            first, size = buf[token.start()], token.end() - token.start()
            if first == _QUOTE:
                self.in_string = True
            elif first == _COMMA:
                if self.depth == 0:
                    return token.start()
            elif first in _OPENERS:
                self.depth += size
                self.deepest = max(self.deepest, self.depth)
            elif size > self.depth:
                return token.start() + self.depth  # the closer that ends the array itself
            else:
                self.depth -= size
            position = token.end()
        self.resume = end
        return None


class _Buffer:
    """A refillable window over a ByteStream; consumed bytes are dropped."""

    def __init__(self, stream: ByteStream):
        self.stream = stream
        self.buf = bytearray()
        self.pos = 0
        self.ended = False
        self.broken: StreamBroken | None = None

    def compact(self) -> None:
        """Forget the bytes before ``pos``."""
        del self.buf[: self.pos]
        self.pos = 0

    def more(self) -> bool:
        """Append another chunk; False at the end of the stream (or when it broke)."""
        if self.ended:
            return False
        try:
            chunk = self.stream.read(CHUNK)
        except StreamBroken as exc:
            self.broken, chunk = exc, b""
        if not chunk:
            self.ended = True
            return False
        self.buf += chunk
        return True

    def next_byte(self) -> int | None:
        """The next non-whitespace byte (not consumed), or None at the end."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in b" \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            self.compact()
            if not self.more():
                return None


@dataclass
class _Element:
    data: bytes | None  # None: over max_row_bytes (only ``preview`` kept)
    size: int
    deepest: int
    terminator: int | None  # b"," or b"]", None when the stream ended inside or right after it
    complete: bool  # not inside a string or bracket when it ended
    preview: bytes = b""


def _read_element(buffer: _Buffer, max_bytes: int) -> _Element:
    """The element starting at ``buffer.pos``; an overlong one is scanned to its end but not kept."""
    scanner = _ElementScanner()
    start = position = buffer.pos
    dropped = 0  # bytes of an overlong element already forgotten
    preview = b""
    while True:
        end = scanner.scan(buffer.buf, position)
        if end is not None:
            size = dropped + end - start
            data = bytes(buffer.buf[start:end]) if size <= max_bytes else None
            preview = preview or bytes(buffer.buf[start : start + _PREVIEW])
            buffer.pos = end + 1
            return _Element(data, size, scanner.deepest, buffer.buf[end], True, preview)
        position = scanner.resume
        if dropped or position - start > max_bytes:  # overlong: forget what was scanned
            preview = preview or bytes(buffer.buf[start : start + _PREVIEW])
            dropped += position - start
            start = position
        buffer.pos = start
        buffer.compact()
        position -= start
        start = 0
        if not buffer.more():
            size = dropped + len(buffer.buf)
            data = bytes(buffer.buf) if size <= max_bytes else None
            buffer.pos = len(buffer.buf)
            complete = not scanner.in_string and scanner.depth == 0
            return _Element(data, size, scanner.deepest, None, complete, preview or (data or b"")[:_PREVIEW])


@dataclass(frozen=True)
class _Container:
    """How one kind of JSON container of rows is read: an array (element N is row N) or an object of
    rows keyed by id (member N is row N)."""

    opener: int
    closer: int
    name: str  # in messages: "array" / "object"
    unit: str  # "element" / "member"


_ARRAY = _Container(ord("["), ord("]"), "array", "element")
_OBJECT = _Container(ord("{"), ord("}"), "object", "member")


def _parse_json_container(
    path: str, stream: ByteStream, limits: ManifestLimits, shape: _Container
) -> Iterator[RawRow]:
    """A JSON array of rows or object of rows, one element/member at a time (never the whole file in
    memory); row N is element/member N."""
    buffer = _Buffer(stream)
    buffer.next_byte()
    buffer.pos += 1  # the opener (the caller saw it)
    index = 0
    unit, name = shape.unit, f"JSON {shape.name}"
    if buffer.next_byte() == shape.closer:
        buffer.pos += 1
    else:
        while True:
            index += 1
            ref = RowRef(path, index)
            if buffer.next_byte() is None and buffer.broken is None:
                message = f"the {name} is not closed: the file ends where {unit} {index} should start"
                yield RawRow(ref, None, message, "")
                return
            element = _read_element(buffer, limits.max_row_bytes)
            if buffer.broken is not None and element.terminator is None:
                yield RawRow(ref, None, buffer.broken.describe(_after(unit, index - 1)), "")
                return
            yield _element_row(ref, element, limits, shape)
            if element.terminator is None:
                if element.complete:
                    yield RawRow(
                        RowRef(path, index + 1),
                        None,
                        f"the {name} is not closed: the file ends after {unit} {index} without its "
                        f"{chr(shape.closer)!r} (truncated?); {unit}s after it may be missing",
                        "",
                    )
                return
            if element.terminator == shape.closer:
                break
            if element.terminator != _COMMA:  # the other kind of closer: the file is not valid JSON
                yield RawRow(
                    RowRef(path, index + 1),
                    None,
                    f"the {name} is closed by {chr(element.terminator)!r} after {unit} {index}, not by "
                    f"{chr(shape.closer)!r}; the file is not valid JSON",
                    "",
                )
                return
    following = buffer.next_byte()
    if following is not None:
        rest = bytes(buffer.buf[buffer.pos : buffer.pos + _PREVIEW])
        yield RawRow(
            RowRef(path, index + 1), None, f"unexpected data after the end of the {name}", _preview(rest)
        )
    elif buffer.broken is not None:
        yield RawRow(RowRef(path, index + 1), None, buffer.broken.describe(_after(unit, index)), "")


def _element_row(ref: RowRef, element: _Element, limits: ManifestLimits, shape: _Container) -> RawRow:
    unit = shape.unit
    if element.data is None:
        return RawRow(
            ref,
            None,
            f"{unit} is over limits.max_row_bytes={limits.max_row_bytes} ({element.size}+ bytes); it is skipped",
            _preview(element.preview),
        )
    if element.terminator is None and not element.complete:
        return RawRow(
            ref,
            None,
            f"the file ends inside this {unit}: the JSON {shape.name} is not closed (truncated?)",
            _preview(element.data),
        )
    problem = nesting_problem(element.deepest, limits.max_nesting)
    if problem:
        return RawRow(ref, None, problem, _preview(element.data))
    try:
        text = element.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(ref, element.data, exc)
    if not text.strip():
        return RawRow(ref, None, f"not valid JSON (an empty {unit}: a stray ',')", "")
    if shape is _OBJECT:
        return _member_row(ref, text.strip())
    return _json_row(ref, text.strip(), limits)


def _member_row(ref: RowRef, text: str) -> RawRow:
    """One ``"name": {row}`` member of an object of rows (its nesting already checked)."""
    try:
        member = json.loads("{" + text + "}")  # one member: the scanner splits at top-level commas
    except ValueError as exc:
        return RawRow(ref, None, f"not a valid JSON object member ({json_error(exc)})", text)
    ((name, value),) = member.items()
    if not isinstance(value, dict):
        return RawRow(
            ref,
            None,
            f"member {name[:80]!r} is not a JSON object (got {type_name(value)}); an object of rows maps each "
            "row's id to the row, as ImgEdit-Bench's JSON does",
            text,
        )
    return RawRow(ref, value, None, text, member=name)


_MEMBER_NAME = re.compile(rb'\s*"((?:[^"\\]|\\.)*)"\s*:\s*(.)', re.DOTALL)


def json_layout(head: bytes, whole: bool) -> str:
    """How a ``.json`` file starting with ``head`` (its first 64 KiB; ``whole``: all of it) holds rows:
    ``array`` (``[`` first), ``object`` (one JSON object whose first member holds an object and is not a
    row column: an object of rows keyed by id, as ImgEdit-Bench's JSON), else ``lines`` (JSON lines).

    A first line that is a complete JSON object followed by more data is JSON lines, whatever its
    members are: only a file that is one object is read as an object of rows.
    """
    text = head.removeprefix(_BOM).lstrip()
    if text[:1] == b"[":
        return "array"
    first = _MEMBER_NAME.match(text, 1) if text[:1] == b"{" else None
    if first is None or first.group(2) != b"{":
        return "lines"
    try:
        name = json.loads(b'"' + first.group(1) + b'"')
    except ValueError:
        return "lines"
    if name in KNOWN_COLUMNS:
        return "lines"
    newline = text.find(b"\n")
    line = (text if newline < 0 else text[:newline]).decode("utf-8", errors="replace")
    if json_nesting(line) > NESTING_CEILING:  # read as lines: each says how deep it nests
        return "lines"
    try:
        _, end = json.JSONDecoder().raw_decode(line)
    except ValueError:
        return "object"  # the object goes on past its first line (pretty-printed, or longer than the head)
    after = line[end:].strip() or (newline >= 0 and text[newline:].strip())
    return "object" if whole and not after else "lines"


def _parse_json(path: str, stream: ByteStream, limits: ManifestLimits) -> Iterator[RawRow]:
    """A ``.json`` file: a JSON array of rows, an object of rows keyed by id, or JSON lines (``json_layout``)."""
    head, broken = read_head(stream)  # a break stays with the stream: raised again after these bytes
    layout = json_layout(head, whole=len(head) < HEAD_BYTES and broken is None)
    stream.unread(head.removeprefix(_BOM) if layout != "lines" else head)
    if layout == "array":
        yield from _parse_json_container(path, stream, limits, _ARRAY)
    elif layout == "object":
        yield from _parse_json_container(path, stream, limits, _OBJECT)
    else:
        yield from _parse_jsonl(path, stream, limits)


# --- Parquet --------------------------------------------------------------------------------------


def _binary_hint(record: dict[str, Any]) -> str:
    """Why a Parquet row is so big when it embeds binary data (images stored as bytes, as Hugging Face
    datasets such as GEdit-Bench's do): dimflow reads sources from files."""
    names = [
        str(name)
        for name, value in record.items()
        if isinstance(value, bytes) or (isinstance(value, dict) and isinstance(value.get("bytes"), bytes))
    ]
    if not names:
        return ""
    return (
        f"; column(s) {', '.join(repr(n) for n in names[:5])} embed binary data (images as bytes?): dimflow "
        "reads sources from files, so write the images to files and give their paths"
    )


def _parse_parquet(path: str, handle: IO[bytes], limits: ManifestLimits) -> Iterator[RawRow]:
    """Row by row; a row's nesting and JSON size are bounded like a text record's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = total = 0
    try:
        parquet = pq.ParquetFile(handle)
        for batch in parquet.iter_batches(batch_size=64):
            for record in batch.to_pylist():
                number += 1
                ref = RowRef(path, number)
                problem = nesting_problem(value_nesting(record), limits.max_nesting)
                if problem:
                    yield RawRow(ref, None, problem, "")
                    continue
                raw = json.dumps(record, default=str, ensure_ascii=False)
                size = len(raw.encode("utf-8"))
                total += size
                if total > limits.max_manifest_bytes:
                    over = StreamBroken(
                        f"the file is over limits.max_manifest_bytes={limits.max_manifest_bytes} "
                        "(bytes of its rows as JSON)",
                        "the rest of the file is not read",
                    )
                    yield RawRow(ref, None, over.describe(_after("row", number - 1)), "")
                    return
                if size > limits.max_row_bytes:
                    message = (
                        f"row is over limits.max_row_bytes={limits.max_row_bytes} ({size} bytes as JSON)"
                        + _binary_hint(record)
                    )
                    yield RawRow(ref, None, message, raw[:_PREVIEW])
                    continue
                yield RawRow(ref, record, None, raw)
    except (pa.ArrowException, ValueError) as exc:  # ArrowInvalid is also a ValueError
        yield RawRow(
            RowRef(path, number + 1), None, f"cannot read Parquet ({exc}); rows after this are lost", ""
        )


_TEXT_PARSERS = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}


def parse_file(path: str, handle: IO[bytes], limits: ManifestLimits) -> Iterator[RawRow]:
    """Every row of one manifest file, in order; bad rows come back with ``error`` set, never raised.

    ``handle`` is the file as stored (``open_raw``, or Beam's ``ReadableFile.open`` with
    ``CompressionTypes.UNCOMPRESSED``): decompression happens here. I/O errors propagate (the runner
    retries the file); content errors become rows.
    """
    kind = manifest_format(path)
    if kind == "parquet":
        yield from _parse_parquet(path, handle, limits)
        return
    stream = ByteStream(handle, compression_of(path), limits.max_manifest_bytes)
    yield from _TEXT_PARSERS[kind](path, stream, limits)
