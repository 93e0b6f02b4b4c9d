"""The elements that travel between pipeline stages.

One manifest row becomes one ``EditRecord``; each stage returns a copy with its own fields filled in
(``dataclasses.replace``), so the record that reaches the end carries everything provenance needs.
A stage that fails emits a ``Failure`` instead: the record as far as it got, plus the stage and error.
Images travel as encoded bytes, never as tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Stage names, as written to provenance ``error_stage``.
STAGE_READ = "read"
STAGE_VALIDATE = "validate"
STAGE_FETCH = "fetch"
STAGE_DESIGN = "design"
STAGE_PAINT = "paint"
STAGE_WRITE = "write"


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


@dataclass(frozen=True)
class EditRecord:
    """A row on its way through the pipeline; later stages fill later fields."""

    row: ManifestRow
    # fetch
    source_bytes: bytes | None = None
    source_sha256: str | None = None
    source_width: int | None = None
    source_height: int | None = None
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
