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
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

from pipeline import edit
from pipeline.spec import JobSpec
from transforms.deadline import DeadlineExceeded, call_with_deadline
from transforms.designer.base import DesignerSetupError
from transforms.designer.registry import make_provider
from transforms.judge.base import JudgeProvider, JudgeSetupError
from transforms.judge.rubric import RubricError
from transforms.manifest import ManifestLimits, match_manifest
from transforms.painter.licenses import PainterLicense, painter_license, takes_declared_license
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


def check_judge(spec: JobSpec) -> tuple[Callable[[], JudgeProvider] | None, JudgeProvider | None]:
    """The judge can start (its rubric file reads, its key is set, its model can be found): the factory that
    builds it (the rubric read here, once per run: every pipeline of the run judges with it) and the provider
    it built on the driver (its ``config()`` enters the quality keys); (None, None) without a judge. A design
    run judges nothing."""
    try:
        make_judge = edit.judge_factory(spec) if spec.stage != "design" else None
        if make_judge is None:
            return None, None
        judge = make_judge()
        judge.preflight()
    except (JudgeSetupError, RubricError) as exc:
        raise PreflightError(str(exc)) from exc
    return make_judge, judge


CHECKPOINT_FIELDS = {"edit": "painter.checkpoint", "t2i": "painter.t2i_checkpoint"}


def painter_licenses(spec: JobSpec) -> dict[str, PainterLicense]:
    """mode (edit | t2i) -> the license of the checkpoint that paints it (``transforms.painter.licenses``).

    A design run paints nothing: none. ``painter.license`` set where no checkpoint takes it (all of them are
    presets or released checkpoints with a license of their own) is refused: a known license is not
    relabelled, and a setting that does nothing must not look as if it did.
    """
    if spec.stage == "design":
        return {}
    painter = spec.painter
    checkpoints = painter.checkpoints()
    if painter.license is not None and not any(
        takes_declared_license(painter.kind, checkpoint) for checkpoint in checkpoints.values()
    ):
        named = ", ".join(f"{CHECKPOINT_FIELDS[m]} {c!r}" for m, c in checkpoints.items())
        raise PreflightError(
            f"painter.license: {painter.license!r} applies only to local checkpoint folders and HF ids "
            f"dimflow has no license for; {named} carry their own (README: Painter licenses)"
        )
    return {
        mode: painter_license(
            painter.kind,
            checkpoint,
            painter.license if takes_declared_license(painter.kind, checkpoint) else None,
        )
        for mode, checkpoint in checkpoints.items()
    }


def check_painter_license(spec: JobSpec) -> dict[str, PainterLicense]:
    """With ``painter.require_commercial_license``, every checkpoint the job paints with must be known to
    allow commercial use (a license that does not, and one not known, are both refused). Returns the
    licenses by mode."""
    licenses = painter_licenses(spec)
    if not spec.painter.require_commercial_license:
        return licenses
    checkpoints = spec.painter.checkpoints()
    for mode, found in licenses.items():
        if found.commercial_use:
            continue
        why = "does not allow commercial use" if found.commercial_use is False else "is not known to allow it"
        raise PreflightError(
            f"painter.require_commercial_license: painter kind {spec.painter.kind!r}, "
            f"{CHECKPOINT_FIELDS[mode]} {checkpoints[mode]!r} carries license {found.name!r}, which {why} "
            f"({found.source}); choose a painter whose license allows commercial use (README: Painter licenses)"
            + (
                ", or declare the folder's license with painter.license"
                if found.commercial_use is None
                else ""
            )
        )
    return licenses
