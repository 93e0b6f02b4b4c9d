"""``painter.kind: qwen-image-edit``: what the kind loads and how it is called.

Edits: diffusers ``QwenImageEditPlusPipeline`` (Qwen/Qwen-Image-Edit-2511, Qwen/Qwen-Image-Edit-2509, and
models in the same layout); text-to-image: ``QwenImagePipeline`` (Qwen/Qwen-Image). ``painter.guidance_scale``
is the pipelines' ``true_cfg_scale`` (classifier-free guidance against the negative prompt " ", as the
model cards' examples call it); the pipelines' own ``guidance_scale`` is for guidance-distilled
transformers (``guidance_embeds``), which these are not, so it is not passed.
"""

from __future__ import annotations

import json
from pathlib import Path

from transforms.painter.base import DEFAULT_VAE_TILE_PIXELS, PaintParams, check_params
from transforms.painter.diffusers_checkpoint import (
    TINY,
    CheckpointNotFound,
    checkpoint_sha256,
    read_model_index,
    resolve_folder,
)

KIND = "qwen-image-edit"
# task -> the diffusers pipeline classes (model_index.json ``_class_name``) this kind paints it with
PIPELINES = {"edit": ("QwenImageEditPlusPipeline",), "t2i": ("QwenImagePipeline",)}


def call_style():
    """How both Qwen pipelines are called (see the module docstring and ``diffusers_painter``)."""
    from transforms.painter.diffusers_painter import CallStyle

    # diffusers 0.42.1 QwenImageEditPlusPipeline.__call__ raises for more than one prompt; QwenImagePipeline
    # takes a list of prompts and one generator per prompt.
    return CallStyle(
        guidance_argument="true_cfg_scale", negative_prompt=" ", rows_per_call={"edit": 1, "t2i": None}
    )


def _tiny(task: str) -> Path:
    from transforms.painter.qwen.tiny import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(task)


def locate(checkpoint: str, task: str) -> Path:
    """The checkpoint's folder, checked to hold a pipeline this kind paints ``task`` with."""
    folder = resolve_folder(checkpoint, task, tiny=_tiny)
    found = read_model_index(folder)["_class_name"]
    if found not in PIPELINES[task]:
        other = [t for t, classes in PIPELINES.items() if found in classes]
        hint = f" (a {other[0]} checkpoint: set it as painter.{_field(other[0])})" if other else ""
        raise CheckpointNotFound(
            f"checkpoint {checkpoint!r} is a {found}; painter.kind {KIND} paints {task} rows with "
            f"{' or '.join(PIPELINES[task])} checkpoints{hint}"
        )
    return folder


def _field(task: str) -> str:
    return "checkpoint" if task == "edit" else "t2i_checkpoint"


def grid(folder: Path) -> int:
    """Pixels per packed latent cell: the VAE's spatial compression (2 ** len(temperal_downsample), as the
    pipelines compute it) times the transformer's 2x2 packing."""
    config_file = folder / "vae" / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        downsamples = len(config["temperal_downsample"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointNotFound(f"{config_file}: cannot read the VAE's temperal_downsample: {exc}") from exc
    return 2**downsamples * 2


def fingerprint(checkpoint: str, task: str, params: PaintParams | None = None) -> str:
    """The checkpoint's sha256 without loading a model; checks it suits ``task`` and ``params``."""
    folder = locate(checkpoint, task)
    if params is not None:
        check_params(params, grid=grid(folder))
    return checkpoint_sha256(folder)


def painter_name(checkpoint: str, task: str) -> str:
    """The provenance ``painter`` value: the kind and the checkpoint as the job named it."""
    return f"{KIND}:tiny-{task}" if checkpoint == TINY else f"{KIND}:{checkpoint}"


def load_painter(
    checkpoint: str,
    task: str,
    *,
    dtype,
    device,
    noise_device: str = "cpu",
    compile: bool | str = False,
    vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
    vae_dtype: str = "auto",
):
    """Resolve, fingerprint and load the pipeline for ``task`` on ``device`` in ``dtype`` (the same path for
    ``tiny`` and released checkpoints). ``compile`` and ``vae_dtype: same`` are DIM's settings: refused."""
    import diffusers

    from transforms.painter.diffusers_painter import DiffusersPainter
    from transforms.painter.qwen.processor import load_processor

    if compile:
        raise ValueError(f"painter.compile applies to painter.kind dim only (kind {KIND}), got {compile!r}")
    if vae_dtype != "auto":
        raise ValueError(
            f"painter.vae_dtype applies to painter.kind dim only (kind {KIND} runs the VAE in painter.dtype), "
            f"got {vae_dtype!r}"
        )
    folder = locate(checkpoint, task)
    sha = checkpoint_sha256(folder)
    class_name = read_model_index(folder)["_class_name"]
    components = {"processor": load_processor(folder)} if task == "edit" else {}
    pipeline = getattr(diffusers, class_name).from_pretrained(str(folder), dtype=dtype, **components)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return DiffusersPainter(
        name=painter_name(checkpoint, task),
        task=task,
        pipeline=pipeline,
        style=call_style(),
        checkpoint_sha256=sha,
        dtype=dtype,
        device=device,
        grid=grid(folder),
        noise_device=noise_device,
        vae_tile_pixels=vae_tile_pixels,
    )
