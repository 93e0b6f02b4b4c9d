"""The GPU benchmark behind ``benchmarks/gpu.sh``: every figure the painter's GPU questions need, in one run.

On CUDA (the default preset ``full``): DIM-4.6B's real architecture with random weights, built on the GPU
in a child process and written once in the released layout (``model.safetensors`` ~11.5 GB in bf16, plus
``dimflow.json`` and ``processor/``) under $DIMFLOW_CACHE, so that the model load time is the production
loader's (``load_dim_painter``: sha256 of the file, read, cast, place; the file was just written, so it
is read from the page cache on a first run). The tokenizer is the tiny preset's byte-level BPE (no
download), so prompts tokenize into more tokens than Qwen's would; the embedding keeps Qwen's real
vocabulary size, so the parameter count is DIM-4.6B's. Then, for 1024² edits, 30 steps, CFG 7.5:

- production (``DimPainter.paint``) at batch 1, 4 and 8: edits/hour and the peak GPU memory (the CUDA
  allocator's peak, weights included; the reference is not loaded yet), each batch size after an untimed
  warm-up at the same shapes (2 steps);
- the reference loop (``tests/painter/reference.py``: batch 1, DIM's semantics, no batching or K/V reuse)
  at batch 1, loaded afterwards; its VAE runs in the painter dtype, production's as ``--vae-dtype`` says
  (default ``auto``: as DIM, float32 compute);
- ratios production ÷ reference (at batch 1, and the best batch), and the best edits/hour as a fraction of
  DESIGN.md's estimate of ~5,900 edits per H100-hour (45% of bf16 peak; on another GPU it is a reference
  point, not a target).

The last line is ``RESULT edits_per_hour=<best batch> ratio=<best ÷ reference at batch 1> batch=<best
batch> peak_mem_gb=<at the best batch>``. A time budget (``--budget-s``, default 480 s, counted from
``gpu.sh``'s start when it sets DIMFLOW_BENCH_STARTED) is checked before each measurement: one that would
not fit is skipped with a line saying so, and RESULT reports what was measured.

``--device cpu`` is the dry mode (``make test`` runs it, tests/test_benchmarks.py): the tiny preset at
64², 2 steps, the same code path; its memory figure is the process's peak RSS.

    benchmarks/gpu.sh                                  # CUDA, full size (installs what it needs first)
    benchmarks/gpu.sh --compile max-autotune           # the same with the DiT compiled
    .venv/bin/python benchmarks/gpu.py --device cpu    # the dry mode
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.painter import GUIDANCE, bench_override, build_once, prompt, source_image  # noqa: E402
from transforms.painter.base import PaintParams, PaintRequest  # noqa: E402
from transforms.painter.dim import checkpoint as ckpt  # noqa: E402
from transforms.painter.dim.config import ARCH_FORMAT, FULL_ARCH, resolve_arch  # noqa: E402

SUITE_VERSION = 1  # bump when the built checkpoint changes: the cache folder name carries it
TASK = "edit"
ESTIMATE_EDITS_PER_H100_HOUR = 5900  # DESIGN.md, "Performance targets"
PRESETS = {
    # resolution, steps, timed edits per batch size (at least), reference edits
    "full": {"resolution": 1024, "steps": 30, "min_edits": 4, "reference_edits": 2},
    "tiny": {"resolution": 64, "steps": 2, "min_edits": 2, "reference_edits": 1},
}
WARMUP_STEPS = 2  # warm-ups run the timed shapes; the step count does not change a kernel's shape


# ---------------------------------------------------------------------------------------------- checkpoint


def arch_override(preset: str, tokenizer) -> dict[str, Any]:
    """``full``: DIM-4.6B's real architecture (the tiny tokenizer's token ids, Qwen's vocabulary size);
    ``tiny``: the tiny preset's."""
    from transforms.painter.dim.tiny import tiny_arch_override

    if preset == "tiny":
        return tiny_arch_override(tokenizer)
    override = bench_override(tokenizer, None, None)
    override["encoder"]["text_config"]["vocab_size"] = FULL_ARCH["encoder"]["text_config"]["vocab_size"]
    return override


def build_checkpoint(folder: Path, preset: str, device: str, weight_dtype: str) -> None:
    """Random weights for ``preset`` initialised on ``device``, written in the released layout."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from transforms.painter.dim.tiny import PROCESSOR_DIR, TINY_SEED, build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(folder / PROCESSOR_DIR))
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 12845056}).save_pretrained(
        str(folder / PROCESSOR_DIR)
    )
    override = arch_override(preset, tokenizer)
    arch = resolve_arch(TASK, override)
    torch.manual_seed(TINY_SEED)
    with torch.device(device):
        components = ckpt.build_components(arch)
    dtype = getattr(torch, weight_dtype)
    state = {k: v.to(dtype) for k, v in ckpt.components_state(components, arch).items()}
    del components
    ckpt.save_released(state, folder / ckpt.MODEL_FILE)
    meta = {
        "format": ARCH_FORMAT,
        "task": TASK,
        "preset": f"gpu-{preset}",
        "weights": "random",
        "arch": override,
    }
    (folder / ckpt.ARCH_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_checkpoint(preset: str, device: torch.device, cache_dir: str | None) -> tuple[Path, float | None]:
    """The cached checkpoint folder (built in a child process, so its memory is not this process's)."""
    weight_dtype = "bfloat16" if preset == "full" else "float32"
    key = json.dumps([SUITE_VERSION, preset, weight_dtype])
    root = Path(cache_dir).expanduser() if cache_dir else ckpt.default_cache_dir()
    folder = root / f"gpu-bench-{preset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    command = [
        sys.executable,
        __file__,
        "--preset",
        preset,
        "--device",
        str(device),
        "--weights",
        weight_dtype,
    ]
    return build_once(folder, command)


