"""Split one manifest across shard processes (Kubernetes Indexed Job pods) by a stable hash of row ids.

Every shard reads the whole manifest and keeps the rows whose shard key hashes to its index, so the
shards together see every row exactly once with no coordinator. All rows of one id land in the same
shard, so the duplicate-id rule (first occurrence wins) still holds; rows without a usable id are
placed by their position (file and row number), which every shard computes the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from transforms.manifest import RawRow, raw_row_id


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be in [0, {self.count}) with num_shards >= 1, got {self.index}"
            )

    @property
    def name(self) -> str:
        """Names this shard's part files and run record: ``shard-00003-of-00008``."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def owns(self, raw: RawRow) -> bool:
        return shard_of(shard_key(raw), self.count) == self.index


def shard_key(raw: RawRow) -> str:
    """The row's id as validation will read it (``id``, its alias, or its member name in an object of rows),
    else its position."""
    value = raw_row_id(raw)
    if isinstance(value, str | int) and not isinstance(value, bool):
        return f"id:{value}"
    return f"ref:{raw.ref.file}:{raw.ref.index}"


def shard_of(key: str, count: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_from_env(index: int | None, count: int | None) -> Shard | None:
    """Flags win; else ``JOB_COMPLETION_INDEX`` (set by Kubernetes in Indexed Jobs) and
    ``DIMFLOW_NUM_SHARDS``. No index and no count: not sharded."""
    if index is None and os.environ.get("JOB_COMPLETION_INDEX", "").strip():
        index = int(os.environ["JOB_COMPLETION_INDEX"])
    if count is None and os.environ.get("DIMFLOW_NUM_SHARDS", "").strip():
        count = int(os.environ["DIMFLOW_NUM_SHARDS"])
    if index is None and count is None:
        return None
    if index is None or count is None:
        raise ValueError(
            "sharding needs both a shard index (--shard-index or JOB_COMPLETION_INDEX) and a shard count "
            f"(--num-shards or DIMFLOW_NUM_SHARDS); got index={index}, count={count}"
        )
    return Shard(index, count)
