"""Duplicate ids over a whole manifest in 16 bytes per row: the first occurrence wins.

A catalog manifest can hold 10^7 rows; a dict of every id seen costs 100-250 bytes per row. Instead a
first pass records a 64-bit hash of each row's id and the row's position (16 bytes). Rows whose hash no
other row shares cannot be duplicates; for the few that share one, a second look compares their real ids
in position order, so a hash collision never fails a row. ``transforms.chunks`` (runs on the embedded
runner) and ``dimflow validate`` both decide duplicates this way, as ``ValidateRows`` does in one
pipeline: by (file, row) order, the first row with an id keeps its own outcome and each later one fails.
"""

from __future__ import annotations

import hashlib
from array import array

import numpy as np

from transforms.records import RowRef


def id_hash(row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "little")


class DuplicateIds:
    """Pass 1: ``add`` every row's id with its position. Then ``candidates()``: positions to look at again,
    and ``first_of``, called for those rows in position order: the first occurrence's ``RowRef`` for a later
    duplicate, else None."""

    def __init__(self) -> None:
        self._hashes = array("Q")
        self._positions = array("q")
        self._first: dict[str, RowRef] = {}

    def add(self, position: int, row_id: str) -> None:
        self._hashes.append(id_hash(row_id))
        self._positions.append(position)

    def candidates(self) -> list[int]:
        """Sorted positions of the rows whose id hash another row has too (and frees the pass-1 arrays)."""
        if not self._hashes:
            return []
        keys = np.frombuffer(self._hashes, dtype=np.uint64)
        where = np.frombuffer(self._positions, dtype=np.int64)
        order = np.lexsort((where, keys))
        same = keys[order][1:] == keys[order][:-1]
        shared = np.zeros(len(order), dtype=bool)
        shared[1:] |= same
        shared[:-1] |= same
        found = sorted(int(p) for p in where[order[shared]])
        del keys, where
        self._hashes, self._positions = array("Q"), array("q")
        return found

    def first_of(self, row_id: str, ref: RowRef) -> RowRef | None:
        """For a candidate row, in position order: where its id first appeared, if before this row."""
        first = self._first.setdefault(row_id, ref)
        return None if first is ref else first
