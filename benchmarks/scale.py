"""Does a run's memory grow with its manifest? Peak RSS of `dimflow run` at N and 10·N rows.

Generates its own jobs in a temporary folder: a few distinct 1-megapixel JPEG sources (~0.9 MB each)
shared by many rows, the tiny painter at 1 step and 32 px (so painting costs little and memory is what
the pipeline holds), designer `none`. Runs each job as a subprocess (`python -m pipeline.cli run`) and
reads the child's peak RSS from ``os.wait4``:

- the full job (`stage: all`) at N and 10·N rows;
- the design stage alone (`stage: design`, 256² PNG sources) at D and 10·D rows, whose rows per second
  come from the run record's pipeline time.

    .venv/bin/python benchmarks/scale.py                  # N=300, D=20,000 (about 8 minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py --rows 120 --design-rows 2000   # quicker
    .venv/bin/python benchmarks/scale.py --validate-rows 100000          # also validate at 10^5 and 10^6 rows

Last line: ``RESULT mem_ratio_paint=<peak(10N)/peak(N)> mem_ratio_design=<peak(10D)/peak(D)>
rows_per_s_design=<at 10·D>``; memory that does not grow with the manifest gives ratios near 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DISTINCT_SOURCES = 4


def _jpeg_1mp(seed: int) -> bytes:
    """A 1-megapixel JPEG of smooth noise (~0.9 MB at quality 95, like a detailed product photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (125, 125, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((1000, 1000), Image.BILINEAR)
    noise = rng.integers(-40, 40, (1000, 1000, 3))
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _png_256(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (seed * 60 % 256, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_job(folder: Path, rows: int, stage: str) -> Path:
    """A manifest of ``rows`` rows over a few distinct sources, and its job spec; returns the spec."""
    folder.mkdir(parents=True)
    names = []
    for index in range(DISTINCT_SOURCES):
        name = f"src-{index}.jpg" if stage == "all" else f"src-{index}.png"
        (folder / name).write_bytes(_jpeg_1mp(index) if stage == "all" else _png_256(index))
        names.append(name)
    with open(folder / "manifest.jsonl", "w", encoding="utf-8") as handle:
        for i in range(rows):
            row = {
                "id": f"sku-{i:08d}",
                "source": names[i % len(names)],
                "instruction": f"make the background white and add a soft shadow, variant {i % 97}",
                "seed": i,
            }
            handle.write(json.dumps(row) + "\n")
    spec = {
        "name": f"scale-{stage}",
        "manifest": "manifest.jsonl",
        "output": "out",
        "stage": stage,
        "designer": {"kind": "none"},
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32, "batch_size": 8},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    return folder / "job.yaml"


def dimflow(*args: str) -> tuple[int, str, float, float]:
    """Run `dimflow ARGS` in a child process: (exit code, stderr, its peak RSS in GB, wall seconds)."""
    argv = [sys.executable, "-m", "pipeline.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert process.stderr is not None
    err = process.stderr.read().decode("utf-8", "replace")
    _pid, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss / 1024**2, time.monotonic() - started


def run(spec: Path, extra: list[str]) -> dict:
    """Run the job in a child process; its peak RSS (GB), wall time and the run record."""
    code, err, peak, wall = dimflow("run", str(spec), "--no-progress", *extra)
    if code != 0:
        raise SystemExit(f"{spec}: exit {code}\n{err[-3000:]}")
    (record_path,) = (spec.parent / "out" / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    return {"peak_gb": peak, "wall_s": wall, "record": record}


def measure(root: Path, name: str, rows: int, stage: str, extra: list[str]) -> dict:
    spec = write_job(root / name, rows, stage)
    result = run(spec, extra)
    counts = result["record"]["counts"]
    print(
        f"{name:>12}: {rows:>7,} rows ({counts}), peak RSS {result['peak_gb']:.2f} GB, "
        f"wall {result['wall_s']:.1f} s, pipeline {result['record']['elapsed_s']:.1f} s",
        flush=True,
    )
    return result


def measure_validate(root: Path, rows: int) -> float:
    """Peak RSS (GB) of `dimflow validate` over a manifest of ``rows`` rows (every id unique but one)."""
    folder = root / f"validate-{rows}"
    folder.mkdir(parents=True)
    with open(folder / "manifest.jsonl", "w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(
                json.dumps({"id": f"sku-{i:09d}", "instruction": "make the background white"}) + "\n"
            )
        handle.write(
            json.dumps({"id": "sku-000000000", "instruction": "a duplicate of the first row"}) + "\n"
        )
    code, err, peak, wall = dimflow("validate", str(folder / "manifest.jsonl"), "--show", "5")
    if code != 2 or "1 with problems" not in err:  # exactly the duplicate, found
        raise SystemExit(f"validate of {rows} rows: unexpected outcome\n{err[-2000:]}")
    print(f"validate-{rows}: peak RSS {peak:.2f} GB, wall {wall:.1f} s", flush=True)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300, help="N: the full job runs at N and 10·N rows")
    parser.add_argument("--design-rows", type=int, default=20_000, help="D: design stage at D and 10·D rows")
    parser.add_argument(
        "--validate-rows",
        type=int,
        default=0,
        help="V: also `dimflow validate` at V and 10·V rows (duplicate-id detection's memory); 0: skip",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated jobs (printed path)")
    parser.add_argument("beam_args", nargs="*", help="extra arguments for `dimflow run` (after --)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dimflow-scale-"))
    try:
        paint = [measure(root, f"all-{n}", n, "all", args.beam_args) for n in (args.rows, 10 * args.rows)]
        design = [
            measure(root, f"design-{n}", n, "design", args.beam_args)
            for n in (args.design_rows, 10 * args.design_rows)
        ]
        validate = (
            [measure_validate(root, n) for n in (args.validate_rows, 10 * args.validate_rows)]
            if args.validate_rows
            else []
        )
    finally:
        if args.keep:
            print(f"jobs kept in {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    mem_paint = paint[1]["peak_gb"] / paint[0]["peak_gb"]
    mem_design = design[1]["peak_gb"] / design[0]["peak_gb"]
    rows_per_s = 10 * args.design_rows / design[1]["record"]["elapsed_s"]
    validated = f" mem_ratio_validate={validate[1] / validate[0]:.2f}" if validate else ""
    print(
        f"RESULT mem_ratio_paint={mem_paint:.2f} mem_ratio_design={mem_design:.2f} "
        f"rows_per_s_design={rows_per_s:.0f} peak_gb_paint={paint[1]['peak_gb']:.2f} "
        f"peak_gb_design={design[1]['peak_gb']:.2f}{validated}"
    )


if __name__ == "__main__":
    main()
