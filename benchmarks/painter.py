"""Painter throughput: the production DimPainter vs a plain reference loop of DIM sampling, same inputs.

Both run in this process on a random-weight checkpoint in the released layout (built once with the tiny
preset's machinery, cached under $DIMFLOW_CACHE). The checkpoint keeps DIM-4.6B's real hidden sizes and
the real token counts of a 1024² edit: 1,024 latent tokens (1024² output, f32 VAE) and ~1,400 condition
tokens (1,369 image tokens at encoder image size 1036, plus the prompt). By default it cuts only depth (the
layers of the encoder's language model and vision tower, of the DiT, and of the VAE's stages), the step
count and the vocabulary, so that it runs on a 2-core CPU in under 5 minutes; ``--full`` keeps the real
depths (for a GPU: ``--device cuda --full``, bf16 by default there).

The reference is ``tests/painter/reference.py``: batch 1, the condition zero-padded to 8192 tokens, the y
projection on all of them, padded tokens dropped before cross-attention, cross-attention keys/values
recomputed at every step, stages one after another. The production painter is called through its seam
(``paint``) in batches of ``--batch-size``. Rounds alternate which one goes first; figures are medians.
Stage times: the reference's own ``timings``; for production, wrappers around the encoder (+ projector),
the DiT (condition setup + forwards) and the VAE's encoder/decoder, with CUDA synchronisation around each.
Peak memory: on CUDA each painter's allocator peak less the other painter's resident weights; on CPU the
process's peak RSS (both painters loaded). At reduced depth the fixed per-edit costs (the VAE at full
resolution above all) weigh far more than at full size, so the run also prints a projection of both
painters to the real depths and 30 steps from the measured per-stage costs (see ``project_full``).

    python benchmarks/painter.py                      # CPU, reduced depth, 2 steps: about 3-4 minutes
    python benchmarks/painter.py --device cuda --full --steps 30 --rows 8 --batch-size 8 [--compile]

The last line is ``RESULT ratio=<production÷reference throughput> edits_per_hour=<production>
peak_mem_gb=<production>``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from transforms.painter.base import PaintParams, PaintRequest  # noqa: E402
from transforms.painter.dim import checkpoint as ckpt  # noqa: E402
from transforms.painter.dim.config import ARCH_FORMAT, FULL_ARCH, resolve_arch  # noqa: E402
from transforms.painter.dim.tiny import TINY_VERSION  # noqa: E402

BENCH_VERSION = 1
TASK = "edit"
GUIDANCE = 7.5
# Prompt material for the tiny preset's tokenizer (a byte-level BPE): rows get different lengths.
PROMPT_WORDS = (
    "Edit instruction: replace the red car with a blue bicycle and keep the street unchanged. "
    "Global layout: a kitchen with a wooden table in the center and a lamp on the left. "
    "Local objects: the mug is green, the chair is made of metal, the wall is painted yellow. "
    "Edit area: the upper right corner of the image, where the clock hangs on the wall."
).split()


# ---------------------------------------------------------------------------------------------- checkpoint


def bench_override(tokenizer, depth: int | None, vae_depth: int | None) -> dict[str, Any]:
    """Overrides of FULL_ARCH: the tiny tokenizer's ids and vocabulary; depths cut unless None."""
    from transforms.painter.dim.tiny import PROCESSOR_DIR, SPECIAL_TOKENS

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    vision: dict[str, Any] = {}
    override: dict[str, Any] = {
        "encoder": {
            "text_config": text,
            "vision_config": vision,
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
        },
        "processor": PROCESSOR_DIR,
    }
    if depth is not None:
        text["num_hidden_layers"] = depth
        vision["depth"] = depth
        # The first ``depth`` blocks of the real tower: full attention at 7, 15, 23, 31, windows elsewhere.
        real = FULL_ARCH["encoder"]["vision_config"]["fullatt_block_indexes"]
        vision["fullatt_block_indexes"] = [i for i in real if i < depth]
        override["dit"] = {"num_layers": depth}
    if vae_depth is not None:
        vae = FULL_ARCH["vae"]
        # Stage 0 (128 channels at full resolution) keeps vae_depth - 1 layers, the others vae_depth.
        cut = [
            min(n, vae_depth - (1 if i == 0 else 0)) for i, n in enumerate(vae["encoder_layers_per_block"])
        ]
        cut_dec = [
            min(n, vae_depth - (1 if i == 0 else 0)) for i, n in enumerate(vae["decoder_layers_per_block"])
        ]
        override["vae"] = {"encoder_layers_per_block": cut, "decoder_layers_per_block": cut_dec}
    return override


