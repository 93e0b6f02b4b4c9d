"""`dimflow eval` on both benchmark layouts with a fake judge, and the cost model of best-of-N.

The fake OpenAI-compatible server (tests/fakes/openai_server.py, loopback) plays the ``openai`` judge: each
paint k of each row gets the verdict ``scores(instruction, k)``, three criteria 3-10 from a sha256 of the
row's instruction and k, so the scores are the same in every run and some paints fall below the bar
(``quality.min_overall`` ``--bar``). The tiny painters (random weights, toy size) paint the rows of the
fixtures in tests/fixtures/bench (ImgEdit-Bench Basic's layout and GEdit-Bench's; their images are drawn by
make_fixtures.py into a scratch folder). Each layout is evaluated by `dimflow eval` (in process, as users run
it) with ``quality.max_paints`` 1 and then 3, and each eval table is printed as the command prints it.

The cost model is measured on the same rows: judge calls per row (the fake server's request count over the
rows), paints per row (provenance ``paints``) and the share of rows ``rejected``, for ``max_paints`` 1 vs 3,
next to what the model predicts from the verdicts' pass rate p: with N paints at most a row takes
1 + (1-p) + ... + (1-p)^(N-1) paints (one judge call each, no retries here) and (1-p)^N of the rows end
``rejected``.

    python benchmarks/eval_fake.py [--bar 0.5] [--layout both|imgedit|gedit]

Both layouts (15 rows, four eval runs) take 40-80 s on two shared CPU cores.

The last line is ``RESULT judge_calls_per_row_p1=... paints_per_row_p1=... judge_calls_per_row_p3=...
paints_per_row_p3=... rejected_share_p1=... rejected_share_p3=...``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline.run import read_provenance  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from tests.fixtures.bench import make_fixtures  # noqa: E402
from transforms.judge.scores import CRITERIA, overall  # noqa: E402

KEY_ENV = "DIMFLOW_BENCH_JUDGE_KEY"
FAKE_KEY = "bench-judge-not-a-real-key-7Q2m"
PAINTS = (1, 3)
LAYOUTS = {"imgedit": "imgedit/singleturn.json", "gedit": "gedit/gedit_en.jsonl"}


def scores(instruction: str, paint: int) -> dict[str, int]:
    """The verdict of paint ``paint`` of the row with ``instruction``: each criterion 3-10, from a hash (about
    two thirds of the fixtures' paints reach a bar of 0.5)."""
    digest = hashlib.sha256(f"dimflow-eval-fake:{instruction}:{paint}".encode()).digest()
    return {name: 3 + digest[i] % 8 for i, name in enumerate(CRITERIA)}


def instructions(bench: Path, layout: str) -> list[str]:
    """The rows' instructions, read from the fixture (its own field names)."""
    path = bench / LAYOUTS[layout]
    if layout == "imgedit":
        return [row["prompt"] for row in json.loads(path.read_text(encoding="utf-8")).values()]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines if line.strip()]


def script(server: FakeOpenAI, texts: list[str], max_paints: int) -> None:
    """Every paint's verdict, by instruction (the marker the server finds in the judge's prompt)."""
    for text in texts:
        others = [other for other in texts if other != text and text in other]
        if others:
            raise SystemExit(f"instruction {text!r} is part of {others[0]!r}: it cannot mark its row alone")
        replies = []
        for paint in range(1, max_paints + 1):
            verdict = {**scores(text, paint), "reason": f"scripted paint {paint}"}
            replies.append("reply:" + json.dumps(verdict))
        server.script(text, replies)


