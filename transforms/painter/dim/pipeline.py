"""DimPainter: requests -> images with the loaded DIM modules (our own loop: SanaPipeline cannot do the
channel concatenation the edit model needs).

Per batch: each row's condition (encoder -> projector, one row at a time, so a row's condition does not
depend on its neighbours), its null condition (first N rows of y_embedding), its source latent (edit), its
own seeded noise; then one DiT forward per step on [uncond rows, cond rows], guidance, DPM-Solver++ step;
decode; quantise. On CPU the rows of a batch go through one at a time (``row_by_row``), so an image is
bit-identical whatever batch or worker painted it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from transforms.painter.base import (
    Painting,
    PaintParams,
    PaintRequest,
    check_params,
    check_request,
    decode_source,
)
from transforms.painter.dim import checkpoint as ckpt
from transforms.painter.dim import sampler, vae
from transforms.painter.dim.config import DimArch
from transforms.painter.dim.encoder import ConditionEncoder, load_processor

NOISE_DEVICES = ("cpu", "accelerator")


@dataclass
class _Prepared:
    conditions: list[torch.Tensor]  # [N_i, caption_channels] in model dtype
    source_latents: torch.Tensor | None  # [B, C, h, w] scaled latents (edit)


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
    ):
        """``row_by_row`` runs the DiT and VAE one row at a time, which makes every image bit-identical
        whatever batch it came in (kernels see the same shapes); the default is on for CPU, where batching
        gains little, and off for accelerators, where batching is the point and rows agree to within
        rounding."""
        if noise_device not in NOISE_DEVICES:
            raise ValueError(f"noise_device must be one of {NOISE_DEVICES}, got {noise_device!r}")
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
        self._lock = threading.Lock()  # one batch at a time on the device, whatever the caller's threads

    # ------------------------------------------------------------------------------------------ checks

    def check(self, requests: Sequence[PaintRequest], params: PaintParams) -> None:
        check_params(params, grid=self.arch.vae_grid)
        for request in requests:
            check_request(request, self.task)
            self.encoder.check_prompt(request.key, request.prompt)

    # ------------------------------------------------------------------------------------------ stages

    @torch.inference_mode()
    def condition(self, prompt: str, source: Image.Image | None) -> torch.Tensor:
        """Projected condition [N, caption_channels]; longer than the null condition keeps the last tokens."""
        hidden = self.encoder.encode(prompt, source).hidden
        projected = self.modules.projector(hidden.to(self.dtype))
        return projected[-self.arch.max_condition_length :]

    @torch.inference_mode()
    def prepare(self, requests: Sequence[PaintRequest], params: PaintParams) -> _Prepared:
        sources = [decode_source(r) if r.source is not None else None for r in requests]
        conditions = [self.condition(r.prompt, s) for r, s in zip(requests, sources, strict=True)]
        latents = None
        if self.task == "edit":
            pixels = torch.stack([vae.source_pixels(s, params.resolution) for s in sources if s is not None])
            pixels = pixels.to(device=self.device, dtype=self.dtype)
            latents = vae.encode(self.modules.vae, pixels, self.arch.scaling_factor)
        return _Prepared(conditions=conditions, source_latents=latents)

    @torch.inference_mode()
    def render(self, requests: Sequence[PaintRequest], params: PaintParams) -> torch.Tensor:
        """Float images [B, 3, R, R] in [-1, 1] (before clamping and quantisation)."""
        self.check(requests, params)
        if self.row_by_row and len(requests) > 1:
            return torch.cat([self._render([request], params) for request in requests])
        return self._render(requests, params)

    def _render(self, requests: Sequence[PaintRequest], params: PaintParams) -> torch.Tensor:
        prepared = self.prepare(requests, params)
        side = params.resolution // self.arch.vae_grid
        noise = sampler.initial_noise(
            [r.seed for r in requests],
            (self.arch.latent_channels, side, side),
            self.device,
            self.noise_device,
        )
        velocity = self._velocity(prepared, params.guidance_scale)
        cfg = self.arch.data["sampler"]
        latents = sampler.denoise(
            velocity,
            noise,
            steps=params.steps,
            flow_shift=float(cfg["flow_shift"]),
            num_train_timesteps=int(cfg["num_train_timesteps"]),
            solver_order=int(cfg["solver_order"]),
        )
        return vae.decode(self.modules.vae, latents.to(self.dtype), self.arch.scaling_factor).float()

    def _velocity(self, prepared: _Prepared, guidance_scale: float) -> sampler.Velocity:
        dit = self.modules.dit
        conditions = prepared.conditions
        use_cfg = guidance_scale != 1.0
        both = [dit.null_condition(c.shape[0]) for c in conditions] + conditions if use_cfg else conditions
        copies = 2 if use_cfg else 1

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = x.to(self.dtype)
            if prepared.source_latents is not None:  # noisy latent first, then the source latent
                x_in = torch.cat([x_in, prepared.source_latents.to(self.dtype)], dim=1)
            v = dit(x_in.repeat(copies, 1, 1, 1), both, t.repeat(copies))
            if not use_cfg:
                return v
            v_uncond, v_cond = v.float().chunk(2)
            return sampler.guided(v_uncond, v_cond, guidance_scale)

        return velocity

    # ------------------------------------------------------------------------------------------ seam

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]:
        """Paint a batch. ``paint_s`` is each row's even share of the batch's wall time."""
        with self._lock:
            started = time.perf_counter()
            images = vae.to_pil(self.render(requests, params))
            share = (time.perf_counter() - started) / max(len(requests), 1)
        fields = {
            "painter": self.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "steps": params.steps,
            "guidance_scale": float(params.guidance_scale),
            "width": params.resolution,
            "height": params.resolution,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_size": len(requests),
        }
        return [
            Painting(key=r.key, image=image, paint_s=share, fields=dict(fields))
            for r, image in zip(requests, images, strict=True)
        ]


def load_dim_painter(
    checkpoint: str, task: str, *, dtype: torch.dtype, device: torch.device, noise_device: str = "cpu"
) -> DimPainter:
    """Resolve, fingerprint and load a checkpoint (the same path for ``tiny`` and real ones)."""
    folder = ckpt.resolve_checkpoint(checkpoint, task)
    arch = ckpt.read_arch(folder, task)
    sha = ckpt.file_sha256(folder / ckpt.MODEL_FILE)
    modules = ckpt.load_modules(folder, arch, dtype=dtype, device=device)
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
    )


def painter_name(checkpoint: str, task: str) -> str:
    """The provenance ``painter`` value: model family and checkpoint as the job named it."""
    if checkpoint == ckpt.TINY:
        return f"dim:tiny-{task}"
    return f"dim:{checkpoint}"
