"""Checks made before a run starts: what would fail every row, or write where it must not.

A job that cannot succeed is refused before the pipeline is built, so it costs nothing, exits with code 2
and one line naming the field, and leaves nothing under its output (no ``run=`` or ``beam-temp-*`` folder).
Row-level problems are not checked here: they become failed provenance rows as usual.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline.spec import JobSpec
from transforms.deadline import DeadlineExceeded, call_with_deadline
from transforms.designer.base import DesignerSetupError
from transforms.designer.registry import make_provider
from transforms.manifest import ManifestLimits, match_manifest
from transforms.storage import UnsafeOutputError, check_output_folders, is_remote, write_atomic

# dimflow's own folders under an output (they must be real folders, never links planted by someone).
OUTPUT_FOLDERS = ("images", "provenance", "blueprints", "blueprints/journal", "runs")
_GLOB = re.compile(r"[*?\[]")


class PreflightError(ValueError):
    """The job cannot run as specified; the message names the field."""


def manifest_folder(pattern: str) -> str:
    """The folder that holds a manifest path or glob (absolute, as the spec resolves it): everything before
    the last ``/`` ahead of the first wildcard."""
    match = _GLOB.search(pattern)
    fixed = pattern[: match.start()] if match else pattern
    return fixed[: fixed.rfind("/")] or "/"


def _normal(path: str) -> str:
    if is_remote(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}".rstrip("/")
    return os.path.realpath(path)


def _within(path: str, folder: str) -> bool:
    path, folder = _normal(path), _normal(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_output(spec: JobSpec, run_id: str) -> None:
    """The output is a folder of its own: not the filesystem root, not a file, not the manifest's folder or
    one above it (outputs would mix with the inputs), with none of dimflow's own folders planted as links."""
    output = spec.output
    if not output.strip():
        raise PreflightError("output: empty; name a folder or a gs:// prefix of its own")
    if not is_remote(output):
        real = os.path.realpath(output)
        if real == os.path.dirname(real):
            raise PreflightError(f"output: {output!r} is the filesystem root; name a folder of its own")
        if os.path.lexists(output) and not os.path.isdir(output):
            raise PreflightError(f"output: {output!r} exists and is not a folder")
    folder = manifest_folder(spec.manifest)
    if _within(folder, output):
        raise PreflightError(
            f"output: {output!r} is the folder holding the manifest {spec.manifest!r}, or one above it; "
            "outputs would be written among the inputs: choose a separate folder"
        )
    try:
        check_output_folders(
            output, [*OUTPUT_FOLDERS, f"provenance/run={run_id}", f"blueprints/run={run_id}"]
        )
    except UnsafeOutputError as exc:
        raise PreflightError(f"output: {exc}") from exc


def check_manifest(pattern: str, limits: ManifestLimits, timeout_s: float) -> list[str]:
    """The manifest's files, each checked (``match_manifest``), within ``timeout_s`` (an unreachable
    bucket would otherwise be retried for minutes)."""
    try:
        return call_with_deadline(lambda: match_manifest(pattern, limits), timeout_s, f"manifest {pattern!r}")
    except DeadlineExceeded as exc:
        raise PreflightError(str(exc)) from exc


def check_writable(output: str, timeout_s: float) -> None:
    """Write and delete one small probe object at the output root (creating the folder if needed), within
    ``timeout_s``."""
    probe = FileSystems.join(output, f".dimflow-write-check-{uuid.uuid4().hex}")

    def write_and_delete() -> None:
        write_atomic(probe, b"dimflow write check\n", "text/plain", root=output)
        FileSystems.delete([probe])

    try:
        call_with_deadline(write_and_delete, timeout_s, f"output {output!r}")
    except DeadlineExceeded as exc:
        raise PreflightError(f"output: cannot write: {exc}") from exc
    except Exception as exc:  # PermissionError, read-only filesystem, a bucket we may not write, ...
        raise PreflightError(f"output: cannot write to {output!r}: {type(exc).__name__}: {exc}") from exc


def check_designer(spec: JobSpec) -> None:
    """The designer can start: its key is set, its local model can be found."""
    if spec.stage == "paint":
        return  # a paint run takes its blueprints from the tables and calls no designer
    try:
        make_provider(spec.designer.model_dump()).preflight()
    except DesignerSetupError as exc:
        raise PreflightError(str(exc)) from exc