# ---------------------------------------------------------------------------------------------- measuring


class Clock:
    """Seconds left of the run's budget, counted from DIMFLOW_BENCH_STARTED (gpu.sh's start) or now."""

    def __init__(self, budget_s: float):
        started = os.environ.get("DIMFLOW_BENCH_STARTED")
        self.start = float(started) if started else time.time()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.time() - self.start

    def fits(self, seconds: float) -> bool:
        return self.elapsed() + seconds <= self.budget_s


class Memory:
    """CUDA: the allocator's peak since ``reset``; CPU: the process's peak RSS (it never goes down)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.label = "peak GPU memory (allocator, GB)" if self.cuda else "peak RSS (whole process, GB)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def requests(count: int, offset: int = 0) -> list[PaintRequest]:
    """Distinct rows: different prompts (lengths), seeds and sources."""
    return [
        PaintRequest(key=f"row{i}", prompt=prompt(i), seed=100 + i, source=source_image(i))
        for i in range(offset, offset + count)
    ]


def condition_tokens(painter, request: PaintRequest) -> int:
    """Tokens of the row's condition (the user turn), before the DiT's cut to the null condition's length."""
    inputs = painter.encoder.inputs(request.prompt, Image.open(io.BytesIO(request.source)))
    begin, end = painter.encoder.user_span(inputs["input_ids"][0])
    return end - begin


def measure_production(painter, batch: int, params: PaintParams, min_edits: int, memory: Memory) -> dict:
    """Untimed warm-up at the batch's shapes, then ``ceil(min_edits / batch)`` timed batches."""
    warm = PaintParams(steps=WARMUP_STEPS, guidance_scale=params.guidance_scale, resolution=params.resolution)
    painter.paint(requests(batch, offset=1000), warm)
    rounds = math.ceil(min_edits / batch)
    rows = requests(batch * rounds)
    memory.reset()
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        painter.paint(rows[start : start + batch], params)
    memory.sync()
    seconds = time.perf_counter() - started
    return {
        "edits": len(rows),
        "seconds": seconds,
        "edits_per_hour": 3600 * len(rows) / seconds,
        "peak_gb": memory.peak_gb(),
    }


