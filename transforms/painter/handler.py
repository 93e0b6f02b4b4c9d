"""The Beam ModelHandler for painters: RunInference loads one painter per worker and feeds it batches.

The handler holds only plain settings (it is pickled to workers); torch and the model code are imported
when the model loads. ``checkpoint_fingerprint`` gives the driver the checkpoint hash for render keys
without loading any model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.painter.base import (
    ASPECTS,
    DEFAULT_VAE_TILE_PIXELS,
    NOISE_DEVICES,
    TASKS,
    VAE_DTYPES,
    Painter,
    PaintParams,
    PaintRequest,
    check_params,
    compile_mode,
    valid_vae_tile_pixels,
)

KINDS = ("dim",)
DTYPES = ("auto", "float32", "bfloat16", "float16")


class PainterModelHandler(ModelHandler[PaintRequest, PredictionResult, Painter]):
    def __init__(
        self,
        *,
        checkpoint: str,
        task: str,
        params: PaintParams,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 1,
        noise_device: str = "cpu",
        kind: str = "dim",
        share_across_processes: bool = False,
        compile: bool | str = False,
        vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
        vae_dtype: str = "auto",
    ):
        """``share_across_processes`` is Beam's ``large_model``: one model per machine for all SDK processes.
        ``compile``: False, or the ``torch.compile`` mode of the painter's denoiser (``default``,
        ``max-autotune``; True = ``default``). ``vae_tile_pixels``: outputs with more pixels than this decode
        in tiles (bounded memory, approximate seams); None never tiles. ``vae_dtype``: ``auto`` (as DIM: the
        VAE computes in float32 on its half-rounded weights when the painter runs in a half type) or
        ``same`` (in the painter's dtype). The output size itself comes with ``params`` (``resolution``,
        ``aspect``)."""
        if kind not in KINDS:
            raise ValueError(f"painter kind must be one of {KINDS}, got {kind!r}")
        if task not in TASKS:
            raise ValueError(f"painter task must be one of {TASKS}, got {task!r}")
        if dtype not in DTYPES:
            raise ValueError(f"painter dtype must be one of {DTYPES}, got {dtype!r}")
        if noise_device not in NOISE_DEVICES:
            raise ValueError(f"painter noise_device must be one of {NOISE_DEVICES}, got {noise_device!r}")
        compile = compile_mode(compile) or False  # its error names the choices
        if vae_dtype not in VAE_DTYPES:
            raise ValueError(f"painter vae_dtype must be one of {VAE_DTYPES}, got {vae_dtype!r}")
        if not valid_vae_tile_pixels(vae_tile_pixels):
            raise ValueError(
                f"painter vae_tile_pixels must be a positive integer or null, got {vae_tile_pixels!r}"
            )
        if params.aspect not in ASPECTS:
            raise ValueError(f"painter aspect must be one of {ASPECTS}, got {params.aspect!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"painter batch_size must be an integer >= 1, got {batch_size!r}")
        super().__init__(
            min_batch_size=batch_size, max_batch_size=batch_size, large_model=share_across_processes
        )
        self.checkpoint = checkpoint
        self.task = task
        self.params = params
        self.dtype = dtype
        self.device = device
        self.batch_size = batch_size
        self.noise_device = noise_device
        self.kind = kind
        self.compile = compile
        self.vae_tile_pixels = vae_tile_pixels
        self.vae_dtype = vae_dtype

    def load_model(self) -> Painter:
        from transforms.painter.dim.pipeline import load_dim_painter  # the only kind so far

        device = resolve_device(self.device)
        return load_dim_painter(
            self.checkpoint,
            self.task,
            dtype=resolve_dtype(self.dtype, device),
            device=device,
            noise_device=self.noise_device,
            compile=self.compile,
            vae_tile_pixels=self.vae_tile_pixels,
            vae_dtype=self.vae_dtype,
        )

    def run_inference(
        self,
        batch: Sequence[PaintRequest],
        model: Painter,
        inference_args: Mapping[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        if inference_args:
            raise ValueError(f"the painter takes no inference_args, got {sorted(inference_args)}")
        paintings = model.paint(list(batch), self.params)
        # Only method calls: with share_across_processes ``model`` is a proxy to another process.
        return [
            PredictionResult(example=request, inference=painting, model_id=painting.fields.get("painter"))
            for request, painting in zip(batch, paintings, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[PaintRequest]) -> int:
        return sum(len(r.source or b"") + len(r.prompt.encode("utf-8")) for r in batch)

    def get_metrics_namespace(self) -> str:
        return f"dimflow_painter_{self.kind}"


def resolve_device(device: str):
    """``auto`` = the first CUDA device when there is one, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"painter device {device!r} asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str, device):
    """``auto`` = bfloat16 on CUDA (as the reference runs), float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def checkpoint_fingerprint(checkpoint: str, task: str, params: PaintParams | None = None) -> str:
    """sha256 of the checkpoint's weights file, without loading a model (``tiny`` is built if needed).

    Also checks that the checkpoint suits ``task`` (edit vs t2i) and, given ``params``, that it can paint
    them (e.g. a resolution on its latent grid), so a job that would fail every row fails on the driver.
    """
    from transforms.painter.dim import checkpoint as ckpt
    from transforms.painter.dim.locate import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint, task)
    arch = ckpt.read_arch(folder, task)
    if params is not None:
        check_params(params, grid=arch.vae_grid)
    return ckpt.file_sha256(folder / ckpt.MODEL_FILE)
