"""Duplicate ids over a whole manifest in 16 bytes per row: the first occurrence wins, exactly as one
pipeline decides it, and a hash collision never fails a row."""

from __future__ import annotations

import json

import pytest

from transforms import duplicates
from transforms.duplicates import DuplicateIds
from transforms.manifest import row_outcomes, validate_manifest
from transforms.records import RowRef


def test_only_rows_whose_hash_is_shared_are_looked_at_again():
    found = DuplicateIds()
    for position, row_id in enumerate(["a", "b", "a", "c", "b", "a"]):
        found.add(position, row_id)
    assert found.candidates() == [0, 1, 2, 4, 5]
    refs = [RowRef("m.jsonl", i + 1) for i in range(6)]
    firsts = {p: found.first_of(i, refs[p]) for p, i in [(0, "a"), (1, "b"), (2, "a"), (4, "b"), (5, "a")]}
    assert firsts == {0: None, 1: None, 2: refs[0], 4: refs[1], 5: refs[0]}


def _manifest(tmp_path, ids):
    lines = [json.dumps({"id": i, "instruction": "x"}) for i in ids]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "m.jsonl")


@pytest.mark.parametrize("collide", [False, True])
def test_validate_flags_exactly_the_later_occurrences(tmp_path, monkeypatch, collide):
    if collide:
        monkeypatch.setattr(duplicates, "id_hash", lambda row_id: 7)  # every id shares one hash
    manifest = _manifest(tmp_path, ["a", "b", "a", "c", "b", "a", "d"])
    flagged = {o.ref.index: o.error for o in row_outcomes(manifest) if o.error}
    assert sorted(flagged) == [3, 5, 6]
    assert flagged[3].endswith("duplicate id 'a' (first at " + manifest + " row 1)")
    assert flagged[5].endswith("duplicate id 'b' (first at " + manifest + " row 2)")


def test_validate_keeps_the_first_problems_and_exact_counts(tmp_path):
    manifest = _manifest(tmp_path, ["x"] * 50)
    report = validate_manifest(manifest, max_problems=5)
    assert (report.rows, report.valid, report.failed, report.problem_count) == (50, 1, 49, 49)
    assert [p.ref.index for p in report.problems] == [2, 3, 4, 5, 6]
    assert len(validate_manifest(manifest).problems) == 49
