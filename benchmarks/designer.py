"""Designer throughput under a rate limit: dimflow's Beam design stage vs a sequential client.

A fake OpenAI-compatible server on loopback (tests/fakes/openai_server.py) answers after ``--latency``
seconds and enforces ``--limit`` requests per minute (fixed 60 s windows, 429 beyond). dimflow's design
stage (``DesignRecords`` with the ``openai`` provider, run by Beam's FnApiRunner, one worker) designs
``limit * duration / 60`` rows; the server's arrival times give the achieved request rate, reported as a
fraction of the limit (goal >= 0.95) with the number of 429s received (goal 0). The baseline is a plain
loop making one call at a time, as the DIM reference does. Default arguments finish in about 2 minutes.

    python benchmarks/designer.py [--limit 600] [--latency 1.0] [--duration 90] [--baseline-duration 20]

The last line is ``RESULT rpm_ratio=<achieved/limit> throttled=<429 count> baseline_rpm=<...>``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import apache_beam as beam  # noqa: E402
import openai  # noqa: E402
from apache_beam.metrics.metric import Metrics, MetricsFilter  # noqa: E402
from PIL import Image  # noqa: E402

from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from transforms.designer.prompt import build_prompt  # noqa: E402
from transforms.designer.registry import make_provider  # noqa: E402
from transforms.designer.stage import DesignRecords  # noqa: E402
from transforms.records import EditRecord, ManifestRow, RowRef  # noqa: E402
from transforms.reread import SourceLimits  # noqa: E402

KEY_ENV = "DIMFLOW_BENCH_DESIGNER_KEY"
FAKE_KEY = "sk-bench-not-a-real-key"


def source_image() -> bytes:
    image = Image.new("RGB", (640, 480), (90, 140, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def run_stage(server: FakeOpenAI, args: argparse.Namespace, rows: int, workdir: str) -> tuple[int, float]:
    """Design ``rows`` rows through the Beam stage; returns (ok rows, end-to-end seconds)."""
    config = {
        "kind": "openai",
        "model": "gpt-bench",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "requests_per_minute": args.limit,
        "tokens_per_minute": 1e9,
        "max_concurrency": args.max_concurrency,
        "timeout_s": 30,
        "max_attempts": 5,
        "workers": 1,
    }
    # Records carry the source's path and sha256, not its bytes: the stage reads the file again per row.
    image = source_image()
    source = Path(workdir) / "source.jpg"
    source.write_bytes(image)
    records = [
        EditRecord(
            ManifestRow(f"row{i}", f"make object {i} blue", str(source), None, None, RowRef("bench", i + 1)),
            source_sha256=hashlib.sha256(image).hexdigest(),
            source_size=len(image),
        )
        for i in range(rows)
    ]
    started = time.monotonic()
    pipeline = beam.Pipeline(runner="FnApiRunner")
    out = (
        pipeline
        | beam.Create(records)
        | DesignRecords(
            lambda: make_provider(config),
            lambda r: r.id,
            max_batch_size=args.max_concurrency,
            source_limits=SourceLimits(max_image_bytes=len(image)),
        )
    )
    _ = out.designed | "CountOk" >> beam.Map(lambda r: Metrics.counter("bench", "ok").inc())
    _ = out.failed | "LogFailed" >> beam.Map(lambda f: logging.warning("failed row %s: %s", f.id, f.error))
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.monotonic() - started
    counters = result.metrics().query(MetricsFilter().with_name("ok"))["counters"]
    return sum(c.committed or 0 for c in counters), elapsed


def run_baseline(server: FakeOpenAI, seconds: float) -> tuple[int, float]:
    """One call at a time for ``seconds``; returns (replies, elapsed seconds)."""
    client = openai.OpenAI(base_url=server.base_url, api_key=FAKE_KEY, timeout=30, max_retries=0)
    text = build_prompt("make the object blue", has_image=False)
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        client.chat.completions.create(
            model="gpt-bench",
            messages=[{"role": "user", "content": text}],
            temperature=0,
            seed=0,
            max_tokens=1024,
        )
        done += 1
    return done, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=600.0, help="server limit, requests per minute")
    parser.add_argument("--latency", type=float, default=1.0, help="server reply latency, seconds")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of traffic for dimflow")
    parser.add_argument("--baseline-duration", type=float, default=20.0)
    parser.add_argument("--max-concurrency", type=int, default=0, help="0: twice the requests in flight")
    args = parser.parse_args()
    if args.max_concurrency <= 0:
        args.max_concurrency = max(8, math.ceil(2 * args.limit / 60 * args.latency))
    logging.basicConfig(level=logging.WARNING)
    os.environ[KEY_ENV] = FAKE_KEY
    rows = math.ceil(args.limit * args.duration / 60)

    with FakeOpenAI(
        limit=int(args.limit), window_s=60.0, latency_s=args.latency, expected_key=FAKE_KEY
    ) as server:
        print(
            f"fake server: limit {args.limit:g} requests/min (fixed 60 s windows), latency {args.latency:g} s"
        )
        with tempfile.TemporaryDirectory(prefix="dimflow-bench-designer-") as workdir:
            ok, wall = run_stage(server, args, rows, workdir)
        arrivals = sorted(r.t for r in server.requests if r.status == 200)
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        rpm = (len(arrivals) - 1) / span * 60 if len(arrivals) > 1 else 0.0
        throttled = server.status_counts.get(429, 0)
        print(
            f"dimflow design stage (FnApiRunner, 1 worker, max_concurrency {args.max_concurrency}, batch "
            f"{args.max_concurrency}): {ok}/{rows} rows ok in {wall:.1f} s end to end "
            f"({ok / wall * 60:.1f} rows/min incl. pipeline start-up)"
        )
        print(
            f"  at the server: {len(arrivals)} requests in {span:.1f} s = {rpm:.1f}/min = {rpm / args.limit:.3f} "
            f"of the limit; 429s: {throttled}; busiest window: {max(server.window_counts.values())}"
        )

    with FakeOpenAI(latency_s=args.latency) as server:
        done, elapsed = run_baseline(server, args.baseline_duration)
        baseline = done / elapsed * 60
        print(f"sequential client: {done} requests in {elapsed:.1f} s = {baseline:.1f}/min")

    print(f"RESULT rpm_ratio={rpm / args.limit:.3f} throttled={throttled} baseline_rpm={baseline:.1f}")


if __name__ == "__main__":
    main()
