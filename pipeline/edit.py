"""Assemble the bulk-edit pipeline: read -> validate -> fetch -> design -> paint -> write -> [judge ->
repaint -> ...] -> provenance.

Every stage routes its failures to a dead-letter PCollection of ``Failure``; all of them are flattened
into the provenance write, so each manifest row yields exactly one provenance row per run. With a judge
(``judge.kind``), written rows are judged and those below ``quality.min_overall`` painted again, the loop
unrolled at build time up to ``quality.max_paints`` paints (``_best_of_n``; the decisions are
``transforms.quality``'s); every row leaves it exactly once, ``ok`` or ``rejected``.

No image bytes or pixels cross a stage boundary: records carry the source's URI and sha256, the
designer and painter read the source again where they use it (``transforms.reread``), and each mode's
images are written right after its RunInference, so only small records reach the Flattens (the
embedded runner keeps whole PCollections in memory between stages).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions

from pipeline.spec import JobSpec
from transforms import images, manifest, schema
from transforms.blueprints import JournalDesigns, LookupBlueprints, blueprint_row
from transforms.chunks import Chunk, ReadChunk
from transforms.designer.registry import make_provider
from transforms.designer.stage import DesignRecords
from transforms.history import HistoryIndex
from transforms.incremental import SkipRendered
from transforms.judge.base import JudgeProvider
from transforms.judge.scores import repaint_seed
from transforms.judge.stage import JudgeRecords
from transforms.paint_stage import Compositing, PaintMode
from transforms.painter.base import PaintParams
from transforms.painter.handler import PainterModelHandler
from transforms.painter.licenses import PainterLicense
from transforms.provenance import RunContext, provenance_row
from transforms.quality import REPAINT, decide, repaint_failed
from transforms.records import (
    STAGE_VALIDATE,
    EditRecord,
    Failure,
    ManifestRow,
)
from transforms.reread import SourceLimits
from transforms.schema import BLUEPRINT_SCHEMA, PROVENANCE_SCHEMA
from transforms.secrets import Scrubber
from transforms.shards import Shard
from transforms.tables import WriteRunTable

FAILED = "failed"
MODES = ("edit", "t2i")


@dataclass(frozen=True)
class JobKeys:
    """Configuration that names outputs: the designer and painter parts of the render key, and the judge's
    part of the quality key."""

    designer_config: dict[str, Any]
    painter_config: dict[str, Any]
    checkpoint_sha256: dict[str, str]  # mode (edit | t2i) -> sha256 of that checkpoint's weights
    default_seed: int
    # mode -> the license of that checkpoint's weights (provenance ``painter_license``; not in the render
    # key: it does not change pixels)
    painter_licenses: dict[str, PainterLicense] = field(default_factory=dict)
    # The judge's ``config()`` (model, rubric, sampling: never keys or rate limits); None: no judge stage.
    judge_config: dict[str, Any] | None = None
    min_overall: float | None = None  # quality.min_overall
    max_paints: int = 1  # quality.max_paints
    # painter.output_size: ``source`` enters every edit row's render key (its image is resized to the
    # source's size); ``resolution`` only masked rows' (unmasked rows keep the keys they had).
    output_size: str = "resolution"
    # mask.* (``mask_config``): in masked rows' render keys only, with the mask's sha256
    mask_config: dict[str, Any] = field(default_factory=dict)

    def design_key(self, record: EditRecord) -> str:
        return schema.design_key(
            source_sha256=record.source_sha256,
            instruction=record.row.instruction,
            designer_config=self.designer_config,
        )

    def with_keys(self, record: EditRecord) -> EditRecord:
        """The record with its design key, seed and render key (what names its blueprint and image) and,
        with a judge, its quality key (what an incremental run looks its outcome up by).

        A design-only job has no checkpoint hashes (its pods need no painter weights): no render key.
        """
        record = record.evolve(design_key=self.design_key(record))
        if not self.checkpoint_sha256:
            return record
        record = self.with_render_key(record)
        if self.judge_config is None:
            return record
        assert record.render_key is not None
        return record.evolve(
            quality_key=schema.quality_key(
                render_key=record.render_key,
                judge_config=self.judge_config,
                min_overall=self.min_overall,
                max_paints=self.max_paints,
            )
        )

    def with_render_key(self, record: EditRecord, seed: int | None = None) -> EditRecord:
        """The record with ``seed`` (default: the row's own, else ``painter.seed``) and its render key."""
        if seed is None:
            seed = record.row.seed if record.row.seed is not None else self.default_seed
        mode = row_mode(record.row)
        painter = {**self.painter_config, "mode": mode}
        if mode == "edit" and (self.output_size == "source" or record.row.mask):
            painter["output_size"] = self.output_size
        if record.row.mask:
            painter["mask"] = {**self.mask_config, "sha256": record.mask_sha256}
        key = schema.render_key(
            source_sha256=record.source_sha256,
            instruction=record.row.instruction,
            designer_config=self.designer_config,
            painter_config=painter,
            checkpoint_sha256=self.checkpoint_sha256[mode],
            seed=seed,
        )
        return record.evolve(seed=seed, render_key=key)

    def for_paint(self, record: EditRecord, attempt: int) -> EditRecord:
        """A judged record made ready for paint ``attempt`` (2, 3, ...): the next seed of its sequence
        (``repaint_seed`` of its first paint's seed), that seed's render key (which names the new image), and
        no image or painter fields yet (the earlier paints stay in ``record.judging``)."""
        assert record.judging is not None and record.judging.attempts, "only a judged row is repainted"
        seed = repaint_seed(record.judging.attempts[0].seed, attempt)
        return self.with_render_key(record, seed).evolve(
            output_uri=None, output_sha256=None, paint={}, paint_s=None, finished_at=None
        )


def judge_factory(spec: JobSpec) -> Callable[[], JudgeProvider] | None:
    """What builds the job's judge on a worker (and on the driver, for ``config()`` and ``preflight()``);
    None for ``judge.kind: none``. The providers are imported only when a job has a judge.

    The rubric file (``judge.rubric``) is read here, on the driver, and travels inside the judge config:
    workers never read it (on Kubernetes or Dataflow it may not exist there). A bad file raises
    ``RubricError`` naming the file and field."""
    if spec.judge.kind == "none":
        return None
    from transforms.judge.registry import make_judge
    from transforms.judge.rubric import load_rubric

    config = {**spec.judge.model_dump(), "rubric": load_rubric(spec.judge.rubric)}
    return functools.partial(make_judge, config)


def painter_config(spec: JobSpec) -> dict[str, Any]:
    """The painter settings that change pixels (they enter the render key, with the row's mode)."""
    p = spec.painter
    config: dict[str, Any] = {
        "kind": p.kind,
        "steps": p.steps,
        "guidance_scale": p.guidance_scale,
        "resolution": p.resolution,
        "dtype": p.dtype,
        "noise_device": p.noise_device,
        "aspect": p.aspect,
        # compiled kernels round differently; true/default keep the key they had as a boolean
        "compile": True if p.compile == "default" else p.compile,
        # tiling changes pixels only for outputs above the threshold (buckets stay within ~5% of R**2)
        "vae_tile_pixels": p.vae_tile_pixels
        if p.vae_tile_pixels is not None and p.resolution**2 * 1.05 > p.vae_tile_pixels
        else None,
    }
    # The VAE's precision changes pixels only when the painter may run in a half type (``dtype`` auto is
    # bfloat16 on CUDA) and the VAE then runs in float32 (``auto``); otherwise the VAE runs as it did before
    # this setting existed, and the key stays the one it was (no needless re-render of a catalog).
    if p.vae_dtype != "same" and p.dtype != "float32":
        config["vae_dtype"] = p.vae_dtype
    return config


def mask_config(spec: JobSpec) -> dict[str, Any]:
    """The mask settings that change a masked row's pixels (they enter its render key, with the mask's
    sha256 and ``painter.output_size``)."""
    return spec.mask.model_dump()


def compositing(spec: JobSpec) -> Compositing:
    """What the paint stage's write step needs to finish edit rows: ``painter.output_size``, ``mask.*`` and
    the pixel limit sources and masks were fetched under."""
    return Compositing(
        output_size=spec.painter.output_size,
        feather_px=spec.mask.feather_px,
        invert=spec.mask.invert,
        max_pixels=spec.limits.max_pixels,
    )


def part_name(shard: Shard | None, *, chunk: int | None = None, chunk_rows: int | None = None) -> str:
    """Part-file prefix: ``part``, ``part-shard-00003-of-00008`` for a shard, and for a chunked run
    ``...-chunk-00002-size-20000`` (shards and chunks never overwrite each other; a rerun of the same run
    id, shard and chunk replaces exactly this prefix's earlier rows)."""
    name = "part" if shard is None else f"part-{shard.name}"
    if chunk is not None:
        name += f"-chunk-{chunk:05d}-size-{chunk_rows}"
    return name


def row_mode(row: ManifestRow) -> str:
    """Rows with a source are edits; rows without one are text-to-image."""
    return "edit" if row.source else "t2i"


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    """``realpath`` of a folder; rows share few folders, and resolving walks every path component."""
    return os.path.realpath(folder)


def inside_output(source: str, output: str) -> bool:
    """Is ``source`` in the output tree, as written or (local paths) after resolving symlinks?"""
    if manifest.under_roots(source, [output]):
        return True
    if "://" in source or "://" in output:
        return False
    folder, name = os.path.split(source)
    real = os.path.realpath(source) if os.path.islink(source) else os.path.join(_real_folder(folder), name)
    return manifest.under_roots(real, [_real_folder(output)])


def job_row_problem(row: ManifestRow, checkpoints: dict[str, str], output: str) -> manifest.Problem | None:
    """What the job cannot do with a valid row: a row's mode needs its checkpoint (edits
    painter.checkpoint, t2i rows painter.t2i_checkpoint), and its source must lie outside the output tree
    (dimflow writes there: a source inside it could be replaced, and an output that holds its own
    sources mixes inputs with results); so must its mask. ``dimflow validate --spec`` asks the same question."""
    mode = row_mode(row)
    if mode == "edit" and inside_output(row.source, output):
        message = (
            f"{row.source!r} lies inside the job's output {output!r}; keep sources outside the output folder"
        )
    elif row.mask is not None and inside_output(row.mask, output):
        message = (
            f"{row.mask!r} lies inside the job's output {output!r}; keep masks outside the output folder"
        )
        return manifest.Problem(row.ref, row.id, "mask", message)
    elif mode not in checkpoints and mode == "edit":
        message = "given, but painter.checkpoint is null (this job paints text-to-image only)"
    elif mode not in checkpoints:
        message = (
            "missing, and painter.t2i_checkpoint is not set "
            "(rows without a source are text-to-image; set it, e.g. to stdKonjac/DIM-4.6B-T2I)"
        )
    else:
        return None
    return manifest.Problem(row.ref, row.id, "source", message)


def check_job_row(row: ManifestRow, checkpoints: dict[str, str], output: str) -> Iterable:
    """A valid row becomes an ``EditRecord``, or a failure at ``validate`` (see ``job_row_problem``)."""
    problem = job_row_problem(row, checkpoints, output)
    if problem is None:
        yield EditRecord(row, started_at=time.time())
    else:
        yield beam.pvalue.TaggedOutput(FAILED, Failure(EditRecord(row), STAGE_VALIDATE, str(problem)))


def source_limits(spec: JobSpec) -> SourceLimits:
    """The limits of every source read after the fetch stage: the fetch stage's own (``limits.*``)."""
    limits = spec.limits
    return SourceLimits(
        max_image_bytes=limits.max_image_bytes,
        fetch_timeout_s=limits.fetch_timeout_s,
        source_roots=tuple(limits.source_roots) if limits.source_roots is not None else None,
        storage_errors_before_fail_fast=limits.storage_errors_before_fail_fast,
        storage_cooldown_s=limits.storage_cooldown_s,
    )


def _design(
    keyed: beam.PCollection,
    spec: JobSpec,
    keys: JobKeys,
    blueprint_files: list[str],
    run_id: str,
    history: HistoryIndex | None,
) -> tuple[beam.PCollection, list[beam.PCollection]]:
    """Records with blueprints, and the design failures: from earlier tables, the designer, or both."""
    if spec.stage == "paint":
        found = keyed | "Blueprints" >> LookupBlueprints(
            blueprint_files, spec.output, required=True, index=history
        )
        return found.found, [found.missing]
    to_design = keyed
    reused = []
    caching = spec.designer.cache and spec.designer.kind != "none"
    if caching:  # earlier tables, then the journal of runs that did not finish
        found = keyed | "CachedBlueprints" >> LookupBlueprints(
            blueprint_files, spec.output, required=False, index=history
        )
        to_design, reused = found.missing, [found.found]
    designer_config = spec.designer.model_dump()
    new = to_design | "Design" >> DesignRecords(
        lambda: make_provider(designer_config),
        keys.design_key,
        max_batch_size=spec.designer.max_concurrency,
        source_limits=source_limits(spec),
    )
    fresh = new.designed
    if caching:
        scrub = Scrubber(spec.secret_env_names())
        fresh = fresh | "JournalDesigns" >> beam.ParDo(JournalDesigns(spec.output, run_id, scrub))
    designed = (*reused, fresh) | "Designed" >> beam.Flatten()
    return designed, [new.failed]


def paint_params(spec: JobSpec) -> PaintParams:
    """The job's sampling settings, as the painter takes them."""
    painter = spec.painter
    return PaintParams(
        steps=painter.steps,
        guidance_scale=painter.guidance_scale,
        resolution=painter.resolution,
        aspect=painter.aspect,
    )


def painter_handler(spec: JobSpec, mode: str, run_id: str = "") -> PainterModelHandler:
    """The RunInference handler for one mode's checkpoint, with the job's sampling settings (``run_id``:
    a batch size halved after an out-of-memory error holds for the rest of that run)."""
    painter = spec.painter
    return PainterModelHandler(
        checkpoint=painter.checkpoints()[mode],
        task=mode,
        kind=painter.kind,
        params=paint_params(spec),
        dtype=painter.dtype,
        device=painter.device,
        batch_size=painter.batch_size,
        noise_device=painter.noise_device,
        compile=painter.compile,
        vae_tile_pixels=painter.vae_tile_pixels,
        run_id=run_id,
        vae_dtype=painter.vae_dtype,
    )


def _paint(
    records: beam.PCollection, spec: JobSpec, run_id: str, attempt: int = 1
) -> dict[str, tuple[beam.PCollection, beam.PCollection]]:
    """Paint ``attempt`` of each mode's records: mode -> (written records, failures), for each mode the job
    has a checkpoint for. Labels: ``Paint[edit]`` for the first paint, ``Repaint2[edit]``, ... for repaints."""
    painter = spec.painter
    checkpoints = painter.checkpoints()
    prefix = "" if attempt == 1 else str(attempt)
    by_mode = records | f"ByMode{prefix}" >> beam.Partition(
        lambda record, _n: MODES.index(row_mode(record.row)), len(MODES)
    )
    painted = {}
    for mode, mode_records in zip(MODES, by_mode, strict=True):
        if mode not in checkpoints:
            continue  # check_job_row already failed these rows; this branch stays empty
        # Each mode writes its images inside PaintMode, before any Flatten: a Flatten is a stage boundary,
        # where the embedded runner holds the whole PCollection in memory, and the painted elements hold
        # the source's bytes and the painted image. Only small records and failures leave it. Every paint
        # stage's handler loads the same painter: one per process (``PainterModelHandler.load_model``).
        paint = PaintMode(
            painter_handler(spec, mode, run_id),
            source_limits(spec),
            spec.output,
            painter.output_format,
            compositing(spec),
            native_mask=spec.mask.mode == "native+composite",
        )
        label = f"Paint[{mode}]" if attempt == 1 else f"Repaint{attempt}[{mode}]"
        painted[mode] = mode_records | label >> paint.with_resource_hints(
            **spec.runner.paint_resource_hints()
        )
    return painted


def _best_of_n(
    painted: list[beam.PCollection],
    spec: JobSpec,
    keys: JobKeys,
    make_judge: Callable[[], JudgeProvider],
    run_id: str,
) -> list[beam.PCollection]:
    """Judge the painted rows and repaint those below ``quality.min_overall`` (``transforms.quality``), the
    loop unrolled at build time: ``Judge1``, ``Decide1``, ``Repaint2[edit]``, ``Judge2``, ... up to
    ``quality.max_paints``. Returns the finished rows (``ok`` or ``rejected``, each once): a repaint that
    fails becomes its row's ``rejected`` record here, never a failure (the row has an image)."""
    quality = spec.quality
    limits = source_limits(spec)
    # Painted images lie under the output, not under limits.source_roots; the same byte and time limits.
    image_limits = dataclasses.replace(limits, source_roots=None)
    finished = []
    to_judge = painted | "Painted" >> beam.Flatten()
    for attempt in range(1, quality.max_paints + 1):
        judged = to_judge | f"Judge{attempt}" >> JudgeRecords(
            make_judge,
            source_limits=limits,
            image_limits=image_limits,
            max_batch_size=spec.judge.max_concurrency,
        )
        decided = judged | f"Decide{attempt}" >> beam.FlatMap(
            decide, quality.min_overall, quality.max_paints
        ).with_outputs(REPAINT, main="finished")
        finished.append(decided.finished)
        if attempt == quality.max_paints:  # the last decision repaints nothing
            break
        again = decided[REPAINT] | f"Reseed{attempt + 1}" >> beam.Map(keys.for_paint, attempt + 1)
        repainted = _paint(again, spec, run_id, attempt + 1)
        for mode, (_written, failures) in repainted.items():
            finished.append(
                failures
                | f"RepaintFailed{attempt + 1}[{mode}]"
                >> beam.Map(repaint_failed, quality.min_overall, quality.max_paints)
            )
        written = [written for written, _failures in repainted.values()]
        to_judge = written | f"Repainted{attempt + 1}" >> beam.Flatten()
    return finished


def build(
    pipeline: beam.Pipeline,
    spec: JobSpec,
    *,
    run_id: str,
    keys: JobKeys,
    versions_json: str,
    progress: beam.PTransform | None = None,
    blueprint_files: list[str] | None = None,
    shard: Shard | None = None,
    provenance_files: list[str] | None = None,
    attempt: str,
    chunk: Chunk | None = None,
    part: str | None = None,
    history: HistoryIndex | None = None,
    make_judge: Callable[[], JudgeProvider] | None = None,
) -> None:
    """Add the job's transforms to ``pipeline`` (which the caller runs).

    ``blueprint_files`` are earlier runs' blueprint tables (listed by the caller before the run starts):
    ``stage: paint`` takes every blueprint from them; the other stages reuse them when
    ``designer.cache`` is on, so unchanged rows cost no designer call. With ``shard`` only the rows
    whose id hashes to it are processed, and part files are named after it. ``provenance_files`` are
    earlier runs' provenance, which an incremental run joins on render key to skip rendered rows.
    ``attempt`` (``tables.new_attempt()``) tags this write's part files, so a rerun of the same run id
    and shard replaces its earlier rows instead of adding to them (see transforms/tables.py).
    ``chunk`` (a planned window of the shard's rows, duplicate ids already marked over the whole manifest:
    ``transforms.chunks``) replaces reading the manifest, and ``part`` names the part files (default:
    ``part_name(shard)``).
    ``history`` (embedded runners) answers the earlier-runs lookups from a local index instead of
    joining ``blueprint_files`` / ``provenance_files`` in the pipeline.
    ``make_judge`` (``judge_factory``, built once per run by the preflight: the rubric file read once) builds
    the judge on workers; None: no judge stage.
    """
    limits = spec.limits
    context = RunContext(
        run_id=run_id,
        versions_json=versions_json,
        scrub=Scrubber(spec.secret_env_names()),
        painter_licenses={mode: found.name for mode, found in keys.painter_licenses.items()},
    )
    manifest_limits = limits.manifest_limits()
    if chunk is not None:
        workers = pipeline.options.view_as(DirectOptions).direct_num_workers
        raw = pipeline | "ReadChunk" >> ReadChunk(chunk, spread=workers != 1)
    else:
        raw = pipeline | "ReadManifest" >> manifest.ReadManifest(spec.manifest, manifest_limits)
        if shard is not None:
            raw = raw | "KeepShard" >> beam.Filter(shard.owns)
    part = part or part_name(shard)
    validated = raw | "ValidateRows" >> manifest.ValidateRows(
        manifest_limits, duplicates_marked=chunk is not None
    )
    moded = validated.valid | "CheckJobRow" >> beam.FlatMap(
        check_job_row, spec.painter.checkpoints(), spec.output
    ).with_outputs(FAILED, main="ok")
    fetched = moded.ok | "FetchImages" >> images.FetchImages(
        max_image_bytes=limits.max_image_bytes,
        max_pixels=limits.max_pixels,
        fetch_timeout_s=limits.fetch_timeout_s,
        source_roots=limits.source_roots,
        storage_errors_before_fail_fast=limits.storage_errors_before_fail_fast,
        storage_cooldown_s=limits.storage_cooldown_s,
        mask_invert=spec.mask.invert,
    )
    keyed = fetched.ok | "Keys" >> beam.Map(keys.with_keys)
    skipped = []
    if spec.incremental and spec.stage != "design":  # a design run has no render keys
        done = keyed | "SkipRendered" >> SkipRendered(
            spec.output,
            spec.painter.output_format,
            provenance_files or [],
            index=history,
            judged=keys.judge_config is not None,
        )
        keyed, skipped = done.todo, [done.skipped]
    early_failures = [validated.failed, moded.failed, fetched.failed]

    designed, design_failures = _design(keyed, spec, keys, blueprint_files or [], run_id, history)
    if spec.stage in ("all", "design"):
        blueprints = (
            (designed, *early_failures, *design_failures)
            | "DesignDone" >> beam.Flatten()
            | "BlueprintRows" >> beam.Map(lambda item: blueprint_row(item, context, time.time()))
        )
        if spec.stage == "design" and progress is not None:  # a design run reports its blueprint rows
            blueprints = blueprints | "Progress" >> progress
        blueprints | "WriteBlueprints" >> WriteRunTable(
            spec.output, "blueprints", run_id, BLUEPRINT_SCHEMA, attempt, part
        )
    if spec.stage == "design":
        return

    painted = _paint(designed, spec, run_id)
    written_parts = [written for written, _failed in painted.values()]
    paint_failed_parts = [failed for _written, failed in painted.values()]
    if make_judge is not None:
        written_parts = _best_of_n(written_parts, spec, keys, make_judge, run_id)

    failures = (*early_failures, *design_failures, *paint_failed_parts) | "AllFailures" >> beam.Flatten()
    rows = (
        (*written_parts, *skipped, failures)
        | "Finished" >> beam.Flatten()
        | "ProvenanceRows" >> beam.Map(lambda item: provenance_row(item, context, time.time()))
    )
    if progress is not None:
        rows = rows | "Progress" >> progress
    rows | "WriteProvenance" >> WriteRunTable(
        spec.output, "provenance", run_id, PROVENANCE_SCHEMA, attempt, part
    )
