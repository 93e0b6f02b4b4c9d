"""Find, fingerprint, load and save DIM checkpoints in the released layout.

A checkpoint is a folder with ``model.safetensors`` (released key names, see ``keymap``) and optionally
``dimflow.json`` (``{"format": 1, "task": ..., "arch": {...}}``, merged over ``config.FULL_ARCH``). It is
named by a local path or an HF repo id (fetched with ``huggingface_hub.snapshot_download``); ``locate``
adds the ``tiny`` preset on top (``tiny`` saves through this module, so this module never imports it).
Every path loads through ``load_modules``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from transforms.painter.dim import keymap
from transforms.painter.dim.config import ARCH_FORMAT, DimArch, resolve_arch

MODEL_FILE = "model.safetensors"
ARCH_FILE = "dimflow.json"
TINY = "tiny"
# What a processor folder needs (the Qwen/Qwen2.5-VL-3B-Instruct snapshot, or ours).
PROCESSOR_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "chat_template.json",
    "chat_template.jinja",
]
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_X_EMBEDDER = "decoder.model.x_embedder.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint that does not match the architecture: every offending key is listed."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("DIMFLOW_CACHE") or Path.home() / ".cache" / "dimflow")


def locate_checkpoint(checkpoint: str) -> Path:
    """A local folder or HF repo id -> local folder holding ``model.safetensors`` (``tiny``: see ``locate``)."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"checkpoint folder {path} has no {MODEL_FILE}")
        return path
    if _HF_ID.match(checkpoint) and not path.exists():
        return _snapshot(checkpoint, [MODEL_FILE, ARCH_FILE, "processor/*"])
    raise FileNotFoundError(f"checkpoint {checkpoint!r} is neither a folder, an HF repo id, nor 'tiny'")


def _snapshot(repo_id: str, patterns: list[str]) -> Path:
    """The files of an HF repo we need, from the local HF cache or the Hub (respects HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=patterns))
    except Exception as exc:  # offline, unknown repo, gated, network: say which and why
        raise FileNotFoundError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hugging Face Hub failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path, chunk: int = 16 << 20) -> str:
    """sha256 of the file's bytes, streamed; memoised per (real path, size, mtime) in this process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def read_arch(folder: Path, task: str) -> DimArch:
    """Full-size defaults, overridden by the folder's dimflow.json when present; checked against the file."""
    override: dict[str, Any] = {}
    arch_file = folder / ARCH_FILE
    if arch_file.is_file():
        meta = json.loads(arch_file.read_text(encoding="utf-8"))
        if meta.get("format") != ARCH_FORMAT:
            raise CheckpointError(
                f"{arch_file}: unsupported format {meta.get('format')!r} (expected {ARCH_FORMAT})"
            )
        if meta.get("task") not in (None, task):
            raise CheckpointError(
                f"{folder} is a {meta['task']!r} checkpoint, but the painter task is {task!r}"
            )
        override = meta.get("arch") or {}
    arch = resolve_arch(task, override)
    _check_task(folder / MODEL_FILE, arch)
    return arch


def _check_task(model_file: Path, arch: DimArch) -> None:
    """The DiT's input channels say edit (source latent concatenated) or t2i; read from the header only."""
    with safe_open(str(model_file), framework="pt") as handle:
        if _X_EMBEDDER not in handle.keys():
            raise CheckpointError(
                f"{model_file}: no {_X_EMBEDDER}; not a DIM checkpoint in the released layout"
            )
        channels_in = handle.get_slice(_X_EMBEDDER).get_shape()[1]
    expected = arch.dit_kwargs()["in_channels"]
    if channels_in != expected:
        kind = "edit" if channels_in == 2 * arch.latent_channels else "t2i"
        raise CheckpointError(
            f"{model_file}: the DiT takes {channels_in} input channels (a {kind} checkpoint), "
            f"but task {arch.task!r} needs {expected}"
        )


def processor_folder(folder: Path, arch: DimArch) -> Path:
    name = str(arch.data["processor"])
    local = folder / name
    if local.is_dir():
        return local
    if _HF_ID.match(name):
        return _snapshot(name, PROCESSOR_FILES)
    raise FileNotFoundError(f"processor {name!r}: not a folder in {folder} and not an HF repo id")


# ---------------------------------------------------------------------------------------------- building


def encoder_config(arch: DimArch):
    from transformers import Qwen2_5_VLConfig

    enc = arch.data["encoder"]
    return Qwen2_5_VLConfig(
        text_config=dict(enc["text_config"]),
        vision_config=dict(enc["vision_config"]),
        image_token_id=enc["image_token_id"],
        video_token_id=enc["video_token_id"],
        vision_start_token_id=enc["vision_start_token_id"],
        vision_end_token_id=enc["vision_end_token_id"],
        tie_word_embeddings=enc["tie_word_embeddings"],
    )


