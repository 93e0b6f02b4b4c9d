"""The cost model of best-of-N: judge calls and paints per row for ``quality.max_paints`` 1 vs 3.

Runs a small job end to end on the embedded runner (tiny painters at toy size, ``--rows`` edit rows) twice,
with ``quality.max_paints`` 1 and then 3 (``quality.min_overall`` 0.5), judged by the scripted in-process
judge of ``tests/quality_support.py``: each paint of each row passes the bar with probability ``--pass-rate``
(decided by a hash of the row id and the paint number, so both runs see the same verdicts). It reads the
provenance the runs wrote and prints judge calls per row (``judge_attempts``: retries included) and paints
per row (``paints``), next to what the model predicts: with pass rate p and N paints at most, a row takes
1 + (1-p) + ... + (1-p)^(N-1) paints (one judge call each, without retries), and (1-p)^N of the rows end
``rejected``.

    python benchmarks/quality.py [--rows 40] [--pass-rate 0.5]

The last line is ``RESULT judge_calls_per_row_p1=... paints_per_row_p1=... judge_calls_per_row_p3=...
paints_per_row_p3=...``. With the real judges (``judge.kind: openai`` against the fake OpenAI server's
scripted replies) the same figures follow from the same provenance columns.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

from pipeline.run import read_provenance, run_job  # noqa: E402
from pipeline.spec import load_spec  # noqa: E402
from tests import quality_support  # noqa: E402

MAX_PAINTS = 8  # quality.max_paints' ceiling: the script covers every paint a row can get


def passes(row_id: str, paint: int, rate: float) -> bool:
    digest = hashlib.sha256(f"{row_id}:{paint}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def run(rows: int, rate: float, max_paints: int, workdir: Path) -> dict[str, float]:
    ids = {f"row-{i:03d}": f"{i}.png" for i in range(rows)}
    script = {
        row_id: [0.9 if passes(row_id, paint, rate) else 0.2 for paint in range(1, MAX_PAINTS + 1)]
        for row_id in ids
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        quality_support.install(monkeypatch, script)
        job = quality_support.write_job(
            workdir, ids, quality={"min_overall": 0.5, "max_paints": max_paints}, painter={"batch_size": 4}
        )
        started = time.monotonic()
        result = run_job(load_spec(job), show_progress=False)
        elapsed = time.monotonic() - started
    table = read_provenance(str(workdir / "out"), result.run_id).to_pylist()
    assert len(table) == rows, f"{len(table)} provenance rows for {rows} manifest rows"
    return {
        "calls": sum(row["judge_attempts"] for row in table) / rows,
        "paints": sum(row["paints"] for row in table) / rows,
        "rejected": sum(row["status"] == "rejected" for row in table) / rows,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--pass-rate", type=float, default=0.5)
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="dimflow-bench-quality-") as scratch:
        for max_paints in (1, 3):
            figures[max_paints] = found = run(
                args.rows, args.pass_rate, max_paints, Path(scratch) / f"p{max_paints}"
            )
            fail = 1 - args.pass_rate
            print(
                f"max_paints {max_paints}: {found['calls']:.2f} judge calls/row, {found['paints']:.2f} paints/row, "
                f"{found['rejected']:.0%} rejected, {found['seconds']:.1f} s "
                f"(model: {sum(fail**k for k in range(max_paints)):.2f} paints/row, {fail**max_paints:.0%} rejected)"
            )
    print(
        f"RESULT judge_calls_per_row_p1={figures[1]['calls']:.2f} paints_per_row_p1={figures[1]['paints']:.2f} "
        f"judge_calls_per_row_p3={figures[3]['calls']:.2f} paints_per_row_p3={figures[3]['paints']:.2f}"
    )


if __name__ == "__main__":
    main()
