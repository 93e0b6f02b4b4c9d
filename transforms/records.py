"""The elements that travel between pipeline stages.

One manifest row becomes one ``EditRecord``; each stage returns a copy with its own fields filled in
(``dataclasses.replace``), so the record that reaches the end carries everything provenance needs.
A stage that fails emits a ``Failure`` instead: the record as far as it got, plus the stage and error.
Records never carry image bytes or pixels, only the source's URI, sha256 and size: the stages that need
pixels read the source again where they use them (``transforms/reread.py`` says why).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transforms.judge.base import JudgedAttempt

# Longer error texts are cut (with a note): a row's error is for people and dashboards, not a log dump.
MAX_ERROR_CHARS = 2000

# Provenance ``status`` values. rejected: painted (image kept, output_uri set) but below quality.min_overall after
# quality.max_paints paints. Here, not in schema.py, so the command line can name them without importing pyarrow
# before it takes over Ctrl-C (pipeline/interrupt.py).
STATUSES = ("ok", "failed", "skipped", "rejected")

# Stage names, as written to provenance ``error_stage``.
STAGE_READ = "read"
STAGE_VALIDATE = "validate"
STAGE_FETCH = "fetch"
STAGE_DESIGN = "design"
STAGE_PAINT = "paint"
STAGE_WRITE = "write"
STAGE_JUDGE = "judge"


@dataclass(frozen=True)
class RowRef:
    """Where a manifest row came from, so errors can name it."""

    file: str
    index: int  # 1-based data row number within the file (header excluded)

    def __str__(self) -> str:
        return f"{self.file} row {self.index}"


@dataclass(frozen=True)
class ManifestRow:
    """A validated manifest row (aliases resolved, source made absolute)."""

    id: str
    instruction: str
    source: str | None  # absolute URI/path, None => text-to-image
    seed: int | None
    metadata: str | None  # JSON text, passed through
    ref: RowRef
    category: str | None = None  # the manifest's category label (alias edit_type, task_type)
    mask: str | None = None  # absolute URI/path of the row's mask (alias mask_path); None: no region lock


@dataclass(frozen=True)
class KeptPaint:
    """One judged paint of a row, as far as the row's provenance takes it over when that paint is kept."""

    attempt: int  # 1-based
    seed: int
    render_key: str
    output_uri: str
    output_sha256: str
    paint: dict[str, Any]
    paint_s: float | None
    finished_at: float | None


@dataclass(frozen=True)
class Judging:
    """The judge's part of a row (``transforms.quality``): the verdict on the kept image, every paint of the
    row so far with its verdict, the costs summed over every judge call, and why it stopped early.

    The record's own paint fields (seed, render key, output, painter fields) are those of its latest paint
    while it goes through the repaint loop, and the kept paint's (``kept``) once it is decided."""

    judge: str | None = None  # the provider's name
    scores: dict[str, float] | None = None  # of the kept image
    overall: float | None = None
    reason: str | None = None
    kept: KeptPaint | None = None  # the best-scoring judged paint so far (ties: the earlier)
    attempts: tuple[JudgedAttempt, ...] = ()  # every paint of the row, failed repaints included
    error: str | None = None  # judge_error: the latest judging that gave no verdict
    calls: int = 0  # judge calls, retries included
    tokens_in: int | None = None
    tokens_out: int | None = None
    seconds: float = 0.0
    # A rejected row whose last repaint failed: that stage (paint | write | judge) and what happened
    stop_stage: str | None = None
    stop_error: str | None = None


@dataclass(frozen=True)
class EditRecord:
    """A row on its way through the pipeline; later stages fill later fields."""

    row: ManifestRow
    # fetch (the source itself is row.source; its bytes stay out of the record)
    source_sha256: str | None = None
    source_size: int | None = None  # bytes
    source_width: int | None = None
    source_height: int | None = None
    # fetch, rows with a mask: the mask file's sha256 (it enters the render key) and the share of the
    # source's pixels it locks (provenance overwrites it with the written image's share, at output size)
    mask_sha256: str | None = None
    locked_fraction: float | None = None
    # design
    blueprint: str | None = None
    designer: str | None = None
    design_key: str | None = None
    designer_attempts: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    design_s: float | None = None
    blueprint_run_id: str | None = None  # set when the blueprint was reused from an earlier run
    # paint (set before painting: the render key and the seed actually used)
    seed: int | None = None
    render_key: str | None = None
    paint: dict[str, Any] = field(default_factory=dict)  # painter provenance fields
    paint_s: float | None = None
    # write
    output_uri: str | None = None
    output_sha256: str | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    skipped: bool = False  # incremental: its image already existed under the output
    # judge and best-of-N (transforms/quality.py); quality_key: None when the job has no judge
    quality_key: str | None = None
    judging: Judging | None = None
    rejected: bool = False  # below quality.min_overall after quality.max_paints paints (image kept)

    @property
    def id(self) -> str:
        return self.row.id

    def evolve(self, **changes: Any) -> EditRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Failure:
    """A row that failed at ``stage``; it still becomes exactly one provenance row."""

    record: EditRecord | None  # None when the row never became a ManifestRow
    stage: str
    error: str
    row_id: str | None = None  # best-effort id for rows that failed before validation
    ref: RowRef | None = None
    raw: str | None = None  # the raw row text for rows that failed before validation

    @property
    def id(self) -> str | None:
        if self.record is not None:
            return self.record.id
        return self.row_id


def error_text(error: BaseException | tuple) -> str:
    """``Type: message``, the form every stage writes to provenance ``error``.

    Takes an exception, or the ``(type, repr, formatted traceback)`` triple Beam's exception handling
    (``with_exception_handling``, RunInference's dead letters) hands over instead of the exception.
    """
    if isinstance(error, BaseException):
        name, message = type(error).__name__, str(error)
    else:
        exc_type, exc_repr, lines = error
        name = getattr(exc_type, "__name__", str(exc_type))
        message = exc_repr
        # The exception's own line in the traceback: "pkg.Type: message" (notes may follow it).
        for line in reversed(list(lines or [])):
            head, sep, rest = line.partition(":")
            if head.strip().rsplit(".", 1)[-1] == name:
                message = rest.strip() if sep else ""
                break
    return bounded_error(f"{name}: {message}" if message else name)


def bounded_error(text: str) -> str:
    """An error text as a row stores it: at most ``MAX_ERROR_CHARS``, with a note of what was cut."""
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"... [{len(text) - MAX_ERROR_CHARS} more characters]"
    return text
