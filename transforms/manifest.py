"""Read manifests (JSONL, JSON, CSV, Parquet; any Beam FileSystems path or glob) and validate their rows.

One implementation serves both the Beam pipeline (``ReadManifest`` -> ``ValidateRows``) and the plain
``dimflow validate`` check (``validate_manifest``): files are checked by ``check_file`` (whole-file
refusals, before any row is read), parsed by ``parse_file`` (transforms/manifest_parse.py, over the
bounded byte streams of transforms/manifest_stream.py) and rows checked by ``check_row``, all under one
``ManifestLimits``, so the two can never disagree about what a valid row is.

The contract (see DESIGN.md, "Manifest"):

- ``id``: required, unique across all matched files, ``[A-Za-z0-9._-]{1,128}`` and not ``.``/``..``
  (ids become output path segments). Integer ids (Parquet int columns) are accepted as their decimal text.
- ``instruction``: required string, non-empty after stripping, at most ``max_instruction_chars``;
  stored stripped.
- ``source``: optional; absent/null/empty means text-to-image. URIs (``gs://...``) are kept as given,
  ``file://`` is reduced to a local path, relative paths resolve against the manifest file's directory
  (for ``gs://`` manifests too) and may not climb above the bucket root.
- ``seed``: optional non-negative integer <= 2**63-1. Integral floats (``7.0``, as CSV/Parquet/pandas
  write them) and integral numeric strings (CSV) are accepted; bools, fractions and NaN-as-value are not
  (a null/NaN/empty cell is "absent": pandas writes missing ints as NaN).
- ``metadata``: optional JSON object, or a string holding one (CSV), nested at most ``max_nesting``
  levels; stored as compact JSON text.
- ``category``: optional short label (at most ``MAX_CATEGORY_CHARS``, no control or bidi characters),
  stored stripped; eval tables and reports group by it.
- ``mask``: optional path/URI of the row's region-lock mask (white/opaque = may change, black = stays the
  source's), checked like ``source`` (resolved against the manifest's folder, ``limits.source_roots``);
  only an edit row can have one (a text-to-image row has no source pixels to lock).
- Aliases so public files work unchanged: ``key``->id, ``prompt``->instruction, ``image_path`` and
  ``input_image``->source, ``edit_type`` and ``task_type``->category, ``mask_path``->mask. Giving two names of one field with
  different values is an error naming both.
- An object of rows keyed by id (a ``.json`` file in ImgEdit-Bench's layout, ``RawRow.member``): the member
  name is the id (a ``key`` field must agree) and the member's own ``id`` field is its source image's path.
- Any other column is ignored (public manifests carry many); each file logs them once at WARNING and
  ``ValidationReport.ignored_columns`` lists them.

Row numbers (``RowRef.index``, 1-based): JSONL rows are numbered by line (blank lines are skipped but
keep the numbering, so "row N" is line N); CSV by data line after the header (one record per physical
line; blank lines keep the numbering too, so "row N" is line N+1); Parquet and JSON arrays by position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.duplicates import DuplicateIds
from transforms.manifest_parse import (
    CATEGORY_COLUMNS,
    FORMATS,
    ID_COLUMNS,
    INSTRUCTION_COLUMNS,
    KNOWN_COLUMNS,
    MASK_COLUMNS,
    SOURCE_COLUMNS,
    URI,
    ManifestRefused,
    RawRow,
    check_file,
    manifest_format,
    parse_file,
    type_name,
)
from transforms.manifest_stream import (
    MAX_INSTRUCTION_CHARS,
    ManifestLimits,
    json_error,
    json_nesting,
    nesting_problem,
    open_raw,
    value_nesting,
)
from transforms.records import STAGE_READ, STAGE_VALIDATE, Failure, ManifestRow, RowRef

__all__ = [
    "FORMATS",
    "MAX_INSTRUCTION_CHARS",
    "ManifestLimits",
    "ManifestRefused",
    "RawRow",
    "ReadManifest",
    "RowOutcome",
    "ValidateRows",
    "check_file",
    "check_row",
    "manifest_format",
    "match_manifest",
    "parse_file",
    "read_rows",
    "row_outcomes",
    "validate_manifest",
    "validate_row",
]

_LOGGER = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_RULE = "1-128 characters from [A-Za-z0-9._-], and not '.' or '..'"

# canonical name -> accepted aliases (benchmark layouts: ImgEdit-Bench's prompt/edit_type, GEdit-Bench's
# key/instruction/task_type/input_image)
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ID_COLUMNS[1:],
    "instruction": INSTRUCTION_COLUMNS[1:],
    "source": SOURCE_COLUMNS[1:],
    "category": CATEGORY_COLUMNS[1:],
    "mask": MASK_COLUMNS[1:],
}
# A category is a short label (ImgEdit's edit_type, GEdit's task_type): eval tables and reports group by it.
MAX_CATEGORY_CHARS = 64

VALID = "valid"
FAILED = "failed"

_URI = URI


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (a row can have several)."""

    ref: RowRef
    id: str | None
    field: str | None  # None: the row as a whole (unparseable line, unreadable file)
    message: str

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.ref}: {self.message}"
        return f"{self.ref}, field '{self.field}': {self.message}"