def build_checkpoint(folder: Path, depth: int | None, vae_depth: int | None, weight_dtype: str) -> None:
    """A random-weight checkpoint in the released layout (model.safetensors, dimflow.json, processor/)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from transforms.painter.dim.tiny import PROCESSOR_DIR, TINY_SEED, build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(str(folder / PROCESSOR_DIR))
    Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 12845056}).save_pretrained(
        str(folder / PROCESSOR_DIR)
    )
    override = bench_override(tokenizer, depth, vae_depth)
    arch = resolve_arch(TASK, override)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(TINY_SEED)
    with torch.device(device):
        components = ckpt.build_components(arch)
    state = ckpt.components_state(components, arch)
    del components
    dtype = getattr(torch, weight_dtype)
    ckpt.save_released({k: v.to(dtype) for k, v in state.items()}, folder / ckpt.MODEL_FILE)
    meta = {"format": ARCH_FORMAT, "task": TASK, "preset": "benchmark", "weights": "random", "arch": override}
    (folder / ckpt.ARCH_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_checkpoint(args: argparse.Namespace) -> tuple[Path, float | None]:
    """The cached checkpoint folder for these depths (built in a child process: its memory is not ours)."""
    depth, vae_depth = (None, None) if args.full else (args.depth, args.vae_depth)
    weight_dtype = "bfloat16" if args.full else "float32"
    key = json.dumps([BENCH_VERSION, TINY_VERSION, depth, vae_depth, weight_dtype])
    root = Path(args.cache_dir).expanduser() if args.cache_dir else ckpt.default_cache_dir()
    folder = root / f"bench-{TASK}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    command = [sys.executable, __file__, "--weights", weight_dtype]
    command += ["--full"] if args.full else ["--depth", str(args.depth), "--vae-depth", str(args.vae_depth)]
    return build_once(folder, command)


def build_once(folder: Path, command: list[str]) -> tuple[Path, float | None]:
    """``folder``, built by ``command --build-into SCRATCH`` (a child process) unless it holds a checkpoint;
    the build's seconds, or None when it was there. Atomic: a scratch folder renamed into place."""
    if (folder / ckpt.MODEL_FILE).is_file():
        return folder, None
    scratch = folder.with_name(folder.name + f".tmp{os.getpid()}")
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    command = [*command, "--build-into", str(scratch)]
    try:
        subprocess.run(command, check=True)
        try:
            os.replace(scratch, folder)
        except OSError:  # another run built it meanwhile: use theirs
            if not (folder / ckpt.MODEL_FILE).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- inputs


def source_image(index: int, size: tuple[int, int] = (1280, 960)) -> bytes:
    """A photo-sized JPEG with structure (gradients and noise), different per row."""
    generator = torch.Generator().manual_seed(1000 + index)
    width, height = size
    ys = torch.linspace(0, 1, height)[:, None, None]
    xs = torch.linspace(0, 1, width)[None, :, None]
    base = torch.tensor([0.2 + 0.1 * index, 0.5, 0.8])[None, None, :]
    array = (
        base * (0.5 + 0.5 * xs) + 0.3 * ys + 0.1 * torch.rand(height, width, 3, generator=generator)
    ).clamp(0, 1)
    out = io.BytesIO()
    Image.fromarray((array * 255).to(torch.uint8).numpy()).save(out, "JPEG", quality=90)
    return out.getvalue()


def prompt(index: int) -> str:
    """Prompts of different lengths (about 40 to 110 words) per row."""
    words = 40 + (index * 37) % 71
    return " ".join(PROMPT_WORDS[(index + i) % len(PROMPT_WORDS)] for i in range(words))