def build_components(arch: DimArch) -> dict[str, nn.Module]:
    """Fresh modules for ``arch`` (random init; build under ``torch.device('meta')`` for shapes only)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return {"encoder": Qwen2_5_VLForConditionalGeneration(encoder_config(arch)), **_build_decoder_side(arch)}


def _build_decoder_side(arch: DimArch, only: str | None = None):
    """Projector, DiT and VAE (plain nn.Modules, loaded with ``load_state_dict(assign=True)``)."""
    from transforms.painter.dim.dit import DimDiT
    from transforms.painter.dim.projector import build_projector
    from transforms.painter.dim.vae import build_vae

    proj = arch.data["projector"]
    builders = {
        "projector": lambda: build_projector(proj["in_features"], proj["out_features"]),
        "dit": lambda: DimDiT(
            arch.dit_kwargs(), arch.max_condition_length, arch.data["cross_attention_qk_norm_eps"]
        ),
        "vae": lambda: build_vae(arch.vae_kwargs()),
    }
    if only is not None:
        return builders[only]()
    return {name: build() for name, build in builders.items()}


def _tied(arch: DimArch) -> set[str]:
    return {"encoder.lm_head.weight"} if arch.data["encoder"]["tie_word_embeddings"] else set()


def components_state(components: Mapping[str, nn.Module], arch: DimArch) -> dict[str, torch.Tensor]:
    """Our flat state (``encoder.*``, ``projector.*``, ``dit.*``, ``vae.*``) without tied copies."""
    tied = _tied(arch)
    state = {}
    for name, module in components.items():
        for key, tensor in module.state_dict().items():
            full = f"{name}.{key}"
            if full not in tied:
                state[full] = tensor
    return state


def check_keys(state: Mapping[str, torch.Tensor], arch: DimArch) -> None:
    """Missing, unexpected and mis-shaped keys, all listed in one error (released names where possible)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in components_state(build_components(arch), arch).items()}
    given = {k: tuple(v.shape) for k, v in state.items() if k not in _tied(arch)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{keymap.released_name(k)} {given[k]} != {expected[k]}"
        for k in set(given) & set(expected)
        if given[k] != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_released_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_released_names(unexpected)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatches (ours, given != expected): {', '.join(mismatched[:40])}"
        )
    if problems:
        raise CheckpointError("checkpoint does not match the DIM architecture: " + "; ".join(problems))


def _released_names(keys: list[str], limit: int = 40) -> str:
    names = sorted({keymap.released_name(key) for key in keys})
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------- load / save


@dataclass
class DimModules:
    encoder: Any  # Qwen2_5_VLForConditionalGeneration
    projector: nn.Sequential
    dit: Any  # DimDiT
    vae: Any  # AutoencoderDC


def load_modules(folder: Path, arch: DimArch, *, dtype: torch.dtype, device: torch.device) -> DimModules:
    """Released weights -> our modules, strictly: any missing, extra or mis-shaped key is an error.

    Keys and shapes are checked from the file header before any tensor is read; then one component at a
    time is read, loaded, cast and moved, so host memory peaks near the largest component, not the file.
    """
    with safe_open(str(folder / MODEL_FILE), framework="pt") as handle:
        shapes = {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}
        check_keys(keymap.released_to_ours(shapes), arch)
        by_component: dict[str, list[str]] = {}
        for released, meta in shapes.items():
            mapped = keymap.released_to_ours({released: meta})
            if mapped:  # ignored keys map to nothing
                by_component.setdefault(next(iter(mapped)).partition(".")[0], []).append(released)

        def read(component: str) -> dict[str, torch.Tensor]:
            state = keymap.released_to_ours(
                {k: handle.get_tensor(k) for k in by_component.get(component, [])}
            )
            return {key.partition(".")[2]: tensor for key, tensor in state.items()}

        encoder = _load_encoder(read("encoder"), arch, dtype)
        _place(encoder, dtype, device)
        others = {}
        for name in ("projector", "dit", "vae"):
            with torch.device("meta"):
                module = _build_decoder_side(arch, only=name)
            module.load_state_dict(read(name), strict=True, assign=True)
            others[name] = _place(module, dtype, device)
    return DimModules(encoder=encoder, **others)


def _load_encoder(state: dict[str, torch.Tensor], arch: DimArch, dtype: torch.dtype):
    """transformers builds on meta, restores non-persistent buffers and re-ties lm_head for us."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if _tied(arch):
        state.pop("lm_head.weight", None)
    with _quiet_transformers():
        encoder, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            None, config=encoder_config(arch), state_dict=state, dtype=dtype, output_loading_info=True
        )
    leftovers = {k: v for k, v in info.items() if v}
    if leftovers:
        raise CheckpointError(f"encoder weights did not load cleanly: {leftovers}")
    return encoder


def _place(module: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    # nn.Module.to: diffusers' override warns about fp32-kept modules that these models do not have.
    return nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)


def save_released(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Our flat state -> ``model.safetensors`` in the released layout (sorted keys, contiguous copies)."""
    released = keymap.ours_to_released(state)
    tensors = {k: released[k].detach().to("cpu").contiguous().clone() for k in sorted(released)}
    save_file(tensors, str(path), metadata={"format": "pt"})


@contextmanager
def _quiet_transformers():
    """from_pretrained draws a progress bar per load; not useful inside a pipeline worker."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
