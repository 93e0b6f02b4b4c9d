"""Reading cached blueprints from earlier runs' blueprint tables."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms.designer.cache import CachedBlueprint, read_cached_blueprints


def write(output, run_id: str, rows: list[dict], name: str = "part-00000.parquet") -> None:
    folder = output / "blueprints" / f"run={run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / name)


def test_newest_run_wins_and_empty_blueprints_are_not_cached(tmp_path):
    write(
        tmp_path,
        "20250101T000000Z-aaaaaa",
        [
            {"id": "1", "design_key": "k1", "designer": "openai:a", "blueprint": "old one"},
            {"id": "2", "design_key": "k2", "designer": "openai:a", "blueprint": "two"},
            {"id": "3", "design_key": "k3", "designer": "openai:a", "blueprint": None},
        ],
    )
    write(
        tmp_path,
        "20250202T000000Z-bbbbbb",
        [
            {"id": "1", "design_key": "k1", "designer": "openai:b", "blueprint": "new one"},
            {"id": "4", "design_key": "k4", "designer": "openai:b", "blueprint": "  "},
        ],
    )
    cache = read_cached_blueprints(str(tmp_path))
    assert cache == {
        "k1": CachedBlueprint("new one", "openai:b", "20250202T000000Z-bbbbbb"),
        "k2": CachedBlueprint("two", "openai:a", "20250101T000000Z-aaaaaa"),
    }
    assert set(read_cached_blueprints(str(tmp_path), design_keys=["k2", "k9"])) == {"k2"}


def test_no_table_is_an_empty_cache_and_a_bad_table_is_an_error(tmp_path):
    assert read_cached_blueprints(str(tmp_path / "nothing-here")) == {}
    write(tmp_path, "r1", [{"id": "1", "blueprint": "x"}])
    with pytest.raises(ValueError, match="lacks column"):
        read_cached_blueprints(str(tmp_path))
