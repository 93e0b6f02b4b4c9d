"""The run-partitioned Parquet tables under an output: ``{output}/{table}/run={run_id}/part-*.parquet``.

Provenance and the blueprint table share this layout (Hive-style, so duckdb, BigQuery and Spark read
``run`` as a column); this module writes them with Beam's own Parquet sink and lists earlier runs' files.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems


def run_table_files(output: str, table: str) -> list[str]:
    """Every part file of every run of ``table`` under ``output`` (none yet: an empty list)."""
    pattern = FileSystems.join(output, table, "run=*", "*.parquet")
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # some filesystems raise instead of matching nothing
        return []


class WriteRunTable(beam.PTransform):
    """Rows (dicts) -> ``{output}/{table}/run={run_id}/{part}-SSSSS-of-NNNNN.parquet``."""

    def __init__(self, output: str, table: str, run_id: str, schema: pa.Schema, part: str = "part"):
        super().__init__()
        self._prefix = FileSystems.join(output, table, f"run={run_id}", part)
        self._schema = schema

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix, self._schema, file_name_suffix=".parquet", shard_name_template="-SSSSS-of-NNNNN"
        )