def measure_reference(reference, params: PaintParams, edits: int, memory: Memory) -> dict:
    """The reference loop at batch 1 (one row from bytes to pixels at a time), after a 2-step warm-up."""

    def render(request: PaintRequest, steps: int) -> None:
        reference.render(
            request.prompt,
            Image.open(io.BytesIO(request.source)),
            request.seed,
            steps=steps,
            guidance_scale=params.guidance_scale,
            resolution=params.resolution,
        )

    render(requests(1, offset=1000)[0], WARMUP_STEPS)
    memory.sync()
    started = time.perf_counter()
    for request in requests(edits):
        render(request, params.steps)
    memory.sync()
    seconds = time.perf_counter() - started
    return {"edits": edits, "seconds": seconds, "edits_per_hour": 3600 * edits / seconds}


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the dry mode)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="default: full on CUDA, tiny on CPU"
    )
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--vae-dtype", default="auto", choices=["auto", "same"], help="painter.vae_dtype")
    parser.add_argument("--compile", default="false", choices=["false", "default", "max-autotune"])
    parser.add_argument("--batches", default="1,4,8", help="production batch sizes (comma-separated)")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--min-edits", type=int, default=None, help="timed edits per batch size (at least)")
    parser.add_argument("--reference-edits", type=int, default=None, help="timed reference edits")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip measurements that would not fit")
    parser.add_argument(
        "--cache-dir", default=None, help="where the checkpoint is built (default $DIMFLOW_CACHE)"
    )
    parser.add_argument("--build-into", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batches.split(",")})
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batches must be integers >= 1, got {args.batches!r}")
    if args.preset is None:
        args.preset = "tiny" if args.device == "cpu" else "full"
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the reference's multistep solver)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build_into:
        build_checkpoint(Path(args.build_into), args.preset, args.device, args.weights)
        return 0

    from tests.painter.reference import load_reference
    from transforms.painter.dim.pipeline import load_dim_painter
    from transforms.painter.handler import resolve_device, resolve_dtype

    clock = Clock(args.budget_s)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    memory = Memory(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    params = PaintParams(steps=args.steps, guidance_scale=GUIDANCE, resolution=args.resolution)
    print("== dimflow GPU benchmark: production DimPainter vs the reference loop ==")
    print(
        f"device: {name}; torch {torch.__version__}; preset {args.preset}; dtype {str(dtype).removeprefix('torch.')}; "
        f"vae_dtype {args.vae_dtype}; compile {args.compile}; {args.resolution}² edits, {args.steps} steps, "
        f"CFG {GUIDANCE}; budget {args.budget_s:.0f} s (elapsed so far {clock.elapsed():.0f} s)",
        flush=True,
    )

    folder, build_s = ensure_checkpoint(args.preset, device, args.cache_dir)
    size_gb = (folder / ckpt.MODEL_FILE).stat().st_size / 1e9
    built = "cached from an earlier run" if build_s is None else f"built and written in {build_s:.1f} s"
    print(f"checkpoint: {folder} ({size_gb:.2f} GB, random weights, released layout; {built})", flush=True)

    memory.reset()
    started = time.perf_counter()
    compile_setting: str | bool = False if args.compile == "false" else args.compile
    painter = load_dim_painter(
        str(folder), TASK, dtype=dtype, device=device, compile=compile_setting, vae_dtype=args.vae_dtype
    )
    memory.sync()
    load_s = time.perf_counter() - started
    parameters = sum(
        p.numel()
        for m in ("encoder", "projector", "dit", "vae")
        for p in getattr(painter.modules, m).parameters()
    )
    print(
        f"model load time: {load_s:.1f} s (load_dim_painter: sha256, read, cast, place; {parameters:,} parameters)"
    )
    tokens = [condition_tokens(painter, r) for r in requests(max(args.batch_sizes))]
    side = args.resolution // painter.arch.vae_grid
    print(
        f"tokens: latent {side}x{side} = {side * side}; condition per row {min(tokens)}-{max(tokens)} "
        f"(image tokens at encoder image size {painter.arch.encoder_image_size}, vision markers, the prompt in "
        f"the tiny BPE; the DiT keeps the last {painter.arch.max_condition_length})",
        flush=True,
    )

    results: dict[int, dict] = {}
    per_edit_s: float | None = None
    for batch in args.batch_sizes:
        rounds = math.ceil(args.min_edits / batch)
        if per_edit_s is not None:
            # warm-up (2 steps) + timed rounds, from the last measured seconds per edit; 1.5x for safety
            projected = 1.5 * per_edit_s * batch * (rounds + WARMUP_STEPS / args.steps)
            if not clock.fits(projected):
                print(
                    f"batch {batch}: skipped, about {projected:.0f} s would overrun the time budget",
                    flush=True,
                )
                continue
        result = measure_production(painter, batch, params, args.min_edits, memory)
        per_edit_s = result["seconds"] / result["edits"]
        results[batch] = result
        print(
            f"production batch {batch}: {result['edits_per_hour']:.1f} edits/hour ({result['edits']} edits in "
            f"{result['seconds']:.1f} s); {memory.label}: {result['peak_gb']:.2f}",
            flush=True,
        )
    if not results:
        print("no production figure measured: nothing to report", flush=True)
        return 1

    reference_result = None
    projected = 3 * (per_edit_s or 0.0) * args.reference_edits + load_s
    if clock.fits(projected):
        started = time.perf_counter()
        reference = load_reference(folder, TASK, device=str(device), dtype=dtype)
        memory.sync()
        print(
            f"reference load time: {time.perf_counter() - started:.1f} s (tests/painter/reference.py)",
            flush=True,
        )
        reference_result = measure_reference(reference, params, args.reference_edits, memory)
        print(
            f"reference batch 1: {reference_result['edits_per_hour']:.1f} edits/hour ({reference_result['edits']} "
            f"edits in {reference_result['seconds']:.1f} s)",
            flush=True,
        )
    else:
        print(f"reference: skipped, about {projected:.0f} s would overrun the time budget", flush=True)

    best = max(results, key=lambda b: results[b]["edits_per_hour"])
    best_rate = results[best]["edits_per_hour"]
    ratio = float("nan")
    if reference_result is not None:
        ratio = best_rate / reference_result["edits_per_hour"]
        if 1 in results:
            print(
                "ratio production ÷ reference at batch 1: "
                f"{results[1]['edits_per_hour'] / reference_result['edits_per_hour']:.2f}"
            )
        print(f"ratio production (best, batch {best}) ÷ reference at batch 1: {ratio:.2f}")
    fraction = best_rate / ESTIMATE_EDITS_PER_H100_HOUR
    print(
        f"fraction of the ~{ESTIMATE_EDITS_PER_H100_HOUR:,} edits/H100-hour estimate (DESIGN.md): {fraction:.3f} "
        f"(best: batch {best}, on {name})"
    )
    print(f"total time: {clock.elapsed():.0f} s of the {args.budget_s:.0f} s budget")
    print(
        f"RESULT edits_per_hour={best_rate:.1f} ratio={ratio:.2f} batch={best} "
        f"peak_mem_gb={results[best]['peak_gb']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