@dataclass
class ValidationReport:
    """What ``dimflow validate`` prints: counts and every problem, in file/row order."""

    files: list[str]
    rows: int = 0
    valid: int = 0
    failed: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first ``max_problems`` of them
    problem_count: int = 0  # all of them
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # file -> unknown columns


# ----------------------------------------------------------------------------------------------------
# Files


def _absolute_pattern(pattern: str) -> str:
    if _URI.match(pattern):
        return pattern
    return os.path.abspath(os.path.expanduser(pattern))


def match_manifest(pattern: str, limits: ManifestLimits | None = None) -> list[str]:
    """The files ``pattern`` names, sorted, each checked by ``check_file``.

    FileNotFoundError for no match; ValueError (one line naming the file and the reason) for a file of
    no supported format or one ``check_file`` refuses. Run and validate both call this first.
    """
    limits = limits or ManifestLimits()
    pattern = _absolute_pattern(pattern)
    try:
        (result,) = FileSystems.match([pattern])
    except Exception as exc:  # BeamIOError wraps the filesystem's own error
        raise FileNotFoundError(f"manifest {pattern!r}: cannot list matching files: {exc}") from exc
    paths = sorted(m.path for m in result.metadata_list if not m.path.endswith(("/", "\\")))
    if not paths:
        raise FileNotFoundError(f"manifest {pattern!r} matches no files")
    unsupported = []
    for path in paths:
        try:
            manifest_format(path)
        except ValueError:
            unsupported.append(path)
    if unsupported:
        raise ValueError(
            f"manifest {pattern!r} matches files of no supported format "
            f"({', '.join(FORMATS)}): {', '.join(unsupported[:5])}" + (" ..." if len(unsupported) > 5 else "")
        )
    refused: list[ManifestRefused] = []
    for path in paths:
        try:
            check_file(path, limits)
        except ManifestRefused as exc:
            refused.append(exc)
    if refused:
        more = f" (and {len(refused) - 1} more refused file(s))" if len(refused) > 1 else ""
        raise ManifestRefused(refused[0].path, refused[0].reason + more)
    return paths


def read_rows(pattern: str, limits: ManifestLimits | None = None) -> Iterator[RawRow]:
    """All rows of all files ``pattern`` matches, without Beam (files in sorted order)."""
    limits = limits or ManifestLimits()
    for path in match_manifest(pattern, limits):
        with open_raw(path) as handle:
            yield from parse_file(path, handle, limits)


def unknown_columns(data: dict[str, Any]) -> set[str]:
    return {str(name) for name in data if name not in KNOWN_COLUMNS}


# ----------------------------------------------------------------------------------------------------
# Rows


