"""Windows of a manifest for the embedded runner, so a run's memory does not grow with its manifest.

The embedded runner (FnApiRunner) keeps every PCollection of a pipeline in memory between stages, so one
pipeline over a whole catalog holds every row several times. ``plan_chunks`` reads the manifest once, in
manifest order (files sorted, rows in order), and spills its rows into chunk files of ``chunk_rows`` rows on
local disk; the run then executes one pipeline per chunk (``ReadChunk`` is its source), so peak memory
depends on ``chunk_rows`` and the batch sizes, not on the manifest.

Duplicate ids are decided over the whole manifest while planning, as ``ValidateRows`` decides them in one
pipeline (the first occurrence wins), in 16 bytes per row (``transforms.duplicates``; the second look at
rows whose id hashes meet reads just those rows back from the spill files). Each later occurrence is
marked (``RawRow.first_ref``) when its chunk is read back, and ``ValidateRows`` fails it with the usual
"duplicate id 'X' (first at FILE row N)".
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.duplicates import DuplicateIds
from transforms.manifest import ManifestLimits, RawRow, check_row, match_manifest, parse_file
from transforms.manifest_stream import open_raw
from transforms.records import RowRef

_SPILL = "chunk-{index:05d}.rows"
_MARKS = "chunk-{index:05d}.marks"


@dataclass(frozen=True)
class Chunk:
    index: int
    path: str  # spill file of this chunk's rows (pickled RawRows, in order)
    rows: int
    first: int  # position of its first row in the (shard's) manifest


@dataclass(frozen=True)
class ChunkPlan:
    folder: str
    size: int  # chunk_rows
    chunks: tuple[Chunk, ...]
    rows: int
    duplicates: int  # later occurrences of an id, marked to fail


def empty_chunk(folder: str) -> Chunk:
    """A chunk with no rows (a shard that owns none still writes its empty tables)."""
    path = os.path.join(folder, _SPILL.format(index=0))
    open(path, "wb").close()
    return Chunk(0, path, 0, 0)


def plan_chunks(
    pattern: str,
    limits: ManifestLimits,
    *,
    chunk_rows: int,
    folder: str,
    owns: Callable[[RawRow], bool] | None = None,
) -> ChunkPlan:
    """Spill the rows of ``pattern`` (those ``owns`` keeps: a shard's) into chunks under ``folder``."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    duplicates = DuplicateIds()
    chunks: list[Chunk] = []
    writer = None
    position = 0
    try:
        for path in match_manifest(pattern, limits):
            with open_raw(path) as handle:
                for raw in parse_file(path, handle, limits):
                    if owns is not None and not owns(raw):
                        continue
                    if position % chunk_rows == 0:
                        if writer is not None:
                            writer.close()
                        index = len(chunks)
                        chunks.append(
                            Chunk(index, os.path.join(folder, _SPILL.format(index=index)), 0, position)
                        )
                        writer = open(chunks[-1].path, "wb")  # noqa: SIM115 - closed at the next chunk or below
                    pickle.dump(raw, writer, protocol=pickle.HIGHEST_PROTOCOL)
                    row_id = check_row(raw, limits=limits).id
                    if row_id is not None:
                        duplicates.add(position, row_id)
                    position += 1
    finally:
        if writer is not None:
            writer.close()
    chunks = [dataclasses.replace(c, rows=min(chunk_rows, position - c.first)) for c in chunks]
    marks = _marks(duplicates, chunks, chunk_rows, limits)
    for index, chunk_marks in marks.items():
        with open(os.path.join(folder, _MARKS.format(index=index)), "wb") as handle:
            pickle.dump(chunk_marks, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return ChunkPlan(
        folder=folder,
        size=chunk_rows,
        chunks=tuple(chunks),
        rows=position,
        duplicates=sum(len(m) for m in marks.values()),
    )


def _marks(
    duplicates: DuplicateIds, chunks: list[Chunk], chunk_rows: int, limits: ManifestLimits
) -> dict[int, dict[int, RowRef]]:
    """chunk index -> {row offset in the chunk: the RowRef of the id's first occurrence}."""
    marks: dict[int, dict[int, RowRef]] = {}
    for position, raw in _rows_at(duplicates.candidates(), chunks, chunk_rows):
        row_id = check_row(raw, limits=limits).id
        assert row_id is not None
        first = duplicates.first_of(row_id, raw.ref)
        if first is not None:
            marks.setdefault(position // chunk_rows, {})[position % chunk_rows] = first
    return marks


def _rows_at(positions: list[int], chunks: list[Chunk], chunk_rows: int) -> Iterator[tuple[int, RawRow]]:
    """The spilled rows at ``positions`` (sorted), reading only the chunks that hold them."""
    wanted = iter(positions)
    target = next(wanted, None)
    for chunk in chunks:
        if target is None:
            return
        if target >= chunk.first + chunk.rows:
            continue
        for offset, raw in enumerate(_load(chunk.path)):
            while target is not None and target == chunk.first + offset:
                yield target, raw
                target = next(wanted, None)
            if target is None or target >= chunk.first + chunk.rows:
                break


def _load(path: str) -> Iterator[RawRow]:
    with open(path, "rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return


class _ReadSpill(beam.DoFn):
    def process(self, path: str) -> Iterator[Any]:
        marks_path = path.replace(".rows", ".marks")
        marks: dict[int, RowRef] = {}
        if os.path.exists(marks_path):
            with open(marks_path, "rb") as handle:
                marks = pickle.load(handle)
        for offset, raw in enumerate(_load(path)):
            first = marks.get(offset)
            yield raw if first is None else dataclasses.replace(raw, first_ref=first)


class ReadChunk(beam.PTransform):
    """The rows of one planned chunk, as ``RawRow`` (duplicates of earlier rows marked), spread over workers.

    Reads a local spill file: for the embedded runner, whose workers share the planner's disk.
    """

    def __init__(self, chunk: Chunk, *, spread: bool = True):
        """``spread``: reshuffle the rows so several workers share them (one file is one element: without
        it, one worker would take the whole chunk); one worker gains nothing from it."""
        super().__init__()
        self._path = chunk.path
        self._spread = spread

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        rows = pbegin | "Spill" >> beam.Create([self._path]) | "Rows" >> beam.ParDo(_ReadSpill())
        return rows | "Spread" >> beam.Reshuffle() if self._spread else rows
