"""Read a fetched source again where its pixels are needed (design, paint, judge), and prove it is the same.

Records carry a source's URI, sha256 and size, never its bytes: an image (often ~1 MB) per row carried
through every stage makes memory grow with the manifest on the embedded runner, which keeps whole
PCollections between stages, and makes a distributed runner shuffle every image. So the fetch stage
reads, decodes and hashes each source to validate it and drops the bytes, and the stages that need
pixels read the source again, right where they use it, through a ``SourceReader`` with the job's
limits. The design and render keys name the bytes that were fetched, so bytes read later must be those
bytes: a source that changed in between fails its row instead of being designed or painted under a key
that names other bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from transforms import sources
from transforms.records import STAGE_DESIGN, STAGE_JUDGE, STAGE_PAINT, EditRecord
from transforms.sources import SourceError, SourceReader

# What a changed source means for the row, by the stage that found it.
_NOT_DONE = {
    STAGE_DESIGN: "not designed, its design key names the fetched bytes",
    STAGE_PAINT: "not painted, its render key names the fetched bytes",
    STAGE_JUDGE: "not judged, its image was painted from the fetched bytes",
}
_SHOWN_HEX = 12  # hex digits of each sha256 an error shows


@dataclass(frozen=True)
class SourceLimits:
    """The job's limits on reading a source (``limits.*``), as plain values a DoFn can pickle.

    The same limits as the fetch stage's: a re-read is bounded exactly like the first read.
    """

    max_image_bytes: int
    fetch_timeout_s: float = sources.DEFAULT_TIMEOUT_S
    source_roots: tuple[str, ...] | None = None
    storage_errors_before_fail_fast: int = sources.DEFAULT_ERRORS_BEFORE_FAIL_FAST
    storage_cooldown_s: float = sources.DEFAULT_COOLDOWN_S

    def reader(self) -> SourceReader:
        """A reader with these limits (it shares the process-wide fail-fast breakers with the fetch stage)."""
        return SourceReader(
            max_bytes=self.max_image_bytes,
            timeout_s=self.fetch_timeout_s,
            roots=self.source_roots,
            errors_before_fail_fast=self.storage_errors_before_fail_fast,
            cooldown_s=self.storage_cooldown_s,
        )


class SourceChanged(SourceError):
    """The source's bytes now are not the bytes the fetch stage hashed."""


def reread_source(reader: SourceReader, record: EditRecord, stage: str) -> bytes | None:
    """The record's source bytes, read again now; None for a text-to-image row (no source).

    Raises ``SourceError`` whose message is the row's error at ``stage`` (``design``, ``paint`` or ``judge``): the
    reader's own message when the read fails (not found, over the size limit, timed out, failing fast,
    outside the roots), ``SourceChanged`` when the bytes' sha256 differs from the fetched one.
    """
    return _reread(reader, record.row.source, record.source_sha256, "source", stage)


def reread_mask(reader: SourceReader, record: EditRecord, stage: str) -> bytes | None:
    """The record's mask bytes, read again now (like ``reread_source``); None for a row without a mask.

    Errors name the field: ``field 'mask': ...``; a mask that changed since the fetch is ``SourceChanged``
    (its sha256 is in the render key)."""
    try:
        return _reread(reader, record.row.mask, record.mask_sha256, "mask", stage)
    except SourceChanged as exc:
        raise SourceChanged(f"field 'mask': {exc}") from exc
    except SourceError as exc:
        raise SourceError(f"field 'mask': {exc}") from exc


def _reread(
    reader: SourceReader, uri: str | None, fetched: str | None, what: str, stage: str
) -> bytes | None:
    if stage not in _NOT_DONE:
        raise ValueError(f"stage must be one of {', '.join(_NOT_DONE)}, not {stage!r}")
    if not uri:
        return None
    if not fetched:  # a record that skipped the fetch stage: a pipeline bug, failed loudly as its row
        raise SourceError(f"{what} {uri} has no sha256 on its record: it was never fetched; not read again")
    try:
        data = reader.read(uri)
    except SourceError:
        raise
    except Exception as exc:  # never let one row take the bundle down
        raise SourceError(f"cannot read {what} {uri}: {type(exc).__name__}: {exc}") from exc
    now = hashlib.sha256(data).hexdigest()
    if now != fetched:
        raise SourceChanged(
            f"{what} changed since it was fetched (sha256 {fetched[:_SHOWN_HEX]}... at fetch,"
            f" {now[:_SHOWN_HEX]}... now): {_NOT_DONE[stage]}; rerun the row ({uri})"
        )
    return data