def _absent(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return isinstance(value, float) and math.isnan(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _given(data: dict[str, Any], names: Iterable[str]) -> list[tuple[str, Any]]:
    """(name, value) of each of ``names`` that ``data`` gives a value for (not null, blank or NaN)."""
    return [(name, data[name]) for name in names if name in data and not _absent(data[name])]


def _one(given: list[tuple[str, Any]], problems: list[str]) -> Any:
    """The first given value; another name giving a different value is a problem naming both."""
    if not given:
        return None
    (name, value), others = given[0], given[1:]
    for other, other_value in others:
        if other_value != value:
            problems.append(
                f"conflicts with its alias '{other}' ({_show(value)} vs {_show(other_value)}); give one"
                if name in ALIASES
                else f"'{name}' and '{other}' disagree ({_show(value)} vs {_show(other_value)}); give one"
            )
            break
    return value


def _take(data: dict[str, Any], name: str, problems: list[str]) -> Any:
    """The value of ``name`` or one of its aliases; a conflict between them is a problem."""
    return _one(_given(data, (name, *ALIASES.get(name, ()))), problems)


def raw_id(data: dict[str, Any]) -> Any:
    """The row's id value as validation reads it (``id`` or its alias ``key``), before any checks."""
    return _take(data, "id", [])


def raw_row_id(raw: RawRow) -> Any:
    """The id value of a row as validation reads it: its member name in an object of rows, else ``raw_id``."""
    if raw.member is not None:
        return raw.member
    return None if raw.data is None else raw_id(raw.data)


def _member_fields(raw: RawRow, data: dict[str, Any], problems: dict[str, list[str]]) -> tuple[Any, Any]:
    """(id, source) of a row of an object of rows keyed by id (ImgEdit-Bench's layout).

    The member's name is the row's id; a ``key`` field must agree with it. The member's own ``id`` field
    is, as in ImgEdit-Bench, the path of its source image (one more name for ``source``); an ``id`` equal to
    the member name only repeats the id and is not a source.
    """
    assert raw.member is not None
    for name, value in _given(data, ID_COLUMNS[1:]):
        if value != raw.member:
            problems["id"].append(
                f"the member name {_show(raw.member)} and its '{name}' {_show(value)} disagree (in an object "
                "of rows the member name is the row's id); give one"
            )
    inner = data.get("id")
    repeats_id = isinstance(inner, str | int) and not isinstance(inner, bool) and str(inner) == raw.member
    source = _one(
        [*_given(data, SOURCE_COLUMNS), *([] if repeats_id else _given(data, ("id",)))], problems["source"]
    )
    return raw.member, source


def _check_id(value: Any) -> tuple[str | None, str | None]:
    """(id, problem). Returns the text even when invalid, so failures can still name the row."""
    if value is None:
        return None, "required (or its alias 'key')"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"must be a string, got {type_name(value)}"
    text = str(value)
    if not ID_PATTERN.fullmatch(text) or text in (".", ".."):
        return text, f"must be {ID_RULE} (ids name output folders), got {_show(text)}"
    return text, None


# Bidirectional overrides/isolates can make logged text read differently from what the model gets.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _odd_character(text: str) -> str | None:
    """Why ``text`` cannot be an instruction (surrogates, control or bidi characters), or None."""
    for position, ch in enumerate(text):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"not valid Unicode text (lone surrogate U+{code:04X} at character {position})"
        if unicodedata.category(ch) == "Cc" and ch not in "\n\t\r":
            return f"contains control character U+{code:04X} at character {position}"
        if ch in _BIDI_CONTROLS:
            return f"contains bidirectional control character U+{code:04X} at character {position}"
    return None


def _check_instruction(value: Any, max_chars: int) -> tuple[str | None, str | None]:
    if value is None:
        return None, "required (or its alias 'prompt')"
    if not isinstance(value, str):
        return None, f"must be a string, got {type_name(value)}"
    text = value.strip()
    if not text:
        return None, "empty"
    odd = _odd_character(text)
    if odd:
        return None, odd
    if not any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text):
        return None, "empty (only invisible characters such as zero-width spaces)"
    if len(text) > max_chars:
        return None, f"{len(text)} characters, over limits.max_instruction_chars={max_chars}"
    return text, None


def _check_seed(value: Any) -> tuple[int | None, str | None]:
    rule = f"must be an integer from 0 to {MAX_SEED}"
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"{rule}, got boolean {value}"
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None, f"{rule}, got {value!r}"
        number = int(value)
    elif isinstance(value, str):
        try:
            decimal = Decimal(value.strip())
        except InvalidOperation:
            return None, f"{rule}, got {_show(value)}"
        if not decimal.is_finite() or decimal != decimal.to_integral_value():
            return None, f"{rule}, got {_show(value)}"
        number = int(decimal)
    else:
        return None, f"{rule}, got {type_name(value)}"
    if not 0 <= number <= MAX_SEED:
        return None, f"{rule}, got {_show(value)}"  # not str(number): over 4300 digits that raises
    return number, None


def _check_metadata(value: Any, max_nesting: int) -> tuple[str | None, str | None]:
    """A JSON object (or, from CSV, text holding one), its nesting checked before parsing or dumping."""
    if value is None:
        return None, None
    if isinstance(value, str):
        problem = nesting_problem(json_nesting(value), max_nesting)
        if problem:
            return None, problem
        try:
            value = json.loads(value)
        except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
            return None, f"must be a JSON object, got text that is not JSON ({json_error(exc)})"
        if value is None:
            return None, None
    if not isinstance(value, dict):
        return None, f"must be a JSON object, got {type_name(value)}"
    problem = nesting_problem(value_nesting(value), max_nesting)
    if problem:
        return None, problem
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str), None


