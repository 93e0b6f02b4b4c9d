"""Diffusers checkpoints (``model_index.json`` layout): name -> local folder, and the render-key fingerprint.

A checkpoint name is ``tiny`` (the kind's toy checkpoint, built on first use), a local folder, or a Hugging
Face repo id (fetched with ``huggingface_hub.snapshot_download``, which reads the local HF cache first and
respects ``HF_HUB_OFFLINE``). The fingerprint hashes what decides the pixels: ``model_index.json``, every
component's config and tokenizer files (``*.json``, ``*.txt``, ``*.jinja``) and every ``*.safetensors``
shard, as a sha256 over their relative names and per-file sha256. Per-file hashes are cached on disk by
(real path, size, mtime_ns), so a 40 GB checkpoint is read once per machine, not once per run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

MODEL_INDEX = "model_index.json"
TINY = "tiny"
# Files that decide a checkpoint's pixels: weights, configs, tokenizer files and chat templates.
FINGERPRINT_SUFFIXES = (".safetensors", ".json", ".txt", ".jinja")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CHUNK = 16 << 20
_LOG = logging.getLogger(__name__)


class CheckpointNotFound(ValueError):
    """A checkpoint name that is neither ``tiny``, a folder, nor a repo id that could be fetched."""


def resolve_folder(checkpoint: str, task: str, *, tiny: Callable[[str], Path]) -> Path:
    """Checkpoint name -> local folder holding ``model_index.json`` (``tiny`` is built for ``task``)."""
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise CheckpointNotFound(f"checkpoint must be a non-empty name, got {checkpoint!r}")
    if checkpoint == TINY:
        folder = Path(tiny(task))
    else:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            folder = path
        elif _HF_ID.match(checkpoint) and not path.exists():
            folder = _snapshot(checkpoint)
        else:
            raise CheckpointNotFound(
                f"checkpoint {checkpoint!r} is neither a folder, a Hugging Face repo id (owner/name), nor 'tiny'"
            )
    if not (folder / MODEL_INDEX).is_file():
        raise CheckpointNotFound(
            f"checkpoint {checkpoint!r} ({folder}) has no {MODEL_INDEX}: not a diffusers pipeline folder"
        )
    return folder


def _snapshot(repo_id: str) -> Path:
    """The repo's files from the local HF cache or the Hub (HF_HUB_OFFLINE=1: the cache only)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id))
    except Exception as exc:  # offline, unknown repo, gated, network: say which and why
        raise CheckpointNotFound(
            f"{repo_id!r} is not a local folder, and fetching it from the Hugging Face Hub failed "
            f"(offline? set HF_HOME to a cache holding it, or download it first): {type(exc).__name__}: {exc}"
        ) from exc


def read_model_index(folder: Path) -> dict:
    """The pipeline's ``model_index.json`` (``_class_name`` names the diffusers pipeline class)."""
    path = folder / MODEL_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointNotFound(f"{path}: cannot read it: {type(exc).__name__}: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise CheckpointNotFound(f"{path}: no _class_name naming the pipeline class")
    return index


def fingerprint_files(folder: Path) -> list[Path]:
    """The files the fingerprint covers, sorted by relative name (hidden folders such as .cache skipped)."""
    files = [
        path
        for path in folder.rglob("*")
        if path.suffix in FINGERPRINT_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def checkpoint_sha256(folder: Path, cache_dir: Path | None = None) -> str:
    """sha256 over ``relative name NUL file sha256 LF`` of every fingerprinted file, in name order."""
    files = fingerprint_files(folder)
    if not any(path.suffix == ".safetensors" for path in files):
        raise CheckpointNotFound(f"checkpoint folder {folder} holds no *.safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path, cache_dir)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file's bytes, cached on disk under (real path, size, mtime_ns): one small file per entry,
    written atomically, so concurrent processes never see a partial entry. A changed file (size or mtime)
    is hashed anew; a symlink (HF snapshots link to blobs) is hashed as the file it points to."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = hashlib.sha256(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_hash_cache()
    entry = root / key[:2] / key
    try:
        cached = entry.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            return cached
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    value = digest.hexdigest()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, scratch = tempfile.mkstemp(prefix=".hash-", dir=entry.parent)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(value + "\n")
        os.replace(scratch, entry)
    except OSError as exc:  # a read-only cache costs the next run a re-hash: said, not silent
        _LOG.warning("cannot cache the sha256 of %s under %s: %s", real, root, exc)
    return value


def default_hash_cache() -> Path:
    """``$DIMFLOW_CACHE/file-sha256`` (default ``~/.cache/dimflow/file-sha256``)."""
    return Path(os.environ.get("DIMFLOW_CACHE") or Path.home() / ".cache" / "dimflow") / "file-sha256"
