"""Sharding: each manifest row belongs to exactly one shard, and shard processes together cover the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run import read_provenance
from tests.e2e_support import check_statuses, local_case
from transforms.manifest import RawRow
from transforms.records import RowRef
from transforms.shards import Shard, shard_from_env, shard_key

REPO = Path(__file__).resolve().parents[1]


def raw(data: dict | None, index: int = 1) -> RawRow:
    return RawRow(RowRef("m.jsonl", index), data, None if data is not None else "not JSON", "")


def test_every_row_has_exactly_one_owner():
    rows = [raw({"id": f"sku-{i}"}, i) for i in range(300)] + [raw(None, 301), raw({"key": 7}, 302)]
    owners = [[s for s in range(4) if Shard(s, 4).owns(r)] for r in rows]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [s] for o in owners) for s in range(4)]
    assert min(sizes) > 50  # a hash, not a single bucket


def test_shard_key_follows_the_id_and_its_alias():
    assert shard_key(raw({"id": "a"})) == shard_key(raw({"key": "a"}, 9)) == "id:a"
    assert shard_key(raw({"id": 5})) == "id:5"  # validation accepts integer ids as their text
    assert shard_key(raw({"id": "  "}, 3)) == "ref:m.jsonl:3"  # blank id: placed by position
    assert shard_key(raw(None, 4)) == "ref:m.jsonl:4"


def test_shard_from_flags_and_env(monkeypatch):
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("DIMFLOW_NUM_SHARDS", raising=False)
    assert shard_from_env(None, None) is None
    assert shard_from_env(1, 3) == Shard(1, 3)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("DIMFLOW_NUM_SHARDS", "5")
    assert shard_from_env(None, None) == Shard(2, 5)
    assert shard_from_env(0, None) == Shard(0, 5)  # a flag wins over the environment
    monkeypatch.delenv("DIMFLOW_NUM_SHARDS")
    with pytest.raises(ValueError, match="shard count"):
        shard_from_env(None, None)
    with pytest.raises(ValueError, match=r"shard index must be in \[0, 3\)"):
        shard_from_env(3, 3)


@pytest.mark.slow
def test_three_shard_processes_cover_the_manifest_once(tmp_path):
    case = local_case(tmp_path)
    run_id = "sharded-test-run"
    env = {**os.environ, "DIMFLOW_RUN_ID": run_id, "DIMFLOW_NUM_SHARDS": "3"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(case.spec_path), "--no-progress"],
            cwd=REPO,
            env={**env, "JOB_COMPLETION_INDEX": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for index in range(3)
    ]
    logs = [p.communicate(timeout=300)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(logs)
    table = read_provenance(case.output, run_id)
    check_statuses(table)  # every manifest row exactly once, with the unsharded run's outcomes
    parts = sorted(p.name for p in (Path(case.output) / "provenance" / f"run={run_id}").iterdir())
    assert {name.split("-of-00003")[0] for name in parts} == {f"part-shard-0000{i}" for i in range(3)}
    records = sorted(p.name for p in (Path(case.output) / "runs").iterdir())
    assert records == [f"{run_id}.shard-0000{i}-of-00003.json" for i in range(3)]
    counts = [json.loads((Path(case.output) / "runs" / name).read_text())["counts"] for name in records]
    assert {k: sum(c[k] for c in counts) for k in ("ok", "failed")} == {"ok": 6, "failed": 7}
    assert all(c["ok"] + c["failed"] > 0 for c in counts)  # each shard had rows of its own
