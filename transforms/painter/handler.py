"""The Beam ModelHandler for painters: RunInference loads a worker process's painters and feeds them batches.

The handler holds only plain settings (it is pickled to workers); torch and the model code are imported
when the model loads. ``checkpoint_fingerprint`` gives the driver the checkpoint hash for render keys
without loading any model.

**How work is spread over devices: one replica per device, used by several bundle threads.**
``load_model`` loads one painter on each device ``painter.device`` selects (``resolve_devices``) and
returns a ``PainterReplicas``: each ``paint`` call takes an idle replica and gives it back when done.
RunInference keeps one loaded model per process for all its DoFn instances (Beam's ``Shared`` handle,
whose key travels with the pickled DoFn), and ``load_model`` hands every RunInference transform of a run
(the paint stage of each mode, the repaint stages of best-of-N, the pipelines of its chunks) the one
``PainterReplicas`` already loaded in the process for the same load settings (``_LoadedPainters``), so
the weights are on each device once. What spreads the work is the runner running several bundles of the
paint stages at once in one process: on the embedded runner ``--direct_running_mode=multi_threading
--direct_num_workers=N`` (``dimflow run`` sets N to the replica count unless the user set either option),
which splits each stage's input into N parts and runs one bundle per part on its own thread
(``ParallelBundleManager``); on Dataflow, the threads of one SDK process. Each thread re-reads its
sources, paints its batches on an idle replica, and encodes and writes its images, so while one thread
encodes PNGs another's GPU paints (torch kernels and PIL's codecs release the GIL). Rejected designs:

- the handler splitting one big batch (N x ``batch_size`` rows) over the replicas itself: the single
  bundle thread would re-read every source and encode and write every image of that batch alone, between
  two paints, with every GPU idle meanwhile, and each big batch would wait for its slowest part;
- Beam's multi-process mode, one device per SDK process: the processes are identical (none can be told
  its device), so each would load a replica on every device;
- ``large_model`` with ``model_copies``: the copies live in other processes behind a proxy, every batch
  and its images are pickled across, and every copy is built by the same load function on one device.

The embedded runner splits a stage's input once, into N parts of about equal row count, without work
stealing: a part whose rows paint slower (bigger ``aspect: preserve`` buckets) finishes last.

**Failure isolation.** A batch that raises is painted again in halves, down to single rows, so only rows
that fail alone fail, each with its own error (a ``PaintFailure`` in place of its ``Painting``). An
out-of-memory error on a batch of several rows also halves the batch size for the rest of the run in this
process (logged once per halving; provenance ``batch_size`` is the size a row was painted in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from transforms.painter.base import (
    ASPECTS,
    DEFAULT_VAE_TILE_PIXELS,
    NOISE_DEVICES,
    TASKS,
    VAE_DTYPES,
    Painter,
    Painting,
    PaintParams,
    PaintRequest,
    compile_mode,
    device_choice,
    valid_vae_tile_pixels,
)
from transforms.painter.kinds import KIND_NAMES, get_kind
from transforms.records import error_text

KINDS = KIND_NAMES
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The attribute ``PainterReplicas`` sets on an error it passes on: the replica that raised it.
FAILED_ON = "dimflow_painter_device"

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaintFailure:
    """What ``run_inference`` gives for a row that failed when painted alone: its error as every stage writes
    errors (``Type: message``) and the painter fields known (``batch_size`` 1, the ``device`` that raised)."""

    key: str
    error: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Replica:
    """One loaded painter. ``name`` is its provenance ``device``: ``cuda:3``, or ``cpu#1`` (the second
    replica) where one device holds several; ``device`` is the torch device (None for stand-ins)."""

    name: str
    device: Any
    painter: Painter


class PainterReplicas:
    """Painters of one checkpoint on several devices, behind the ``Painter`` protocol.

    Each ``paint`` takes an idle replica (waiting while all are busy) and puts it back when done, so calls
    from different threads paint at once on different replicas. Each painting's ``device`` field names the
    replica that painted it; an error leaves with the replica's name in its ``FAILED_ON`` attribute.
    """

    def __init__(self, replicas: Sequence[Replica]):
        if not replicas:
            raise ValueError("PainterReplicas needs at least one replica")
        identities = {(r.painter.name, r.painter.task, r.painter.checkpoint_sha256) for r in replicas}
        if len(identities) > 1:
            raise ValueError(f"replicas must be one painter on several devices, got {sorted(identities)}")
        (identity,) = identities
        self.name, self.task, self.checkpoint_sha256 = identity
        self.replicas = tuple(replicas)
        self.devices = tuple(replica.name for replica in replicas)
        self._idle: queue.SimpleQueue[Replica] = queue.SimpleQueue()
        for replica in replicas:
            self._idle.put(replica)

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]:
        replica = self._idle.get()  # blocks while every replica is painting
        try:
            with _current_device(replica.device):
                paintings = replica.painter.paint(requests, params)
        except Exception as exc:
            setattr(exc, FAILED_ON, replica.name)
            raise
        finally:
            self._idle.put(replica)
        return [dataclasses.replace(p, fields={**p.fields, "device": replica.name}) for p in paintings]


def _current_device(device: Any) -> contextlib.AbstractContextManager:
    """CUDA work of this thread defaults to the replica's device (the current device is per thread)."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.device(device)
    return contextlib.nullcontext()