def _check_category(value: Any) -> tuple[str | None, str | None]:
    """A short label (ImgEdit's edit_type, GEdit's task_type), stored stripped; absent means none."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"must be a string (a short label such as 'add'), got {type_name(value)}"
    text = value.strip()
    odd = _odd_character(text) or next(
        (
            f"contains control character U+{ord(ch):04X} at character {i}"
            for i, ch in enumerate(text)
            if ch in "\n\t\r"
        ),
        None,
    )
    if odd:
        return None, odd
    if not any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text):
        return None, "empty (only invisible characters such as zero-width spaces)"
    if len(text) > MAX_CATEGORY_CHARS:
        return None, f"{len(text)} characters, over the {MAX_CATEGORY_CHARS} a category label may have"
    return text, None


_SCHEME_OK: dict[str, str | None] = {}


def _scheme_problem(uri: str) -> str | None:
    """Why Beam cannot open ``uri`` (no filesystem registered for its scheme), or None."""
    match = _URI.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme not in _SCHEME_OK:
        try:
            FileSystems.get_filesystem(uri)
            _SCHEME_OK[scheme] = None
        except Exception as exc:  # ValueError: unknown scheme; BeamIOError: its extra is not installed
            _SCHEME_OK[scheme] = f"no Beam filesystem can read {scheme}:// URIs here ({exc})"
    return _SCHEME_OK[scheme]


def resolve_source(source: str, manifest_dir: str) -> str:
    """Make ``source`` absolute: URIs as given, relative paths against the manifest's directory.

    ValueError when a relative path climbs above the root of a URI manifest directory (a bucket).
    """
    source = source.strip()
    if source.startswith("file://"):
        source = source[len("file://") :]
    if _URI.match(source) or os.path.isabs(source):
        return source
    match = _URI.match(manifest_dir)
    if not match:
        return os.path.normpath(os.path.join(manifest_dir, source))
    prefix = match.group(0)
    root, _, base = manifest_dir[len(prefix) :].partition("/")
    joined = posixpath.normpath(posixpath.join(base, source))
    if joined == ".." or joined.startswith("../"):
        raise ValueError(f"{source!r} climbs above {prefix}{root}/ (relative to {manifest_dir})")
    return f"{prefix}{root}/{joined}"


def under_roots(uri: str, roots: Sequence[str]) -> bool:
    """Is ``uri`` inside one of ``roots`` (path prefixes, compared segment-wise after normalizing)?"""

    def norm(path: str) -> str:
        match = _URI.match(path)
        if match:
            prefix = match.group(0)
            return prefix + posixpath.normpath("/" + path[len(prefix) :]).lstrip("/")
        return os.path.normpath(os.path.abspath(path))

    target = norm(uri)
    return any(target == (root := norm(r)) or target.startswith(root.rstrip("/") + "/") for r in roots)


def _check_source(
    value: Any, manifest_dir: str, source_roots: Sequence[str] | None = None
) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, dict) and "bytes" in value:
        return None, (
            "holds an embedded image (an object with 'bytes', as Hugging Face datasets store images), not a "
            "path: dimflow reads sources from files; write the images to files and give their paths"
        )
    if not isinstance(value, str):
        return None, f"must be a string (a path or URI), got {type_name(value)}"
    if not value.strip():
        return None, None
    try:
        resolved = resolve_source(value, manifest_dir)
    except ValueError as exc:
        return None, str(exc)
    problem = _scheme_problem(resolved)
    if problem:
        return None, problem
    if source_roots is not None and not under_roots(resolved, source_roots):
        return None, f"{_show(resolved)} is outside limits.source_roots ({', '.join(source_roots)})"
    return resolved, None


@dataclass(frozen=True)
class RowCheck:
    """The outcome of checking one raw row: the valid row, or its problems (and a best-effort id)."""

    raw: RawRow
    row: ManifestRow | None
    problems: tuple[Problem, ...]
    id: str | None  # the row's id text when it had one that is a valid id, for duplicate detection
    stage: str

    def failure(self, extra: Iterable[Problem] = ()) -> Failure:
        problems = [*self.problems, *extra]
        return Failure(
            record=None,
            stage=self.stage,
            error=format_problems(problems),
            row_id=self.id if self.id is not None else problems[0].id,
            ref=self.raw.ref,
            raw=self.raw.raw,
        )


def format_problems(problems: list[Problem]) -> str:
    """One line naming the row once, then each field: ``FILE row N, field 'a': ...; field 'b': ...``."""
    first, rest = problems[0], problems[1:]
    parts = [str(first)]
    parts += [f"field '{p.field}': {p.message}" if p.field else p.message for p in rest]
    return "; ".join(parts)


def check_row(
    raw: RawRow, *, manifest_dir: str | None = None, limits: ManifestLimits | None = None
) -> RowCheck:
    """Check one row against the manifest contract, collecting every problem (not just the first)."""
    limits = limits or ManifestLimits()
    ref = raw.ref
    if raw.data is None:
        message = raw.error or "unreadable row"
        return RowCheck(raw, None, (Problem(ref, None, None, message),), None, STAGE_READ)
    if manifest_dir is None:
        manifest_dir = posixpath.dirname(ref.file) if _URI.match(ref.file) else os.path.dirname(ref.file)
    data = raw.data
    found: list[tuple[str, str]] = []

    def take(name: str) -> Any:
        conflicts: list[str] = []
        value = _take(data, name, conflicts)
        found.extend((name, c) for c in conflicts)
        return value

    if raw.member is None:
        given_id, given_source = take("id"), take("source")
    else:  # an object of rows keyed by id (ImgEdit-Bench's layout)
        conflicts: dict[str, list[str]] = {"id": [], "source": []}
        given_id, given_source = _member_fields(raw, data, conflicts)
        found.extend((name, c) for name, messages in conflicts.items() for c in messages)
    row_id, id_problem = _check_id(given_id)
    instruction, instruction_problem = _check_instruction(take("instruction"), limits.max_instruction_chars)
    blank = any(isinstance(data.get(n), str) for n in INSTRUCTION_COLUMNS)
    if instruction_problem and instruction_problem.startswith("required") and blank:
        instruction_problem = "empty (blank after stripping whitespace)"
    source, source_problem = _check_source(given_source, manifest_dir, limits.source_roots)
    seed, seed_problem = _check_seed(take("seed"))
    metadata, metadata_problem = _check_metadata(take("metadata"), limits.max_nesting)
    category, category_problem = _check_category(take("category"))
    mask, mask_problem = _check_source(take("mask"), manifest_dir, limits.source_roots)
    if mask is not None and source is None and source_problem is None:
        mask_problem = (
            "given, but the row has no source: a mask locks part of a source's pixels, and a text-to-image "
            "row has none (give the row a source, or drop its mask)"
        )
    for name, problem in (
        ("id", id_problem),
        ("instruction", instruction_problem),
        ("source", source_problem),
        ("seed", seed_problem),
        ("metadata", metadata_problem),
        ("category", category_problem),
        ("mask", mask_problem),
    ):
        if problem:
            found.append((name, problem))
    valid_id = row_id if id_problem is None and not any(n == "id" for n, _ in found) else None
    if found:
        order = {"id": 0, "instruction": 1, "source": 2, "seed": 3, "metadata": 4, "category": 5, "mask": 6}
        found.sort(key=lambda item: order[item[0]])
        problems = tuple(Problem(ref, row_id, name, message) for name, message in found)
        return RowCheck(raw, None, problems, valid_id, STAGE_VALIDATE)
    assert row_id is not None and instruction is not None
    row = ManifestRow(
        id=row_id,
        instruction=instruction,
        source=source,
        seed=seed,
        metadata=metadata,
        ref=ref,
        category=category,
        mask=mask,
    )
    return RowCheck(raw, row, (), row_id, STAGE_VALIDATE)


def validate_row(
    raw: RawRow, *, manifest_dir: str | None = None, limits: ManifestLimits | None = None
) -> ManifestRow | Failure:
    """One row -> a ``ManifestRow``, or a ``Failure`` whose error names the row and every bad field.

    ``manifest_dir`` (for relative sources) defaults to the directory of ``raw.ref.file``. Duplicate ids
    are not visible from one row: ``ValidateRows`` / ``validate_manifest`` check those.
    """
    checked = check_row(raw, manifest_dir=manifest_dir, limits=limits)
    return checked.row if checked.row is not None else checked.failure()


def duplicate_problem(row_id: str, ref: RowRef, first: RowRef) -> Problem:
    return Problem(ref, row_id, "id", f"duplicate id '{row_id}' (first at {first})")


def _order(checked: RowCheck) -> tuple[str, int]:
    return (checked.raw.ref.file, checked.raw.ref.index)


def first_wins(row_id: str, checks: Iterable[RowCheck]) -> Iterator[ManifestRow | Failure]:
    """Resolve the rows sharing ``row_id``: the first by (file, index) keeps its outcome, the rest fail."""
    ordered = sorted(checks, key=_order)
    first = ordered[0]
    yield first.row if first.row is not None else first.failure()
    for later in ordered[1:]:
        yield later.failure([duplicate_problem(row_id, later.raw.ref, first.raw.ref)])


# ----------------------------------------------------------------------------------------------------
# Beam


class _ParseFile(beam.DoFn):
    def __init__(self, limits: ManifestLimits):
        self._limits = limits

    def process(self, readable: fileio.ReadableFile) -> Iterator[RawRow]:
        path = readable.metadata.path
        unknown: set[str] = set()
        try:  # the same check match_manifest ran, for files that appeared (or changed) since
            check_file(path, self._limits)
        except ManifestRefused as exc:
            yield RawRow(RowRef(path, 0), None, exc.reason, "")
            return
        with readable.open(
            mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            for row in parse_file(path, handle, self._limits):
                if row.data is not None:
                    unknown |= unknown_columns(row.data)
                yield row
        if unknown:
            _LOGGER.warning("manifest %s: ignoring unknown columns %s", path, sorted(unknown))


class ReadManifest(beam.PTransform):
    """All rows of the manifest files ``pattern`` matches, as ``RawRow`` (parse errors included).

    Uses Beam's own ``MatchFiles``/``ReadMatches``, so any registered filesystem works (local, gs://).
    The match is also checked when the pipeline is built (``check_exists``: ``match_manifest``, which
    refuses bad files), so a wrong path fails before anything runs; at run time an empty match fails
    too. Rows are reshuffled after reading so the later stages spread over workers even when the
    manifest is one big file.
    """

    def __init__(self, pattern: str, limits: ManifestLimits | None = None, *, check_exists: bool = True):
        super().__init__()
        self._pattern = _absolute_pattern(pattern)
        self._limits = limits or ManifestLimits()
        self._check_exists = check_exists

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self._check_exists:
            match_manifest(self._pattern, self._limits)
        return (
            pbegin
            | "Match"
            >> fileio.MatchFiles(self._pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW)
            | "Open" >> fileio.ReadMatches()
            | "Parse" >> beam.ParDo(_ParseFile(self._limits))
            | "Spread" >> beam.Reshuffle()
        )


class _Check(beam.DoFn):
    KEYED = "keyed"

    def __init__(self, limits: ManifestLimits):
        self._limits = limits

    def process(self, raw: RawRow) -> Iterator[Any]:
        checked = check_row(raw, limits=self._limits)
        if checked.id is not None and raw.first_ref is not None:  # decided over the whole manifest
            yield checked.failure([duplicate_problem(checked.id, raw.ref, raw.first_ref)])
        elif checked.id is not None:
            yield beam.pvalue.TaggedOutput(self.KEYED, (checked.id, checked))
        else:
            yield checked.failure()


def _first_wins_alone(item: tuple[str, RowCheck]) -> Iterator[ManifestRow | Failure]:
    row_id, checked = item
    yield from first_wins(row_id, [checked])


def _first_wins(item: tuple[str, Iterable[RowCheck]]) -> Iterator[ManifestRow | Failure]:
    row_id, checks = item
    yield from first_wins(row_id, checks)


def _split(item: ManifestRow | Failure) -> Iterator[Any]:
    if isinstance(item, Failure):
        yield beam.pvalue.TaggedOutput(FAILED, item)
    else:
        yield item


class ValidateRows(beam.PTransform):
    """``RawRow`` -> ``valid`` (``ManifestRow``) and ``failed`` (``Failure``) outputs.

    Duplicate ids are decided globally: every row whose id is well-formed is grouped by id, whatever
    else is wrong with it; the first occurrence by (file path, row index) keeps its own outcome, and
    each later one fails with "duplicate id 'X' (first at FILE row N)". So fixing an unrelated field of
    the first row never changes which row owns the id. Unparseable rows fail at stage ``read``, contract
    violations at ``validate``.
    """

    def __init__(self, limits: ManifestLimits | None = None, *, duplicates_marked: bool = False):
        """``limits``: instruction length, nesting, and (``source_roots``) where sources may lie.
        ``duplicates_marked``: the rows come from a chunk plan that already marked every later occurrence
        of an id over the whole manifest (``RawRow.first_ref``), so no grouping by id is needed."""
        super().__init__()
        self._limits = limits or ManifestLimits()
        self._duplicates_marked = duplicates_marked

    def expand(self, raw_rows: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        checked = raw_rows | "Check" >> beam.ParDo(_Check(self._limits)).with_outputs(
            _Check.KEYED, main="unkeyed"
        )
        if self._duplicates_marked:  # every id left is unique: its row keeps its own outcome
            resolved = checked[_Check.KEYED] | "Unique" >> beam.FlatMap(_first_wins_alone)
        else:
            resolved = (
                checked[_Check.KEYED]
                | "GroupById" >> beam.GroupByKey()
                | "FirstWins" >> beam.FlatMap(_first_wins)
            )
        return (
            (checked.unkeyed, resolved)
            | "Join" >> beam.Flatten()
            | "Split" >> beam.ParDo(_split).with_outputs(FAILED, main=VALID)
        )


# ----------------------------------------------------------------------------------------------------
# Plain Python (dimflow validate)


@dataclass(frozen=True)
class RowOutcome:
    """What a run will make of one row before fetching: valid, or failed with the run's exact error."""

    ref: RowRef
    id: str | None  # as the run's provenance names the row
    problems: tuple[Problem, ...]  # empty: valid

    @property
    def error(self) -> str | None:
        return format_problems(list(self.problems)) if self.problems else None