def condition_tokens(painter, text: str, source: Image.Image) -> int:
    """Tokens of the condition (the user turn), cut the way the painter cuts it."""
    begin, end = painter.encoder.user_span(painter.encoder.inputs(text, source)["input_ids"][0])
    return end - begin


# ---------------------------------------------------------------------------------------------- timing


class StageClock:
    """Seconds per stage, from wrappers installed on the production painter's modules."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[stage] += time.perf_counter() - started

        setattr(owner, name, timed)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def take(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def instrument(painter, clock: StageClock) -> None:
    """encoder: Qwen + projector; dit_setup: condition K/V once per call; dit: the steps; vae: encode+decode."""
    modules = painter.modules
    clock.wrap(painter.encoder, "encode_batch", "encoder")
    clock.wrap(modules.projector, "forward", "encoder")
    clock.wrap(modules.dit, "cross_condition", "dit_setup")
    clock.wrap(modules.dit, "forward", "dit")
    clock.wrap(modules.vae.encoder, "forward", "vae")
    clock.wrap(modules.vae.decoder, "forward", "vae")


class Memory:
    """Peak memory: CUDA allocator peaks per segment; on CPU the process's peak RSS (monotonic)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else 0

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_run(run: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


@torch.inference_mode()
def dit_forward_costs(painter, reference, tokens: int, resolution: int, device, repeats: int = 3):
    """Seconds of one DiT forward of each painter at this depth, timed in isolation (interleaved, best of 3):

    ``ref_forward``: the reference's batch-1 forward (y projection on all 8192 tokens, its blocks);
    ``ref_fixed``: the same without its blocks (what it pays per forward whatever the depth);
    ``prod_step``: production's batched [uncond, cond] forward with the condition's K/V precomputed;
    ``prod_setup``: production's once-per-call condition setup (caption projection + every block's K/V).
    """
    from tests.painter import reference as plain

    dit = painter.modules.dit
    dtype = dit.y_embedding.dtype
    side = resolution // painter.arch.vae_grid
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, dit.transformer.config.in_channels, side, side, generator=generator)
    x = x.to(device=device, dtype=dtype)
    condition = (torch.randn(tokens, dit.y_embedding.shape[1], generator=generator) * 0.05).to(device, dtype)
    t = torch.full((1,), 999.0, device=device)
    caption, mask = reference.pad_or_truncate(condition)
    fixed_weights = {k: v for k, v in reference.dit.items() if not k.startswith("blocks.")}
    cross = dit.cross_condition([condition], with_null=True)
    forward = type(dit).forward  # the class's: the compiled step when compiled, without the stage clock
    runs = {
        "ref_forward": lambda: plain.dit_forward(reference.dit, reference.arch, x, t, caption, mask),
        "ref_fixed": lambda: plain.dit_forward(fixed_weights, reference.arch, x, t, caption, mask),
        "prod_step": lambda: forward(dit, x.repeat(2, 1, 1, 1), cross, t.repeat(2)),
        "prod_setup": lambda: dit.cross_condition([condition], with_null=True),
    }
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):  # runs after the timed rounds: everything is warm
        for name, run in runs.items():
            seconds[name].append(timed_run(run, device)[1])
    # The fastest of the rounds: on a shared machine, the least disturbed estimate of each cost.
    return {name: min(values) for name, values in seconds.items()}


def vae_flops(vae_kwargs: dict[str, Any], resolution: int) -> int:
    """FLOPs of one VAE encode + decode at ``resolution`` (counted on the meta device: nothing runs)."""
    from diffusers import AutoencoderDC
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderDC(**vae_kwargs)
        with FlopCounterMode(display=False) as counter:
            vae.decode(vae.encode(torch.empty(1, 3, resolution, resolution)).latent)
    return counter.get_total_flops()