class _BatchLimits:
    """The most rows a painter setup paints at once in this process: ``painter.batch_size`` until an
    out-of-memory error halves it. Kept per process and run (the key holds the run id), not per loaded
    model, so it holds for the rest of the run, in every pipeline of it (the embedded runner runs each
    chunk as a new pipeline) and for no other run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[tuple, int] = {}

    def get(self, key: tuple, default: int) -> int:
        with self._lock:
            return self._limits.get(key, default)

    def lower(self, key: tuple, default: int, failed_size: int, painter: str, error: str) -> int:
        """After ``failed_size`` rows ran out of memory together: at most half of them (rounded up, as the
        batch is cut) from now on. Logged once per change: threads failing at the same size change it once.
        A single row out of memory says nothing about batches; it changes nothing."""
        with self._lock:
            current = self._limits.get(key, default)
            lowered = min(current, (failed_size + 1) // 2) if failed_size > 1 else current
            if lowered < current:
                self._limits[key] = lowered
                _LOG.warning(
                    "painter %s ran out of memory on a batch of %d rows (%s): painting at most %d rows at a "
                    "time for the rest of this run in this process (provenance batch_size is the size painted)",
                    painter,
                    failed_size,
                    error,
                    lowered,
                )
            return lowered


_BATCH_LIMITS = _BatchLimits()


class _LoadedPainters:
    """The painters loaded in this process for the run in progress, by every setting that shapes a load.

    Each RunInference transform has its own Beam ``Shared`` handle, so the paint stages of one job (the
    first paint and each unrolled repaint, ``quality.max_paints``) and the pipelines of its chunks would
    each load the painter again: N copies of the weights on a GPU. Here they share one ``PainterReplicas``
    (whose idle-replica queue then spreads all their calls). Only the latest run's painters are held: a
    new run id drops the others (they are freed once no stage of theirs holds them), so a process that
    runs job after job (tests, a service) keeps one job's painters, never a growing set. A handler outside a
    run (``run_id`` empty: direct use in tests and benchmarks) loads its own. Loads are serialized: replicas
    load one after another anyway (host memory peaks at one load)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run: str | None = None
        self._loaded: dict[tuple, PainterReplicas] = {}

    def get(self, key: tuple, run_id: str, load: Callable[[], PainterReplicas]) -> PainterReplicas:
        if not run_id:
            return load()
        with self._lock:
            if run_id != self._run:
                self._loaded.clear()
                self._run = run_id
            painter = self._loaded.get(key)
            if painter is None:
                painter = self._loaded[key] = load()
            return painter


_LOADED = _LoadedPainters()


