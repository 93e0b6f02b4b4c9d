"""Blueprints from earlier runs, keyed by ``design_key``, so a rerun asks the designer nothing twice.

The blueprint table (``{output}/blueprints/run={run_id}/part-*.parquet``, written by ``--stage design``
and by full runs) holds at least the columns ``design_key`` and ``blueprint`` (``designer`` is used
when present). ``read_cached_blueprints`` loads the ones a job needs into memory; it reads through
Beam's FileSystems, so local paths and gs:// both work. For tables too large to hold in one worker's
memory, join on ``design_key`` inside the pipeline instead (the same files, read with ReadFromParquet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

_COLUMNS = ("design_key", "blueprint", "designer")


@dataclass(frozen=True)
class CachedBlueprint:
    blueprint: str
    designer: str | None
    run_id: str  # the run that made it (provenance can say where a reused blueprint came from)


def blueprint_glob(output: str) -> str:
    return FileSystems.join(output, "blueprints", "run=*", "*.parquet")


def read_cached_blueprints(
    output: str, design_keys: Iterable[str] | None = None
) -> dict[str, CachedBlueprint]:
    """``design_key`` -> blueprint from every earlier run under ``output`` (the newest run wins).

    Only rows with a non-empty blueprint count; ``design_keys`` (if given) limits what is kept, to bound
    memory. A missing ``blueprints/`` folder means an empty cache, not an error.
    """
    wanted = set(design_keys) if design_keys is not None else None
    try:
        matches = FileSystems.match([blueprint_glob(output)])[0].metadata_list
    except Exception:  # Beam raises when nothing matches on some filesystems
        return {}
    found: dict[str, CachedBlueprint] = {}
    # Run ids start with a UTC timestamp, so path order is run order: later files overwrite earlier ones.
    for path in sorted(m.path for m in matches):
        run_id = _run_id(path)
        with FileSystems.open(path) as handle:
            table = pq.read_table(pa.BufferReader(handle.read()))
        missing = {"design_key", "blueprint"} - set(table.column_names)
        if missing:
            raise ValueError(f"blueprint table {path} lacks column(s) {sorted(missing)}")
        columns = {name: table.column(name).to_pylist() for name in _COLUMNS if name in table.column_names}
        designers = columns.get("designer", [None] * table.num_rows)
        for key, blueprint, designer in zip(
            columns["design_key"], columns["blueprint"], designers, strict=True
        ):
            if key and blueprint and blueprint.strip() and (wanted is None or key in wanted):
                found[key] = CachedBlueprint(blueprint, designer, run_id)
    return found


def _run_id(path: str) -> str:
    for part in reversed(path.replace("\\", "/").split("/")):
        if part.startswith("run="):
            return part[len("run=") :]
    return ""