def project_full(arch, args, stage: dict[str, dict[str, float]], other: dict[str, float], costs: dict):
    """Per-edit seconds at the real depths and 30 steps on this machine, from this run's measurements.

    encoder: this run's encoder time scaled by layer count (LM + vision tower); VAE: scaled by the FLOP
    ratio of the real to the cut VAE; DiT: from ``dit_forward_costs``: the reference makes 2 batch-1
    forwards per step (each paying its fixed part plus 20 blocks), production 1 batched forward per step
    (20 blocks) plus its condition setup once (scaled by depth, which slightly overstates it).
    """
    enc = arch.data["encoder"]
    depth = int(arch.data["dit"]["num_layers"])
    full_depth = int(FULL_ARCH["dit"]["num_layers"])
    layers = enc["text_config"]["num_hidden_layers"] + enc["vision_config"]["depth"]
    full_layers = (
        FULL_ARCH["encoder"]["text_config"]["num_hidden_layers"]
        + FULL_ARCH["encoder"]["vision_config"]["depth"]
    )
    vae_factor = vae_flops(FULL_ARCH["vae"], args.resolution) / vae_flops(arch.vae_kwargs(), args.resolution)
    full_steps = 30
    ref_block = max(costs["ref_forward"] - costs["ref_fixed"], 0.0) / depth
    dit = {
        "reference": 2 * full_steps * (costs["ref_fixed"] + full_depth * ref_block),
        "production": full_steps * full_depth * costs["prod_step"] / depth
        + costs["prod_setup"] * full_depth / depth,
    }
    out = {
        name: {
            "encoder": stage[name]["encoder"] * full_layers / layers,
            "dit": dit[name],
            "vae": stage[name]["vae"] * vae_factor,
            "other": other[name],
        }
        for name in ("reference", "production")
    }
    return out, {"encoder": full_layers / layers, "vae": vae_factor}


# ---------------------------------------------------------------------------------------------- report


def describe(arch, folder: Path, build_s: float | None, args, tokens: list[int], dtype, device) -> None:
    enc, dit, vae = arch.data["encoder"], arch.data["dit"], arch.data["vae"]
    text, vision = enc["text_config"], enc["vision_config"]
    full_text, full_vision = FULL_ARCH["encoder"]["text_config"], FULL_ARCH["encoder"]["vision_config"]
    side = args.resolution // arch.vae_grid
    grid = arch.encoder_image_size // (vision["patch_size"] * vision["spatial_merge_size"])
    print("== painter benchmark: production DimPainter vs the plain reference loop ==")
    print(
        f"run: device={device} dtype={str(dtype).removeprefix('torch.')} resolution={args.resolution} "
        f"steps={args.steps} guidance={GUIDANCE} rows={args.rows} batch_size={args.batch_size} "
        f"repeats={args.repeats} compile={args.compile} threads={torch.get_num_threads()}"
    )
    print(
        f"tokens: latent {side}x{side} = {side * side}; condition per row {tokens} "
        f"({grid}x{grid} = {grid * grid} image tokens at encoder image size {arch.encoder_image_size}, "
        f"+ vision markers + prompt); null condition {arch.max_condition_length} rows"
    )
    print(
        f"encoder (Qwen2.5-VL): text hidden {text['hidden_size']}, mlp {text['intermediate_size']}, "
        f"{text['num_hidden_layers']}/{full_text['num_hidden_layers']} layers, vocab {text['vocab_size']} "
        f"(real {full_text['vocab_size']}); vision hidden {vision['hidden_size']}, "
        f"{vision['depth']}/{full_vision['depth']} blocks (full attention at {vision['fullatt_block_indexes']})"
    )
    proj = arch.data["projector"]
    print(f"projector: {proj['in_features']} -> {proj['out_features']} -> {proj['out_features']}")
    print(
        f"DiT (SANA 1.5): hidden {dit['num_attention_heads'] * dit['attention_head_dim']}, "
        f"{dit['num_layers']}/{FULL_ARCH['dit']['num_layers']} layers, self-attn "
        f"{dit['num_attention_heads']}x{dit['attention_head_dim']} (linear), cross-attn "
        f"{dit['num_cross_attention_heads']}x{dit['cross_attention_head_dim']}, caption {dit['caption_channels']}, "
        f"mlp ratio {dit['mlp_ratio']}"
    )
    print(
        f"VAE (DC-AE f32c{vae['latent_channels']}): channels {vae['encoder_block_out_channels']}, layers "
        f"enc {vae['encoder_layers_per_block']} (real {FULL_ARCH['vae']['encoder_layers_per_block']}), "
        f"dec {vae['decoder_layers_per_block']} (real {FULL_ARCH['vae']['decoder_layers_per_block']})"
    )
    built = "cached" if build_s is None else f"built in {build_s:.0f} s"
    print(f"checkpoint: {folder} ({built}; random weights, released layout)")