class PainterModelHandler(ModelHandler[PaintRequest, PredictionResult, Painter]):
    def __init__(
        self,
        *,
        checkpoint: str,
        task: str,
        params: PaintParams,
        dtype: str = "auto",
        device: str | int = "auto",
        batch_size: int = 1,
        noise_device: str = "cpu",
        kind: str = "dim",
        share_across_processes: bool = False,
        compile: bool | str = False,
        vae_tile_pixels: int | None = DEFAULT_VAE_TILE_PIXELS,
        run_id: str = "",
        vae_dtype: str = "auto",
    ):
        """``device``: ``painter.device`` (one replica per device it names; see ``resolve_devices``).
        ``run_id``: the run painted for; a batch size halved after an out-of-memory error holds for the rest
        of that run in this process (its chunks are pipelines of their own), and for no other run.
        ``share_across_processes`` is Beam's ``large_model``: one model per machine for all SDK processes.
        ``compile``: False, or the ``torch.compile`` mode of the painter's denoiser (``default``,
        ``max-autotune``; True = ``default``). ``vae_tile_pixels``: outputs with more pixels than this decode
        in tiles (bounded memory, approximate seams); None never tiles. ``vae_dtype``: ``auto`` (as DIM: the
        VAE computes in float32 on its half-rounded weights when the painter runs in a half type) or
        ``same`` (in the painter's dtype). The output size itself comes with ``params`` (``resolution``,
        ``aspect``)."""
        get_kind(kind)  # its error names the registered kinds
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
        device_choice(device)  # the syntax; whether the devices exist is known where the model loads
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
        self.run_id = run_id
        self.vae_dtype = vae_dtype

    def load_model(self) -> PainterReplicas:
        """The process's painter for these load settings: loaded once per run and process, however many
        RunInference transforms ask for it (``_LOADED``; see the module docstring)."""
        devices = resolve_devices(self.device)
        key = (
            self.kind,
            self.checkpoint,
            self.task,
            self.dtype,
            str(self.device),
            tuple(replica_names(devices)),
            self.noise_device,
            self.compile,
            self.vae_tile_pixels,
            self.vae_dtype,
        )
        return _LOADED.get(key, self.run_id, lambda: self._load(devices))

    def _load(self, devices: list) -> PainterReplicas:
        """One painter per selected device, loaded one after another (host memory peaks at one load), by the
        kind's loader (``transforms.painter.kinds``)."""
        kind = get_kind(self.kind)
        replicas = [
            Replica(
                name,
                device,
                kind.load_painter(
                    self.checkpoint,
                    self.task,
                    dtype=resolve_dtype(self.dtype, device),
                    device=device,
                    noise_device=self.noise_device,
                    compile=self.compile,
                    vae_tile_pixels=self.vae_tile_pixels,
                    vae_dtype=self.vae_dtype,
                ),
            )
            for name, device in zip(replica_names(devices), devices, strict=True)
        ]
        _LOG.info(
            "painter %s: %d replica(s) on %s", self.checkpoint, len(replicas), [r.name for r in replicas]
        )
        return PainterReplicas(replicas)

    def run_inference(
        self,
        batch: Sequence[PaintRequest],
        model: Painter,
        inference_args: Mapping[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One result per row, in order: a ``Painting``, or a ``PaintFailure`` for a row that failed alone.

        The batch is painted in pieces of at most the current batch limit; a piece that raises is painted
        again in halves (``_paint_isolated``). Anything else that goes wrong (a painter giving the wrong
        number of paintings, ``inference_args``) raises: RunInference's dead letter fails the whole batch.
        """
        if inference_args:
            raise ValueError(f"the painter takes no inference_args, got {sorted(inference_args)}")
        return self._paint_isolated(list(batch), model)

    def _paint_isolated(self, requests: list[PaintRequest], model: Painter) -> list[PredictionResult]:
        """Paint ``requests`` (in pieces of the batch limit when there are more, the limit read anew for each
        piece: another thread may have lowered it); if that raises, paint them again in halves, recursively,
        so an error reaches only the rows that raise it alone."""
        limit = self.batch_limit()
        if len(requests) > limit:
            return self._paint_pieces(requests, model, limit)
        try:
            # Only method calls: with share_across_processes ``model`` is a proxy to another process.
            paintings = model.paint(requests, self.params)
        except Exception as exc:  # whatever a row makes the painter raise: the halves find that row
            error, device, out_of_memory = (
                error_text(exc),
                getattr(exc, FAILED_ON, None),
                is_out_of_memory(exc),
            )
        else:
            return [
                PredictionResult(example=request, inference=painting, model_id=painting.fields.get("painter"))
                for request, painting in zip(requests, paintings, strict=True)
            ]
        if out_of_memory:
            gc.collect()  # the failed batch's tensors were held by the error's traceback until here
            _BATCH_LIMITS.lower(
                self._limit_key(), self.batch_size, len(requests), f"{self.kind}:{self.checkpoint}", error
            )
        if len(requests) == 1:
            # What is known of the painter without a painting (attributes: None through a process proxy).
            known = {name: getattr(model, name, None) for name in ("name", "checkpoint_sha256")}
            fields = {
                "batch_size": 1,
                "painter": known["name"],
                "checkpoint_sha256": known["checkpoint_sha256"],
            }
            fields = {k: v for k, v in fields.items() if v is not None} | (
                {"device": device} if device else {}
            )
            failure = PaintFailure(requests[0].key, error, fields)
            return [PredictionResult(example=requests[0], inference=failure)]
        return self._paint_pieces(requests, model, (len(requests) + 1) // 2)

    def _paint_pieces(
        self, requests: list[PaintRequest], model: Painter, size: int
    ) -> list[PredictionResult]:
        return [
            result
            for start in range(0, len(requests), size)
            for result in self._paint_isolated(requests[start : start + size], model)
        ]

    def batch_limit(self) -> int:
        """The most rows painted at once: ``batch_size``, or less after an out-of-memory error here."""
        return _BATCH_LIMITS.get(self._limit_key(), self.batch_size)

    def _limit_key(self) -> tuple:
        """The run, and what decides the memory a batch takes: the model, where it runs, the output size."""
        return (
            self.run_id,
            self.kind,
            self.checkpoint,
            self.task,
            self.device,
            self.dtype,
            self.params,
            self.noise_device,
            self.compile,
            self.vae_tile_pixels,
            self.vae_dtype,
            self.batch_size,
        )

    def get_num_bytes(self, batch: Sequence[PaintRequest]) -> int:
        return sum(len(r.source or b"") + len(r.prompt.encode("utf-8")) for r in batch)

    def get_metrics_namespace(self) -> str:
        return f"dimflow_painter_{self.kind}"


def is_out_of_memory(error: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), or a RuntimeError
    whose message says "out of memory" (allocations outside the caching allocator: cuBLAS, cuDNN, MPS)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def resolve_devices(setting: str | int) -> list:
    """``painter.device`` -> the torch devices to load one replica on each.

    ``auto``: every CUDA device this process sees (``torch.cuda.device_count()``, which honours
    CUDA_VISIBLE_DEVICES and so the GPUs a pod was given), else the CPU; a count N: the first N of them; a
    list: those devices, in order (``cuda`` is the current CUDA device; a device may repeat). A device that
    is not there is an error naming it.
    """
    import torch

    choice = device_choice(setting)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "auto":
        return [torch.device("cuda", index) for index in range(visible)] or [torch.device("cpu")]
    if isinstance(choice, int):
        if choice > visible:
            raise ValueError(
                f"painter device {setting!r} asks for {choice} CUDA devices, but this process sees {visible} "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
            )
        return [torch.device("cuda", index) for index in range(choice)]
    devices = []
    for name in choice:
        device = torch.device(name)
        if device.type == "cuda":
            index = (
                device.index if device.index is not None else (torch.cuda.current_device() if visible else 0)
            )
            if index >= visible:
                raise ValueError(
                    f"painter device {name!r} asked for, but this process sees {visible} CUDA device(s) "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                )
            device = torch.device("cuda", index)
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"painter device {name!r} asked for, but MPS is not available here")
        devices.append(device)
    return devices


def replica_names(devices: Sequence) -> list[str]:
    """Provenance names of replicas: the device (``cuda:3``), and ``#i`` where one device holds several
    (``cpu#0``, ``cpu#1``)."""
    counts = Counter(str(device) for device in devices)
    seen: Counter = Counter()
    names = []
    for device in devices:
        name = str(device)
        if counts[name] > 1:
            names.append(f"{name}#{seen[name]}")
            seen[name] += 1
        else:
            names.append(name)
    return names


def resolve_device(device: str):
    """One device (the benchmarks' painter): ``auto`` = the first CUDA device when there is one, else CPU."""
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


def checkpoint_fingerprint(
    checkpoint: str, task: str, params: PaintParams | None = None, kind: str = "dim"
) -> str:
    """The checkpoint's sha256 for render keys, without loading a model (``tiny`` is built if needed), by the
    painter kind's own rule (DIM: its weights file; diffusers kinds: every weight and config file).

    Also checks that the checkpoint suits ``task`` (edit vs t2i) and, given ``params``, that it can paint
    them (e.g. a resolution on its latent grid), so a job that would fail every row fails on the driver.
    """
    return get_kind(kind).fingerprint(checkpoint, task, params)
