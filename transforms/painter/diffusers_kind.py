"""What every diffusers painter kind does alike: checkpoint -> checked folder, fingerprint, load, painter.

A kind module (``qwen/kind.py``, ``longcat/kind.py``) describes itself with a ``DiffusersKind`` (its name,
the pipeline classes it paints each task with, its tiny builder, latent grid and call style) and exposes
its ``fingerprint`` and ``load_painter`` for ``transforms/painter/kinds.py``. Loading goes through diffusers'
own ``from_pretrained`` for ``tiny`` and released checkpoints alike; the only component built here is a
Qwen2-VL processor a folder names (``diffusers_processor``: transformers cannot build it without torchvision).
A kind whose ``CallStyle.masked`` names an inpainting pipeline gets it built over the edit pipeline's components.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transforms.painter.base import DEFAULT_VAE_TILE_PIXELS, PaintParams, check_params
from transforms.painter.diffusers_checkpoint import (
    TINY,
    CheckpointNotFound,
    checkpoint_sha256,
    read_model_index,
    resolve_folder,
)


@dataclass(frozen=True)
class DiffusersKind:
    """``pipelines``: task -> the diffusers pipeline classes (``model_index.json`` ``_class_name``) this kind
    paints it with. ``tiny(task)``: the tiny checkpoint's folder (built on first use). ``grid(folder)``:
    pixels per packed latent cell. ``call_style()``: the ``CallStyle`` of its pipelines."""

    name: str
    pipelines: Mapping[str, tuple[str, ...]]
    tiny: Callable[[str], Path]
    grid: Callable[[Path], int]
    call_style: Callable[[], Any]

    def locate(self, checkpoint: str, task: str) -> Path:
        """The checkpoint's folder, checked to hold a pipeline this kind paints ``task`` with."""
        if task not in self.pipelines:
            raise ValueError(f"task must be one of {sorted(self.pipelines)}, got {task!r}")
        folder = resolve_folder(checkpoint, task, tiny=self.tiny)
        found = read_model_index(folder)["_class_name"]
        if found not in self.pipelines[task]:
            other = [t for t, classes in self.pipelines.items() if found in classes]
            hint = f" (a {other[0]} checkpoint: set it as painter.{_field(other[0])})" if other else ""
            raise CheckpointNotFound(
                f"checkpoint {checkpoint!r} is a {found}; painter.kind {self.name} paints {task} rows with "
                f"{' or '.join(self.pipelines[task])} checkpoints{hint}"
            )
        return folder

    def fingerprint(self, checkpoint: str, task: str, params: PaintParams | None = None) -> str:
        """The checkpoint's sha256 without loading a model; checks it suits ``task`` and ``params``."""
        folder = self.locate(checkpoint, task)
        if params is not None:
            check_params(params, grid=self.grid(folder))
        return checkpoint_sha256(folder)

    def painter_name(self, checkpoint: str, task: str) -> str:
        """The provenance ``painter`` value: the kind and the checkpoint as the job named it."""
        return f"{self.name}:tiny-{task}" if checkpoint == TINY else f"{self.name}:{checkpoint}"

    def load_painter(
        self,
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
        """Resolve, fingerprint and load the pipeline for ``task`` on ``device`` in ``dtype`` (the same path
        for ``tiny`` and released checkpoints). ``compile`` and ``vae_dtype: same`` are DIM's: refused."""
        from transforms.painter.diffusers_painter import DiffusersPainter

        if compile:
            raise ValueError(
                f"painter.compile applies to painter.kind dim only (kind {self.name}), got {compile!r}"
            )
        if vae_dtype != "auto":
            raise ValueError(
                f"painter.vae_dtype applies to painter.kind dim only (kind {self.name} runs the VAE in "
                f"painter.dtype), got {vae_dtype!r}"
            )
        folder = self.locate(checkpoint, task)
        sha = checkpoint_sha256(folder)
        pipeline = load_pipeline(folder, dtype=dtype)
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        style = self.call_style()
        masked = masked_pipeline(pipeline, style.masked.pipeline) if task == "edit" and style.masked else None
        return DiffusersPainter(
            name=self.painter_name(checkpoint, task),
            task=task,
            pipeline=pipeline,
            style=style,
            checkpoint_sha256=sha,
            dtype=dtype,
            device=device,
            grid=self.grid(folder),
            noise_device=noise_device,
            vae_tile_pixels=vae_tile_pixels,
            masked_pipeline=masked,
        )


def load_pipeline(folder: Path, *, dtype):
    """The folder's pipeline (``model_index.json`` ``_class_name``) by diffusers' ``from_pretrained``, on the
    CPU in ``dtype``, with any Qwen2-VL processor component loaded by ``diffusers_processor``."""
    import diffusers

    from transforms.painter.diffusers_processor import load_processor, processor_components

    index = read_model_index(folder)
    components = {name: load_processor(folder, name) for name in processor_components(index)}
    return getattr(diffusers, index["_class_name"]).from_pretrained(str(folder), dtype=dtype, **components)


def masked_pipeline(pipeline, class_name: str):
    """The diffusers pipeline ``class_name`` over ``pipeline``'s own components (the same module objects: no
    second copy of the weights, already on the device and in the dtype). Built by the class's constructor, as
    ``DiffusionPipeline.from_pipe`` does, but without from_pipe's closing ``.to(dtype)`` (float32 unless
    told), which would recast the shared modules in place."""
    import diffusers

    other = getattr(diffusers, class_name)(**pipeline.components)
    other.set_progress_bar_config(disable=True)
    return other


def vae_config_value(folder: Path, key: str) -> Any:
    """``key`` of the checkpoint's ``vae/config.json`` (what the pipelines derive their latent grid from)."""
    config_file = Path(folder) / "vae" / "config.json"
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointNotFound(f"{config_file}: cannot read the VAE's {key}: {exc}") from exc


def _field(task: str) -> str:
    return "checkpoint" if task == "edit" else "t2i_checkpoint"