def write_spec(folder: Path) -> Path:
    spec = {
        "name": "eval-fake",
        "manifest": "unused.jsonl",  # dimflow eval replaces it with the benchmark
        "output": str(folder / "out"),
        "painter": {
            "checkpoint": "tiny",
            "steps": 1,
            "resolution": 32,
            "batch_size": 4,
            "device": "cpu",
        },
        "judge": {
            "kind": "openai",
            "model": "fake-judge",
            "base_url": "http://127.0.0.1:9/v1",  # replaced by each run's server (--set)
            "api_key_env": KEY_ENV,
            "requests_per_minute": 60_000,
            "tokens_per_minute": 1_000_000_000,
            "max_attempts": 2,
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_eval(
    bench: Path, layout: str, spec: Path, max_paints: int, bar: float, output: Path
) -> tuple[str, list[dict], int, float]:
    """One `dimflow eval`: (its printed table, the run's provenance rows, judge requests, seconds)."""
    texts = instructions(bench, layout)
    with FakeOpenAI(expected_key=FAKE_KEY) as server:
        script(server, texts, max_paints)
        args = ["eval", str(bench / LAYOUTS[layout]), "--spec", str(spec), "--output", str(output)]
        args += ["--run-id", f"{layout}-p{max_paints}", "--no-progress"]
        args += ["--set", f"judge.base_url={server.base_url}", "--set", f"quality.min_overall={bar}"]
        args += ["--set", f"quality.max_paints={max_paints}"]
        printed = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stderr(printed):
            code = cli.main(args)
        seconds = time.monotonic() - started
        if code != cli.EXIT_OK:
            raise SystemExit(
                f"dimflow eval {layout} (max_paints {max_paints}) exited {code}:\n{printed.getvalue()}"
            )
        calls = len(server.requests)
    rows = read_provenance(str(output), f"{layout}-p{max_paints}").to_pylist()
    if len(rows) != len(texts):
        raise SystemExit(f"{layout}: {len(rows)} provenance rows for {len(texts)} manifest rows")
    text = printed.getvalue()
    table = text[text.index("eval of ") :] if "eval of " in text else text
    return table.rstrip(), rows, calls, seconds


def pass_rate(texts: list[str], bar: float) -> float:
    """Share of the scripted verdicts (every row, paints 1-3) at or above the bar."""
    verdicts = [overall(scores(t, k), "edit") for t in texts for k in range(1, max(PAINTS) + 1)]
    return sum(v >= bar for v in verdicts) / len(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bar", type=float, default=0.5, help="quality.min_overall (default 0.5)")
    parser.add_argument(
        "--layout", choices=("both", *LAYOUTS), default="both", help="which fixture layout(s) to evaluate"
    )
    args = parser.parse_args()
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    os.environ[KEY_ENV] = FAKE_KEY
    os.environ.setdefault("COLUMNS", "160")
    figures: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="dimflow-bench-eval-") as scratch:
        root = Path(scratch)
        bench = root / "bench"
        make_fixtures.build(bench)
        spec = write_spec(root)
        layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
        texts = [t for layout in layouts for t in instructions(bench, layout)]
        for max_paints in PAINTS:
            calls = seconds = 0.0
            rows: list[dict] = []
            for layout in layouts:
                output = root / f"eval-{layout}-p{max_paints}"
                table, found, n, took = run_eval(bench, layout, spec, max_paints, args.bar, output)
                print(
                    f"== {layout} ({LAYOUTS[layout]}), quality.max_paints {max_paints}, min_overall {args.bar:g}"
                )
                print(table)
                print()
                rows += found
                calls += n
                seconds += took
            figures[max_paints] = {
                "rows": len(rows),
                "calls": calls / len(rows),
                "paints": sum(row["paints"] or 0 for row in rows) / len(rows),
                "rejected": sum(row["status"] == "rejected" for row in rows) / len(rows),
                "seconds": seconds,
            }
    p = pass_rate(texts, args.bar)
    print(
        f"cost model on the same {len(texts)} rows ({', '.join(layouts)}), bar {args.bar:g}; "
        f"scripted verdicts pass at p={p:.2f}"
    )
    for max_paints, found in figures.items():
        fail = 1 - p
        print(
            f"max_paints {max_paints}: {found['calls']:.2f} judge calls/row, {found['paints']:.2f} paints/row, "
            f"{found['rejected']:.0%} rejected, {found['seconds']:.1f} s "
            f"(model: {sum(fail**k for k in range(max_paints)):.2f} paints/row, {fail**max_paints:.0%} rejected)"
        )
    one, three = figures[1], figures[3]
    print(
        f"RESULT judge_calls_per_row_p1={one['calls']:.2f} paints_per_row_p1={one['paints']:.2f} "
        f"judge_calls_per_row_p3={three['calls']:.2f} paints_per_row_p3={three['paints']:.2f} "
        f"rejected_share_p1={one['rejected']:.2f} rejected_share_p3={three['rejected']:.2f}"
    )


if __name__ == "__main__":
    main()