JobCheck = Callable[[ManifestRow], Problem | None]  # what a job cannot do with a valid row


def row_outcomes(
    pattern: str, limits: ManifestLimits | None = None, job_check: JobCheck | None = None
) -> Iterator[RowOutcome]:
    """Every row's outcome, in manifest order, with the same checks, parsing, limits and rules as a run
    (``job_check``: the job's own row check, applied to rows that are otherwise valid, as the run does).

    Raises FileNotFoundError (no match) or ValueError (a refused file) before reading any row, where
    ``dimflow run`` refuses too.
    """
    limits = limits or ManifestLimits()
    yield from _outcomes(match_manifest(pattern, limits), limits, {}, job_check)


def _rows(files: list[str], limits: ManifestLimits) -> Iterator[RawRow]:
    for path in files:
        with open_raw(path) as handle:
            yield from parse_file(path, handle, limits)


def _outcomes(
    files: list[str], limits: ManifestLimits, ignored: dict[str, set[str]], job_check: JobCheck | None = None
) -> Iterator[RowOutcome]:
    """Files are read in sorted order and rows in order, so the first row seen with an id is the one
    ``first_wins`` keeps in the pipeline; ``ignored`` collects each file's unknown columns.

    Two passes, so duplicate ids cost 16 bytes per row (``transforms.duplicates``), not a dict of every id:
    the first records id hashes, the second checks rows and compares real ids where hashes meet."""
    duplicates = DuplicateIds()
    for position, raw in enumerate(_rows(files, limits)):
        row_id = check_row(raw, limits=limits).id
        if row_id is not None:
            duplicates.add(position, row_id)
    candidates = iter(duplicates.candidates())
    candidate = next(candidates, None)
    for position, raw in enumerate(_rows(files, limits)):
        if raw.data is not None and (extra := unknown_columns(raw.data)):
            ignored.setdefault(raw.ref.file, set()).update(extra)
        checked = check_row(raw, limits=limits)
        problems = checked.problems
        if position == candidate:
            candidate = next(candidates, None)
            if checked.id is not None and (first := duplicates.first_of(checked.id, raw.ref)) is not None:
                problems = (*problems, duplicate_problem(checked.id, raw.ref, first))
        if not problems and job_check is not None and checked.row is not None:
            problems = tuple(p for p in (job_check(checked.row),) if p is not None)
        row_id = checked.id if checked.id is not None else (problems[0].id if problems else None)
        yield RowOutcome(raw.ref, row_id, problems)


def validate_manifest(
    pattern: str,
    limits: ManifestLimits | None = None,
    job_check: JobCheck | None = None,
    max_problems: int | None = None,
) -> ValidationReport:
    """Check a whole manifest without Beam (as ``row_outcomes``): counts, problems, ignored columns.

    ``max_problems`` keeps only the first problems (the counts stay exact): a manifest of 10^7 bad rows
    must not need them all in memory to say how many there are. Raises FileNotFoundError (no match) or
    ValueError (a refused file) before reading any row.
    """
    limits = limits or ManifestLimits()
    report = ValidationReport(files=match_manifest(pattern, limits))
    ignored: dict[str, set[str]] = {}
    for outcome in _outcomes(report.files, limits, ignored, job_check):
        report.rows += 1
        if outcome.problems:
            report.failed += 1
            report.problem_count += len(outcome.problems)
            room = len(outcome.problems) if max_problems is None else max_problems - len(report.problems)
            report.problems.extend(outcome.problems[: max(room, 0)])
        else:
            report.valid += 1
    report.ignored_columns = {path: sorted(names) for path, names in ignored.items()}
    return report
