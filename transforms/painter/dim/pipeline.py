"""DimPainter: requests -> images with the loaded DIM modules (our own loop: SanaPipeline cannot do the
channel concatenation the edit model needs).

Per batch: the rows' conditions (encoder -> projector; on accelerators the micro-batch's rows in one
right-padded, masked encoder forward, where a row's condition equals its condition alone up to rounding),
the null condition (first N rows of y_embedding, its keys/values computed once and shared by every row),
each row's source latent (edit) and its own seeded noise; then one DiT forward per step on [uncond rows,
cond rows], guidance, DPM-Solver++ step; decode; quantise. On CPU the rows of a batch go through one at a
time (``row_by_row``: encoder, DiT and VAE), so an image is bit-identical whatever batch or worker painted
it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from transforms.painter.base import (
    DEFAULT_VAE_TILE_PIXELS,
    NOISE_DEVICES,
    Painting,
    PaintParams,
    PaintRequest,
    check_params,
    check_request,
    compile_mode,
    decode_source,
    source_size,
    valid_vae_tile_pixels,
)
from transforms.painter.dim import buckets, sampler, vae
from transforms.painter.dim import checkpoint as ckpt
from transforms.painter.dim.config import DimArch
from transforms.painter.dim.encoder import ConditionEncoder, encoder_image, load_processor
from transforms.painter.dim.locate import resolve_checkpoint


@dataclass
class _Staged:
    """The CPU side of one micro-batch (decoded, oriented, resized sources), made on the prefetch thread."""

    size: tuple[int, int]  # (width, height) of every output in the micro-batch
    encoder_images: list[Image.Image | None]  # each source as the encoder takes it (None: text-to-image)
    arrays: list[np.ndarray]  # each source resized and cropped to ``size``, uint8 [height, width, 3] (edit)


@dataclass
class _Prepared:
    conditions: list[torch.Tensor]  # [N_i, caption_channels] in model dtype
    source_latents: torch.Tensor | None  # [B, C, h, w] scaled latents (edit)
    size: tuple[int, int]  # (width, height) in pixels of every output


class DimPainter:
    """A loaded DIM checkpoint. ``paint`` is the seam's entry point; ``render`` returns float images."""

    def __init__(
        self,
        *,
        name: str,
        task: str,
        arch: DimArch,
        modules: ckpt.DimModules,
        encoder: ConditionEncoder,
        checkpoint_sha256: str,
        dtype: torch.dtype,
        device: torch.device,
        noise_device: str = "cpu",
        row_by_row: bool | None = None,
        compile: bool | str = False,
        vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
        prefetch: bool | None = None,
        vae_dtype: str = "auto",
    ):
        """``row_by_row`` runs the encoder, DiT and VAE one row at a time, which makes every image
        bit-identical whatever batch it came in (kernels see the same shapes); the default is on for CPU,
        where batching gains little, and off for accelerators, where batching is the point and rows agree to
        within rounding. ``compile``: False, or a ``torch.compile`` mode (``default``, ``max-autotune``:
        autotuned kernels and, on CUDA, CUDA graphs; True means ``default``) for the DiT's per-step forward
        (the first batches of each new shape pay for compilation). ``vae_tile_pixels``: outputs with more
        pixels than this decode tile by tile (None: never). ``prefetch``: ``paint`` decodes and resizes the
        next micro-batch's sources on a background thread while the current one is on the device (the images
        are the same either way); the default is on for accelerators and off for CPU, where the device is the
        same few cores. ``vae_dtype``: ``auto`` runs the VAE as DIM does when ``dtype`` is a half type
        (float32 under autocast on CUDA; elsewhere float32 on the half-rounded weights, which
        ``load_dim_painter`` prepares), ``same`` in ``dtype``; see ``vae.vae_precision``."""
        if noise_device not in NOISE_DEVICES:
            raise ValueError(f"noise_device must be one of {NOISE_DEVICES}, got {noise_device!r}")
        if not valid_vae_tile_pixels(vae_tile_pixels):
            raise ValueError(f"vae_tile_pixels must be a positive integer or None, got {vae_tile_pixels!r}")
        self.vae_precision = vae.vae_precision(vae_dtype, dtype, device)
        held = {p.dtype for p in modules.vae.parameters()}
        if held != {self.vae_precision.weight_dtype}:
            raise ValueError(
                f"vae_dtype {vae_dtype!r} with dtype {dtype} on {device.type} runs the VAE with "
                f"{self.vae_precision.weight_dtype} weights, but the loaded VAE holds "
                f"{sorted(map(str, held))} (load_dim_painter prepares them)"
            )
        self.vae_dtype = vae_dtype
        self.name = name
        self.task = task
        self.arch = arch
        self.modules = modules
        self.encoder = encoder
        self.checkpoint_sha256 = checkpoint_sha256
        self.dtype = dtype
        self.device = device
        self.noise_device = noise_device
        self.row_by_row = device.type == "cpu" if row_by_row is None else row_by_row
        self.compile: str | bool = compile_mode(compile) or False  # a torch.compile mode, or False: eager
        if self.compile and not modules.dit.compiled:
            modules.dit.enable_compile(mode=self.compile)
        self.vae_tile_pixels = vae_tile_pixels
        vae.set_tile_geometry(modules.vae)
        self.prefetch = device.type != "cpu" if prefetch is None else bool(prefetch)
        self._lock = threading.Lock()  # one batch at a time on the device, whatever the caller's threads

    # ------------------------------------------------------------------------------------------ checks

    def check(self, requests: Sequence[PaintRequest], params: PaintParams) -> None:
        check_params(params, grid=self.arch.vae_grid)
        for request in requests:
            check_request(request, self.task)
            self.encoder.check_prompt(request.key, request.prompt)

    # ------------------------------------------------------------------------------------------ stages

    def condition(self, prompt: str, source: Image.Image | None) -> torch.Tensor:
        """Projected condition [N, caption_channels]; longer than the null condition keeps the last tokens."""
        return self.conditions([prompt], [source])[0]

    @torch.inference_mode()
    def conditions(self, prompts: Sequence[str], sources: Sequence[Image.Image | None]) -> list[torch.Tensor]:
        """Each row's projected condition. ``row_by_row``: one encoder forward and projector call per row (the
        shapes a row has alone, so bit-identical in any batch); otherwise one encoder forward over the
        right-padded rows and one projector call over all their tokens (equal to the rows alone up to
        rounding, see ``encoder``)."""
        if self.row_by_row:
            hidden = [
                self.encoder.encode_batch([p], [s])[0].hidden for p, s in zip(prompts, sources, strict=True)
            ]
            projected = [self.modules.projector(h.to(self.dtype)) for h in hidden]
        else:
            hidden = [condition.hidden for condition in self.encoder.encode_batch(prompts, sources)]
            projected = self.modules.projector(torch.cat(hidden).to(self.dtype)).split(
                [h.shape[0] for h in hidden]
            )
        return [row[-self.arch.max_condition_length :] for row in projected]

    @torch.inference_mode()
    def prepare(
        self, requests: Sequence[PaintRequest], params: PaintParams, staged: _Staged | None = None
    ) -> _Prepared:
        """The device side of a batch of one output size: conditions and source latents. ``staged`` is the
        CPU side made beforehand (``stage``, on the prefetch thread); without it, it is made here."""
        if staged is None:
            staged = self.stage(requests, self.shared_output_size(requests, params))
        if len(staged.encoder_images) != len(requests):
            raise ValueError(
                f"staged sources for {len(staged.encoder_images)} rows, a batch of {len(requests)}"
            )
        # The encoder re-applies its resize to the staged image: a no-op, so the condition is the same.
        conditions = self.conditions([r.prompt for r in requests], staged.encoder_images)
        latents = None
        if self.task == "edit":
            pixels = torch.stack([vae.array_pixels(array) for array in staged.arrays])
            pixels = pixels.to(device=self.device, dtype=self.vae_precision.input_dtype)
            with self.vae_precision.context():
                latents = vae.encode(self.modules.vae, pixels, self.arch.scaling_factor)
        return _Prepared(conditions=conditions, source_latents=latents, size=staged.size)

    def output_size(self, request: PaintRequest, params: PaintParams) -> tuple[int, int]:
        """(width, height) the row is painted at: square, or its source's aspect bucket (``preserve``)."""
        size = source_size(request) if params.aspect == "preserve" and request.source is not None else None
        return buckets.output_size(size, params.resolution, self.arch.vae_grid, params.aspect)

    def shared_output_size(self, requests: Sequence[PaintRequest], params: PaintParams) -> tuple[int, int]:
        """The one output size of a batch; ``render`` paints one size at a time (``paint`` groups rows)."""
        sizes = {self.output_size(r, params) for r in requests}
        if len(sizes) != 1:
            raise ValueError(
                f"a render batch must share one output size, got {sorted(sizes)}: paint() groups rows by size"
            )
        return sizes.pop()

    def stage(self, requests: Sequence[PaintRequest], size: tuple[int, int]) -> _Staged:
        """The PIL part of preparing rows painted at ``size``: decode, EXIF orientation, the encoder's resize
        and the VAE's resize/crop. Thread-safe (touches no model, no torch); errors name the row."""
        encoder_images: list[Image.Image | None] = []
        arrays = []
        for request in requests:
            if request.source is None:
                encoder_images.append(None)
                continue
            image = decode_source(request)  # its errors name the row already
            try:
                encoder_images.append(encoder_image(image, self.encoder.image_size))
                arrays.append(vae.source_array(image, size))
            except ValueError as exc:
                raise ValueError(f"row {request.key!r}: preparing the source image failed: {exc}") from exc
            except Exception as exc:
                raise RuntimeError(
                    f"row {request.key!r}: preparing the source image failed: {type(exc).__name__}: {exc}"
                ) from exc
        return _Staged(size=size, encoder_images=encoder_images, arrays=arrays)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> float images [B, 3, H, W] in about [-1, 1]; tiled above ``vae_tile_pixels``;
        in ``vae_precision`` (as DIM by default)."""
        with self.vae_precision.context():
            return vae.decode(
                self.modules.vae,
                latents.to(self.vae_precision.input_dtype),
                self.arch.scaling_factor,
                self.vae_tile_pixels,
            )

    @torch.inference_mode()
    def render(self, requests: Sequence[PaintRequest], params: PaintParams) -> torch.Tensor:
        """Float images [B, 3, R, R] in [-1, 1] (before clamping and quantisation)."""
        self.check(requests, params)
        if self.row_by_row and len(requests) > 1:
            return torch.cat([self._render([request], params) for request in requests])
        return self._render(requests, params)

    def _render(
        self, requests: Sequence[PaintRequest], params: PaintParams, staged: _Staged | None = None
    ) -> torch.Tensor:
        prepared = self.prepare(requests, params, staged)
        width, height = prepared.size
        grid = self.arch.vae_grid
        noise = sampler.initial_noise(
            [r.seed for r in requests],
            (self.arch.latent_channels, height // grid, width // grid),
            self.device,
            self.noise_device,
        )
        velocity = self._velocity(prepared, params.guidance_scale)
        cfg = self.arch.data["sampler"]
        try:
            latents = sampler.denoise(
                velocity,
                noise,
                steps=params.steps,
                flow_shift=float(cfg["flow_shift"]),
                num_train_timesteps=int(cfg["num_train_timesteps"]),
                solver_order=int(cfg["solver_order"]),
            )
        finally:
            # The closure holds this call's cross-attention keys/values: release them before decoding.
            del velocity
        return self.decode(latents).float()

    def _velocity(self, prepared: _Prepared, guidance_scale: float) -> sampler.Velocity:
        """One DiT forward per step on ``[uncond rows, cond rows]``; the condition side (caption projection,
        y-norm, every block's cross-attention keys/values, for each row and the null condition) is computed
        here once, lives in the returned closure, and is freed with it when the sampling call ends."""
        dit = self.modules.dit
        use_cfg = guidance_scale != 1.0
        copies = 2 if use_cfg else 1
        cross = dit.cross_condition(prepared.conditions, with_null=use_cfg, pad_multiple=self._pad_multiple())
        source = None if prepared.source_latents is None else prepared.source_latents.to(self.dtype)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = x.to(self.dtype)
            if source is not None:  # noisy latent first, then the source latent
                x_in = torch.cat([x_in, source], dim=1)
            v = dit(x_in.repeat(copies, 1, 1, 1), cross, t.repeat(copies))
            if not use_cfg:
                return v
            v_uncond, v_cond = v.float().chunk(2)
            return sampler.guided(v_uncond, v_cond, guidance_scale)

        return velocity

    def _pad_multiple(self) -> int:
        """Conditions are padded (and masked) to a multiple of this many tokens: 8 suits fused CUDA attention
        kernels; with CUDA graphs (``max-autotune``) every new shape records a new graph, so lengths are
        rounded to 64 (up to ~5% more cross-attention keys at ~1,400 tokens, 8x fewer shapes). 1 on CPU."""
        if self.device.type != "cuda":
            return 1
        return 64 if self.compile == "max-autotune" else 8

    # ------------------------------------------------------------------------------------------ seam

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]:
        """Paint a batch, in the input order. Rows may differ in output size (``aspect: preserve``): they are
        painted in micro-batches of one size (one row each when ``row_by_row``), and while one micro-batch
        is on the device the next one's sources are decoded and resized on a background thread.
        ``paint_s`` is each row's even share of the batch's wall time; ``batch_size`` is the rows given."""
        requests = list(requests)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            self.check(requests, params)
            sizes = [self.output_size(r, params) for r in requests]
            images: list[Image.Image | None] = [None] * len(requests)
            with contextlib.closing(self._staged_micro_batches(requests, sizes)) as micro_batches:
                for indices, staged in micro_batches:
                    rendered = self._render([requests[i] for i in indices], params, staged)
                    for index, image in zip(indices, vae.to_pil(rendered), strict=True):
                        images[index] = image
            share = (time.perf_counter() - started) / max(len(requests), 1)
        fields = {
            "painter": self.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "steps": params.steps,
            "guidance_scale": float(params.guidance_scale),
            "dtype": str(self.dtype).removeprefix("torch."),
            "vae_dtype": self.vae_precision.label,
            "device": str(self.device),
            "batch_size": len(requests),
        }
        paintings = []
        for request, image, (width, height) in zip(requests, images, sizes, strict=True):
            assert image is not None and image.size == (width, height), (request.key, image)
            row_fields = {**fields, "width": width, "height": height}
            paintings.append(Painting(key=request.key, image=image, paint_s=share, fields=row_fields))
        return paintings

    def micro_batches(self, sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        """Indices of the rows painted together: one output size per micro-batch, sizes in order of first
        appearance; one row each when ``row_by_row``."""
        if self.row_by_row:
            return [[index] for index in range(len(sizes))]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size, []).append(index)
        return list(groups.values())

    def _staged_micro_batches(
        self, requests: Sequence[PaintRequest], sizes: Sequence[tuple[int, int]]
    ) -> Generator[tuple[list[int], _Staged], None, None]:
        """Each micro-batch with its CPU side staged, the next one's staging running on one background thread
        (PIL and torch release the GIL in their kernels) while the caller paints the current one. An error
        in the background is raised here, when its micro-batch comes up, naming its row."""
        batches = self.micro_batches(sizes)

        def stage(batch: list[int]) -> _Staged:
            return self.stage([requests[i] for i in batch], sizes[batch[0]])

        if not self.prefetch or len(batches) < 2:
            for batch in batches:
                yield batch, stage(batch)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dimflow-prefetch") as pool:
            pending = pool.submit(stage, batches[0])
            try:
                for number, batch in enumerate(batches):
                    staged = pending.result()
                    if number + 1 < len(batches):
                        pending = pool.submit(stage, batches[number + 1])
                    yield batch, staged
            finally:
                pending.cancel()  # the caller stopped early (an error): do not stage what nobody paints


def load_dim_painter(
    checkpoint: str,
    task: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    noise_device: str = "cpu",
    compile: bool | str = False,
    vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
    vae_dtype: str = "auto",
) -> DimPainter:
    """Resolve, fingerprint and load a checkpoint (the same path for ``tiny`` and real ones). The VAE's
    weights are loaded in ``dtype`` (rounded as DIM's ``model.bfloat16()`` rounds them), then held in the
    dtype ``vae_dtype`` calls for (float32 for ``auto`` with a half dtype off CUDA)."""
    precision = vae.vae_precision(vae_dtype, dtype, device)  # a bad setting fails before any weight is read
    compile_mode(compile)
    folder = resolve_checkpoint(checkpoint, task)
    arch = ckpt.read_arch(folder, task)
    sha = ckpt.file_sha256(folder / ckpt.MODEL_FILE)
    modules = ckpt.load_modules(folder, arch, dtype=dtype, device=device)
    if precision.weight_dtype != dtype:
        # nn.Module.to: diffusers' override warns about fp32-kept modules that this VAE does not have.
        torch.nn.Module.to(modules.vae, dtype=precision.weight_dtype)
    processor = load_processor(ckpt.processor_folder(folder, arch))
    encoder = ConditionEncoder(modules.encoder, processor, arch.encoder_image_size)
    return DimPainter(
        name=painter_name(checkpoint, task),
        task=task,
        arch=arch,
        modules=modules,
        encoder=encoder,
        checkpoint_sha256=sha,
        dtype=dtype,
        device=device,
        noise_device=noise_device,
        compile=compile,
        vae_tile_pixels=vae_tile_pixels,
        vae_dtype=vae_dtype,
    )


def painter_name(checkpoint: str, task: str) -> str:
    """The provenance ``painter`` value: model family and checkpoint as the job named it."""
    if checkpoint == ckpt.TINY:
        return f"dim:tiny-{task}"
    return f"dim:{checkpoint}"
