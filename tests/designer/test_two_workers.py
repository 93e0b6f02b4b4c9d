"""The global limit across processes: two workers with ``workers=2`` shares stay under the limit together.

A negative control runs the same two processes each believing it is alone (``workers=1``): the fake
server then throttles, which shows the test can see a violation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.designer.conftest import FAKE_KEY, KEY_ENV

REPO = Path(__file__).resolve().parents[2]
LIMIT, WINDOW_S = 20, 2.0  # 600 requests/minute, counted per 2 s window


def run_two_workers(server, workers: int, rows: int) -> list[dict]:
    designer = {
        "kind": "openai",
        "model": "gpt-test",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "requests_per_minute": LIMIT * 60 / WINDOW_S,
        "tokens_per_minute": 1e9,
        "max_concurrency": 8,
        "timeout_s": 5,
        "max_attempts": 8,
        "workers": workers,
    }
    start_at = time.time() + 2.5  # both processes import and set up first, then start together
    env = {**os.environ, KEY_ENV: FAKE_KEY, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.designer.rate_worker",
                json.dumps({"designer": designer, "rows": rows, "name": f"w{i}", "start_at": start_at}),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert FAKE_KEY not in out + err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    return summaries


def test_two_workers_share_the_limit(fake_server):
    server = fake_server(limit=LIMIT, window_s=WINDOW_S)
    summaries = run_two_workers(server, workers=2, rows=20)
    assert [s["ok"] for s in summaries] == [20, 20]
    spans = [[r.t for r in server.matching(f"row w{i}-")] for i in range(2)]
    assert max(min(s) for s in spans) < min(max(s) for s in spans)  # they did run at the same time
    assert server.limited == 0, server.window_counts
    busy = [n for n in server.window_counts.values() if n]
    assert max(busy) <= LIMIT
    assert max(busy) >= LIMIT * 0.8  # the shares do add up to (nearly) the whole limit


def test_without_shares_two_workers_overshoot(fake_server):
    server = fake_server(limit=LIMIT, window_s=WINDOW_S)
    summaries = run_two_workers(server, workers=1, rows=24)
    assert server.limited > 0  # the fake noticed: together they asked for twice the limit
    assert [s["ok"] for s in summaries] == [24, 24]  # and Retry-After + retries still got every row through