def row(label: str, ref: str, prod: str) -> None:
    print(f"  {label:<30}{ref:>14}{prod:>14}")


def table(title: str, per_edit: dict[str, dict[str, float]], peaks: dict[str, float] | None = None) -> float:
    """Prints the per-edit split; returns production ÷ reference throughput."""
    total = {name: sum(parts.values()) for name, parts in per_edit.items()}
    ratio = total["reference"] / total["production"]
    print(title)
    row("", "reference", "production")
    row("seconds / edit", f"{total['reference']:.2f}", f"{total['production']:.2f}")
    row("edits / hour", f"{3600 / total['reference']:.1f}", f"{3600 / total['production']:.1f}")
    for part in ("encoder", "dit", "vae", "other"):
        row(f"  {part} s / edit", f"{per_edit['reference'][part]:.2f}", f"{per_edit['production'][part]:.2f}")
    if peaks is not None:
        row(peaks["label"], f"{peaks['reference']:.2f}", f"{peaks['production']:.2f}")
    print(f"  throughput ratio production / reference: {ratio:.2f}")
    return ratio


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1, help="rows per production paint() call")
    parser.add_argument(
        "--steps", type=int, default=2, help="sampling steps (DIM: 30; the reference needs 2+)"
    )
    parser.add_argument("--depth", type=int, default=1, help="layers of the encoder LM, vision tower and DiT")
    parser.add_argument("--vae-depth", type=int, default=1, help="layers per VAE stage (stage 0: one fewer)")
    parser.add_argument("--full", action="store_true", help="the real depths everywhere (for a GPU)")
    parser.add_argument("--rows", type=int, default=1, help="edits per round, with different prompt lengths")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds, alternating who goes first")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed rounds (default 1 on CUDA or with --compile)"
    )
    parser.add_argument("--compile", action="store_true", help="the production painter with torch.compile")
    parser.add_argument(
        "--cache-dir", default=None, help="where the checkpoint is built (default $DIMFLOW_CACHE)"
    )
    parser.add_argument("--build-into", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the reference's multistep solver)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.build_into:
        depth, vae_depth = (None, None) if args.full else (args.depth, args.vae_depth)
        build_checkpoint(Path(args.build_into), depth, vae_depth, args.weights)
        return

    from tests.painter.reference import load_reference
    from transforms.painter.dim.pipeline import load_dim_painter
    from transforms.painter.dim.vae import to_pil
    from transforms.painter.handler import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_flush_denormal(True)  # random weights: keep denormals from skewing CPU timings (both sides)
    folder, build_s = ensure_checkpoint(args)
    memory = Memory(device)

    reference = load_reference(folder, TASK, device=str(device), dtype=dtype)
    ref_resident = memory.allocated()
    painter = load_dim_painter(str(folder), TASK, dtype=dtype, device=device, compile=args.compile)
    prod_resident = memory.allocated() - ref_resident
    clock = StageClock(device)
    instrument(painter, clock)

    params = PaintParams(steps=args.steps, guidance_scale=GUIDANCE, resolution=args.resolution)
    requests = [
        PaintRequest(key=f"row{i}", prompt=prompt(i), seed=100 + i, source=source_image(i))
        for i in range(args.rows)
    ]
    tokens = [condition_tokens(painter, r.prompt, Image.open(io.BytesIO(r.source))) for r in requests]
    describe(painter.arch, folder, build_s, args, tokens, dtype, device)

    def run_reference() -> list[Image.Image]:
        """One row at a time, from the encoded bytes to quantised pixels, like production's paint()."""
        images = []
        for request in requests:
            image = reference.render(
                request.prompt,
                Image.open(io.BytesIO(request.source)),
                request.seed,
                steps=args.steps,
                guidance_scale=GUIDANCE,
                resolution=args.resolution,
            )
            images += to_pil(image)
        return images

    def run_production() -> list[Image.Image]:
        images = []
        for start in range(0, len(requests), args.batch_size):
            images += [p.image for p in painter.paint(requests[start : start + args.batch_size], params)]
        return images

    def run(which: str) -> tuple[list[Image.Image], float, dict[str, float]]:
        if which == "production":
            clock.take()
            images, seconds = timed_run(run_production, device)
            return images, seconds, clock.take()
        before = dict(reference.timings)  # cumulative seconds per stage
        images, seconds = timed_run(run_reference, device)
        return images, seconds, {k: v - before.get(k, 0.0) for k, v in reference.timings.items()}

    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda" or args.compile)
    for number in range(warmup):
        print(f"warm-up round {number + 1}/{warmup} ...", flush=True)
        run("reference")
        run("production")

    seconds: dict[str, list[float]] = {"reference": [], "production": []}
    split: dict[str, dict[str, list[float]]] = {
        "reference": defaultdict(list),
        "production": defaultdict(list),
    }
    peaks = {"reference": 0.0, "production": 0.0}
    images: dict[str, list[Image.Image]] = {}
    others = {"reference": prod_resident, "production": ref_resident}  # the other painter's weights
    for number in range(args.repeats):
        order = ("reference", "production") if number % 2 == 0 else ("production", "reference")
        line = []
        for which in order:
            memory.reset()
            images[which], total, stages = run(which)
            peaks[which] = max(peaks[which], (memory.peak() - (others[which] if memory.cuda else 0)) / 2**30)
            seconds[which].append(total / args.rows)
            for stage in ("encoder", "dit_setup", "dit", "vae"):
                split[which][stage].append(stages.get(stage, 0.0) / args.rows)
            line.append(f"{which} {total / args.rows:.2f} s/edit")
        print(f"round {number + 1}/{args.repeats}: " + ", ".join(line), flush=True)

    if not memory.cuda:  # one process-wide peak RSS: it cannot be split between the two painters
        peaks = dict.fromkeys(peaks, memory.peak() / 2**30)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    stage = {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in split.items()}
    other = {name: median[name] - sum(stage[name].values()) for name in median}
    per_edit = {
        name: {
            "encoder": stage[name]["encoder"],
            "dit": stage[name]["dit"] + stage[name]["dit_setup"],
            "vae": stage[name]["vae"],
            "other": other[name],
        }
        for name in median
    }
    label = "peak GPU memory GB" if memory.cuda else "peak RSS GB (whole process)"
    ratio = table(
        f"measured (median of {args.repeats} rounds, per edit):", per_edit, {"label": label, **peaks}
    )
    pixels = zip(images["reference"], images["production"], strict=True)
    diff = max(int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max()) for a, b in pixels)
    print(f"  max pixel difference production vs reference (0-255): {diff}")
    print(
        "  production DiT: condition setup (caption projection + K/V, once per call) "
        f"{stage['production']['dit_setup']:.2f} s, steps {stage['production']['dit']:.2f} s per edit"
    )

    if not args.full or args.steps != 30:
        costs = dit_forward_costs(painter, reference, max(tokens), args.resolution, device)
        projected, factors = project_full(painter.arch, args, stage, other, costs)
        print(
            "one DiT forward in isolation (best of 3): reference batch 1 "
            f"{costs['ref_forward']:.2f} s (of which {costs['ref_fixed']:.2f} s outside the blocks: the y "
            f"projection on {painter.arch.max_condition_length} tokens), production batch 2 [uncond, cond] "
            f"{costs['prod_step']:.2f} s; production condition setup once per call {costs['prod_setup']:.2f} s"
        )
        table(
            f"projection to the real depths and 30 steps on this machine (an estimate: encoder x "
            f"{factors['encoder']:.1f} by layer count, VAE x {factors['vae']:.2f} by FLOPs, DiT from the "
            "forwards timed above):",
            projected,
        )
    if device.type == "cpu" and not args.full:
        print(
            "note: at reduced depth the fixed per-edit costs (VAE at full resolution, encoder embeddings) weigh "
            "more than at full size; the projection above rescales them."
        )
    print(
        f"RESULT ratio={ratio:.2f} edits_per_hour={3600 / sum(per_edit['production'].values()):.1f} "
        f"peak_mem_gb={peaks['production']:.2f}"
    )


if __name__ == "__main__":
    main()
