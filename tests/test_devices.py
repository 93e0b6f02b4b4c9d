"""Painter replicas on several devices, failure isolation inside a painter batch, and the paint stage's
resource hints.

Stand-in painters (``FakePainter``) replace ``load_dim_painter`` in this process: the embedded runner runs
its workers as threads of the test process, so the patched loader is what RunInference calls. One run uses
the real tiny painter on two CPU "devices".
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import pytest
import torch
import yaml
from apache_beam.transforms.resources import parse_resource_hints
from PIL import Image
from rich.console import Console

from pipeline import cli, edit
from pipeline.run import painter_thread_args, read_provenance, run_job
from pipeline.spec import JobSpec, load_spec
from tests.e2e_support import check_statuses, local_case
from transforms.painter.base import Painting, PaintParams, PaintRequest
from transforms.painter.handler import (
    FAILED_ON,
    PainterModelHandler,
    PainterReplicas,
    PaintFailure,
    Replica,
    replica_names,
    resolve_devices,
)
from transforms.tables import new_attempt

MARK = "EXPLODE"  # a row whose instruction holds this makes the stand-in painter raise
PARAMS = PaintParams(steps=1, guidance_scale=7.5, resolution=32)
HANDLER_LOG = "transforms.painter.handler"


# ------------------------------------------------------------------------------------------ stand-ins


@dataclass
class PaintLog:
    """What every stand-in painter of one test did: (replica load index, keys) per paint call, and per call
    that returned its paintings."""

    calls: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    done: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)  # the device each replica was loaded on, in order
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Overlap: the first paint call waits (bounded) for a second one to be in flight at the same time.
    in_flight: int = 0
    most_in_flight: int = 0
    overlapped: threading.Event = field(default_factory=threading.Event)
    wait_for_overlap_s: float = 0.0

    def painted(self) -> Counter:
        return Counter(key for _index, keys in self.done for key in keys)


class FakePainter:
    """Paints an 8x8 image per row; raises on marked rows (``MARK`` in the prompt) and, when ``oom_above`` is
    set, ``torch.OutOfMemoryError`` for batches of more rows than that."""

    def __init__(self, task: str, index: int, log: PaintLog, oom_above: int | None = None):
        self.name = f"fake:{task}"
        self.task = task
        self.checkpoint_sha256 = "f" * 64
        self._index = index
        self._log = log
        self._oom_above = oom_above

    def paint(self, requests: Sequence[PaintRequest], params: PaintParams) -> list[Painting]:
        log = self._log
        with log.lock:
            log.calls.append((self._index, tuple(r.key for r in requests)))
            log.in_flight += 1
            log.most_in_flight = max(log.most_in_flight, log.in_flight)
            first = len(log.calls) == 1
            if log.in_flight >= 2:
                log.overlapped.set()
        try:
            if first and log.wait_for_overlap_s:
                log.overlapped.wait(log.wait_for_overlap_s)  # bounded: a run without overlap goes on
            if self._oom_above is not None and len(requests) > self._oom_above:
                raise torch.OutOfMemoryError(f"CUDA out of memory: {len(requests)} rows do not fit")
            for request in requests:
                if MARK in request.prompt:
                    raise ValueError(f"row {request.key!r}: the stand-in painter refuses {MARK}")
            fields = {
                "painter": self.name,
                "checkpoint_sha256": self.checkpoint_sha256,
                "steps": params.steps,
                "guidance_scale": params.guidance_scale,
                "dtype": "float32",
                "device": "cpu",
                "batch_size": len(requests),
                "width": 8,
                "height": 8,
            }
            paintings = [
                Painting(r.key, Image.new("RGB", (8, 8), (9, 9, 9)), 0.0, dict(fields)) for r in requests
            ]
            with log.lock:
                log.done.append((self._index, tuple(r.key for r in requests)))
            return paintings
        finally:
            with log.lock:
                log.in_flight -= 1


@pytest.fixture
def fake_painters(monkeypatch):
    """Replace the DIM loader with ``FakePainter``s; returns the log and a setter for ``oom_above``."""
    log = PaintLog()
    settings: dict = {"oom_above": None}

    def load(checkpoint, task, *, dtype, device, **_kwargs):
        with log.lock:
            index = len(log.loads)
            log.loads.append(str(device))
        return FakePainter(task, index, log, settings["oom_above"])

    monkeypatch.setattr("transforms.painter.dim.pipeline.load_dim_painter", load)
    return log, settings


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), (200, 30, 30)).save(path)


def _job(tmp_path: Path, rows: int, *, marked: Sequence[int] = (), **sections) -> Path:
    """A spec over ``rows`` edit rows of one source (rows in ``marked`` carry ``MARK``), no t2i checkpoint."""
    _image(tmp_path / "images" / "red.png")
    lines = [
        json.dumps(
            {
                "id": f"row-{i:03d}",
                "source": "images/red.png",
                "instruction": f"edit {i}" + (f" {MARK}" if i in marked else ""),
                "seed": i,
            }
        )
        for i in range(rows)
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    spec = {
        "name": "devices",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32, "batch_size": 1},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec_path: Path, beam_args: Sequence[str] = ()) -> tuple[list[dict], str]:
    console = io.StringIO()
    result = run_job(
        load_spec(spec_path),
        list(beam_args),
        console=Console(file=console, width=200),
        show_progress=False,
    )
    return read_provenance(str(spec_path.parent / "out"), result.run_id).to_pylist(), console.getvalue()


# ------------------------------------------------------------------------ replicas, end to end


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunk_rows", [None, 9])
def test_two_replicas_share_a_run_and_paint_every_row_once(tmp_path, fake_painters, chunk_rows):
    log, _settings = fake_painters
    log.wait_for_overlap_s = 60.0
    spec = _job(
        tmp_path, 24, painter={"device": "cpu,cpu", "batch_size": 2}, runner={"chunk_rows": chunk_rows}
    )
    rows, console = _run(spec)

    assert "2 replicas (cpu#0, cpu#1)" in console and "--direct_num_workers=2" in console
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok"}
    assert log.painted() == Counter({f"row-{i:03d}": 1 for i in range(24)})  # each row painted once
    assert log.overlapped.is_set() and log.most_in_flight == 2  # both replicas painted at the same time
    painted_by = {key: f"cpu#{index % 2}" for index, keys in log.done for key in keys}
    assert {r["id"]: r["device"] for r in rows} == painted_by  # provenance names the replica that painted
    assert {r["device"] for r in rows} == {"cpu#0", "cpu#1"}
    # two replicas, loaded once for the run: the chunk pipelines share them (PainterModelHandler.load_model)
    assert log.loads == ["cpu", "cpu"]


@pytest.mark.timeout(300)
def test_explicit_runner_options_win(tmp_path, fake_painters):
    log, _settings = fake_painters
    spec = _job(tmp_path, 6, painter={"device": "cpu,cpu"}, runner={"options": {"direct_num_workers": 1}})
    rows, console = _run(spec)
    assert "direct_num_workers set by you" in console and "--direct_running_mode" not in console
    assert log.most_in_flight == 1  # one bundle thread: never two paints at once
    assert log.painted() == Counter({f"row-{i:03d}": 1 for i in range(6)})
    assert {r["status"] for r in rows} == {"ok"} and {r["device"] for r in rows} <= {"cpu#0", "cpu#1"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_painter_on_two_cpu_replicas(tmp_path):
    case = local_case(tmp_path, painter={"device": "cpu,cpu", "steps": 1, "resolution": 64})
    result = run_job(load_spec(case.spec_path), show_progress=False)
    table = read_provenance(case.output, result.run_id)
    check_statuses(table)
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    edits = {r["device"] for r in ok if r["mode"] == "edit"}
    assert edits == {"cpu#0", "cpu#1"}  # five edit rows in three batches: both replicas painted
    assert {r["device"] for r in ok} <= {"cpu#0", "cpu#1"}


def test_a_device_that_is_not_there_refuses_the_job(tmp_path, capsys):
    spec = _job(tmp_path, 2, painter={"device": "cuda:5"})
    if torch.cuda.is_available() and torch.cuda.device_count() > 5:
        pytest.skip("this machine has a cuda:5")
    assert cli.main(["run", str(spec), "--no-progress"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "painter.device" in err and "'cuda:5'" in err
    assert not (tmp_path / "out" / "provenance").exists()


# --------------------------------------------------------------------- the driver's thread args


def _spec(stage: str = "all", **sections) -> JobSpec:
    data = {
        "name": "t",
        "manifest": "m.jsonl",
        "output": "out",
        "stage": stage,
        "painter": {"checkpoint": "tiny"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return JobSpec.model_validate(data)


TWO = {"device": "cpu,cpu"}


@pytest.mark.parametrize(
    ("spec", "beam_args", "expected", "said"),
    [
        (
            _spec(painter={"device": "cpu,cpu,cpu"}),
            [],
            ["--direct_running_mode=multi_threading", "--direct_num_workers=3"],
            "3 replicas (cpu#0, cpu#1, cpu#2); one bundle thread each",
        ),
        (_spec(painter={"device": "cpu"}), [], [], ""),
        (
            _spec(painter=TWO, runner={"options": {"direct_running_mode": "multi_processing"}}),
            [],
            [],
            "direct_running_mode set by you",
        ),
        (_spec(painter=TWO), ["--direct_num_workers", "4"], [], "direct_num_workers set by you"),
        (_spec(painter=TWO), ["--direct_running_mode=in_memory"], [], "direct_running_mode set by you"),
        (_spec(painter=TWO, runner={"name": "DataflowRunner"}), [], [], ""),
        (_spec("design", painter=TWO), [], [], ""),
    ],
)
def test_painter_thread_args(spec, beam_args, expected, said):
    out = io.StringIO()
    assert painter_thread_args(spec, beam_args, Console(file=out, width=200)) == expected
    if said:
        assert said in out.getvalue()
    else:
        assert out.getvalue() == ""


# --------------------------------------------------------------------------------- PainterReplicas


class _Held:
    """A painter that signals when it starts and paints only once released (bounded waits)."""

    def __init__(self, barrier: threading.Barrier | None = None):
        self.name, self.task, self.checkpoint_sha256 = "held", "edit", "0" * 64
        self.started = threading.Event()
        self.release = threading.Event()
        self.barrier = barrier
        self.fail = False

    def paint(self, requests, params):
        self.started.set()
        if self.barrier is not None:
            self.barrier.wait()  # both replicas inside paint at once, or BrokenBarrierError on timeout
        assert self.release.wait(30), "never released"
        if self.fail:
            raise RuntimeError("replica broke")
        fields = {"painter": self.name, "device": "cpu", "batch_size": len(requests)}
        return [Painting(r.key, Image.new("RGB", (2, 2)), 0.0, dict(fields)) for r in requests]


def _request(key: str) -> PaintRequest:
    return PaintRequest(key=key, prompt="p", seed=0, source=None)


def _in_thread(replicas: PainterReplicas, key: str, out: dict) -> threading.Thread:
    def target():
        try:
            out[key] = replicas.paint([_request(key)], PARAMS)
        except Exception as exc:  # kept for the test to look at
            out[key] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
def test_replicas_paint_at_once_and_a_third_call_waits_for_one():
    barrier = threading.Barrier(2, timeout=20)  # passes only while both replicas are inside paint at once
    first, second = _Held(barrier), _Held(barrier)
    replicas = PainterReplicas([Replica("cpu#0", None, first), Replica("cpu#1", None, second)])
    assert replicas.devices == ("cpu#0", "cpu#1") and replicas.name == "held"
    out: dict = {}
    a, b = _in_thread(replicas, "a", out), _in_thread(replicas, "b", out)
    assert first.started.wait(20) and second.started.wait(20)
    first.barrier = second.barrier = None
    c = _in_thread(replicas, "c", out)
    c.join(0.2)
    assert c.is_alive() and "c" not in out  # both replicas busy: the third call waits for one
    second.release.set()  # cpu#1 finishes and comes free: "c" takes it
    c.join(20)
    assert not c.is_alive()
    first.release.set()
    a.join(20)
    b.join(20)
    assert all(isinstance(result, list) for result in out.values()), out  # no BrokenBarrierError
    devices = {key: result[0].fields["device"] for key, result in out.items()}
    assert {devices["a"], devices["b"]} == {"cpu#0", "cpu#1"}  # one replica each
    assert devices["c"] == "cpu#1"  # the replica that came free, not the busy one
    assert all(result[0].fields["batch_size"] == 1 for result in out.values())


def test_an_error_names_its_replica_and_gives_the_replica_back():
    only = _Held()
    only.release.set()
    only.fail = True
    replicas = PainterReplicas([Replica("cpu", None, only)])
    with pytest.raises(RuntimeError, match="replica broke") as info:
        replicas.paint([_request("a")], PARAMS)
    assert getattr(info.value, FAILED_ON) == "cpu"
    only.fail = False
    (painting,) = replicas.paint([_request("b")], PARAMS)  # not lost: a lost replica would block forever
    assert painting.fields["device"] == "cpu"


def test_replicas_must_be_one_painter():
    held, other = _Held(), _Held()
    other.checkpoint_sha256 = "1" * 64
    with pytest.raises(ValueError, match="one painter on several devices"):
        PainterReplicas([Replica("cpu#0", None, held), Replica("cpu#1", None, other)])
    with pytest.raises(ValueError, match="at least one replica"):
        PainterReplicas([])


# --------------------------------------------------------------------------------- resolve_devices


def test_resolve_devices_here():
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert replica_names(resolve_devices("cpu,cpu")) == ["cpu#0", "cpu#1"]
    assert [str(d) for d in resolve_devices("auto")] == (
        [f"cuda:{i}" for i in range(visible)] if visible else ["cpu"]
    )
    with pytest.raises(
        ValueError, match=rf"asks for {visible + 1} CUDA devices, but this process sees {visible}"
    ):
        resolve_devices(visible + 1)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_resolve_devices_without_mps():
    with pytest.raises(ValueError, match="'mps' asked for, but MPS is not available"):
        resolve_devices("mps")


@pytest.fixture
def two_gpus(monkeypatch):
    """torch as a process that sees two CUDA devices, the current one cuda:1 (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")


def test_resolve_devices_with_two_visible_gpus(two_gpus):
    assert [str(d) for d in resolve_devices("auto")] == ["cuda:0", "cuda:1"]
    assert [str(d) for d in resolve_devices(1)] == ["cuda:0"]
    assert [str(d) for d in resolve_devices("2")] == ["cuda:0", "cuda:1"]
    assert [str(d) for d in resolve_devices("cuda")] == ["cuda:1"]  # the current device
    assert replica_names(resolve_devices("cuda:1,cuda:0")) == ["cuda:1", "cuda:0"]
    assert replica_names(resolve_devices("cuda:1,cuda,cuda:0")) == ["cuda:1#0", "cuda:1#1", "cuda:0"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (3, "asks for 3 CUDA devices, but this process sees 2 (CUDA_VISIBLE_DEVICES='4,7')"),
        ("cuda:5", "'cuda:5' asked for, but this process sees 2 CUDA device(s) (CUDA_VISIBLE_DEVICES='4,7')"),
        ("cuda:0,cuda:2", "'cuda:2' asked for"),
        ("gpu:0", "'gpu:0' is not a device"),
        ("cuda:0,cpu", "devices of one kind"),
        (0, "at least 1"),
    ],
)
def test_resolve_devices_errors_name_the_device(two_gpus, setting, message):
    with pytest.raises(ValueError) as info:
        resolve_devices(setting)
    assert message in str(info.value)


def test_handler_checks_the_device_syntax():
    with pytest.raises(ValueError, match="'tpu' is not a device"):
        PainterModelHandler(checkpoint="tiny", task="edit", params=PARAMS, device="tpu")


# ------------------------------------------------------------------ failure isolation, handler level


def _handler(batch_size: int, run_id: str) -> PainterModelHandler:
    return PainterModelHandler(
        checkpoint="tiny", task="edit", params=PARAMS, batch_size=batch_size, device="cpu", run_id=run_id
    )


def _replicas(log: PaintLog, oom_above: int | None = None) -> PainterReplicas:
    return PainterReplicas([Replica("cpu", None, FakePainter("edit", 0, log, oom_above))])


def _requests(n: int, marked: Sequence[int] = ()) -> list[PaintRequest]:
    return [
        PaintRequest(key=f"k{i}", prompt=f"p {MARK}" if i in marked else "p", seed=i, source=None)
        for i in range(n)
    ]


@pytest.mark.parametrize("bad", [0, 3, 7])
def test_one_bad_row_in_a_batch_of_eight_fails_alone(bad):
    log = PaintLog()
    results = _handler(8, f"isolate-{bad}").run_inference(_requests(8, [bad]), _replicas(log))
    assert [r.example.key for r in results] == [f"k{i}" for i in range(8)]  # one result per row, in order
    failed = [r for r in results if isinstance(r.inference, PaintFailure)]
    assert [r.example.key for r in failed] == [f"k{bad}"]
    assert failed[0].inference.error == f"ValueError: row 'k{bad}': the stand-in painter refuses {MARK}"
    assert failed[0].inference.fields == {
        "batch_size": 1,
        "device": "cpu",
        "painter": "fake:edit",  # what is known of the painter without a painting
        "checkpoint_sha256": "f" * 64,
    }
    sizes = sorted(r.inference.fields["batch_size"] for r in results if r not in failed)
    assert sizes == [1, 2, 2, 4, 4, 4, 4]  # the clean half at 4, the clean quarter at 2, the neighbour alone
    assert sorted(len(keys) for _i, keys in log.calls) == [1, 1, 2, 2, 4, 4, 8]  # 7 tries for 8 rows


def test_two_bad_rows_and_an_all_bad_batch():
    log = PaintLog()
    results = _handler(4, "isolate-two").run_inference(_requests(4, [1, 2]), _replicas(log))
    assert [isinstance(r.inference, PaintFailure) for r in results] == [False, True, True, False]
    results = _handler(4, "isolate-all").run_inference(_requests(4, [0, 1, 2, 3]), _replicas(PaintLog()))
    assert all(isinstance(r.inference, PaintFailure) for r in results)
    assert [r.inference.key for r in results] == ["k0", "k1", "k2", "k3"]  # each with its own error
    assert all(f"'k{i}'" in r.inference.error for i, r in enumerate(results))


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(caplog):
    caplog.set_level(logging.WARNING, logger=HANDLER_LOG)
    log = PaintLog()
    replicas = _replicas(log, oom_above=2)
    handler = _handler(8, "oom-halving")
    results = handler.run_inference(_requests(8), replicas)
    assert all(isinstance(r.inference, Painting) for r in results)
    assert {r.inference.fields["batch_size"] for r in results} == {2}
    assert [len(keys) for _i, keys in log.calls] == [8, 4, 2, 2, 2, 2]  # 8 and 4 ran out; then pieces of 2
    assert handler.batch_limit() == 2
    later = handler.run_inference(_requests(8), replicas)  # the next batch starts at the lowered size
    assert [len(keys) for _i, keys in log.calls[6:]] == [2, 2, 2, 2]
    assert {r.inference.fields["batch_size"] for r in later} == {2}
    warnings = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(warnings) == 2 and "at most 4 rows" in warnings[0] and "at most 2 rows" in warnings[1]
    assert "OutOfMemoryError: CUDA out of memory: 8 rows do not fit" in warnings[0]
    assert _handler(8, "another-run").batch_limit() == 8  # another run starts at painter.batch_size


def test_a_row_out_of_memory_alone_fails_with_its_error_and_keeps_the_limit(caplog):
    caplog.set_level(logging.WARNING, logger=HANDLER_LOG)
    handler = _handler(1, "oom-alone")
    (result,) = handler.run_inference(_requests(1), _replicas(PaintLog(), oom_above=0))
    assert isinstance(result.inference, PaintFailure)
    assert result.inference.error == "OutOfMemoryError: CUDA out of memory: 1 rows do not fit"
    assert handler.batch_limit() == 1 and not [r for r in caplog.records if "out of memory" in r.getMessage()]


def test_a_painter_giving_the_wrong_number_of_paintings_fails_the_batch():
    class Short(FakePainter):
        def paint(self, requests, params):
            return super().paint(requests, params)[:-1]

    replicas = PainterReplicas([Replica("cpu", None, Short("edit", 0, PaintLog()))])
    with pytest.raises(ValueError, match="zip"):
        _handler(2, "short").run_inference(_requests(2), replicas)


# ------------------------------------------------------------------ failure isolation, end to end


@pytest.mark.timeout(300)
def test_one_marked_row_of_eight_fails_alone_end_to_end(tmp_path, fake_painters):
    log, _settings = fake_painters
    spec = _job(
        tmp_path,
        8,
        marked=[5],
        painter={"batch_size": 8, "device": "cpu"},
        # the embedded runner ignores resource hints: the run is the same with them
        runner={"paint_accelerator": "type:nvidia-l4;count:1;install-nvidia-driver", "paint_min_ram": "1GB"},
    )
    rows, _console = _run(spec)
    assert any(len(keys) == 8 and "row-005" in keys for _i, keys in log.calls)  # all eight in one batch
    assert len(rows) == 8
    ok = [r for r in rows if r["status"] == "ok"]
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 7 and all(Path(r["output_uri"]).is_file() for r in ok)
    assert (failed["id"], failed["error_stage"], failed["batch_size"]) == ("row-005", "paint", 1)
    assert (failed["painter"], failed["checkpoint_sha256"], failed["device"]) == (
        "fake:edit",
        "f" * 64,
        "cpu",
    )
    assert failed["error"] == f"ValueError: row 'row-005': the stand-in painter refuses {MARK}"
    assert sorted(r["batch_size"] for r in ok) == [1, 2, 2, 4, 4, 4, 4]


@pytest.mark.timeout(300)
def test_out_of_memory_end_to_end(tmp_path, fake_painters, caplog):
    caplog.set_level(logging.WARNING, logger=HANDLER_LOG)
    log, settings = fake_painters
    settings["oom_above"] = 2
    spec = _job(tmp_path, 12, painter={"batch_size": 4, "device": "cpu"})
    rows, _console = _run(spec)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    assert {r["batch_size"] for r in rows} == {2}  # the size actually painted, not painter.batch_size
    assert [len(keys) for _i, keys in log.calls].count(4) == 1  # only the first batch of 4 ran out
    assert log.painted() == Counter({f"row-{i:03d}": 1 for i in range(12)})  # each row's image once
    warnings = [r for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(warnings) == 1 and "at most 2 rows" in warnings[0].getMessage()


# ------------------------------------------------------------------------------- resource hints


ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"


def _built(tmp_path: Path, **runner) -> beam.Pipeline:
    _image(tmp_path / "images" / "red.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "source": "images/red.png", "instruction": "x"}))
    spec = JobSpec.model_validate(
        {
            "name": "hints",
            "manifest": str(tmp_path / "m.jsonl"),
            "output": str(tmp_path / "out"),
            "painter": {"checkpoint": "tiny", "t2i_checkpoint": "tiny"},
            "runner": runner,
        }
    )
    keys = edit.JobKeys(
        designer_config={},
        painter_config=edit.painter_config(spec),
        checkpoint_sha256={"edit": "e" * 64, "t2i": "f" * 64},
        default_seed=1,
    )
    pipeline = beam.Pipeline("FnApiRunner")
    edit.build(pipeline, spec, run_id="r1", keys=keys, versions_json="{}", attempt=new_attempt())
    return pipeline


def _hinted_transforms(pipeline: beam.Pipeline) -> dict[str, dict[str, bytes]]:
    """Transform name -> resource hints, from the pipeline proto a runner receives."""
    proto = pipeline.to_runner_api()
    environments = proto.components.environments
    hinted = {}
    for transform in proto.components.transforms.values():
        if transform.environment_id and environments[transform.environment_id].resource_hints:
            hinted[transform.unique_name] = dict(environments[transform.environment_id].resource_hints)
    return hinted


class _Applied(beam.pipeline.PipelineVisitor):
    def __init__(self):
        self.hints: dict[str, dict] = {}

    def enter_composite_transform(self, node):
        self.visit_transform(node)

    def visit_transform(self, node):
        self.hints[node.full_label] = dict(node.resource_hints)


def test_paint_hints_are_on_the_paint_transforms_and_nowhere_else(tmp_path):
    pipeline = _built(tmp_path, paint_accelerator=ACCELERATOR, paint_min_ram="32GB")
    expected = parse_resource_hints({"accelerator": ACCELERATOR, "min_ram": "32GB"})
    assert expected == {
        "beam:resources:accelerator:v1": ACCELERATOR.encode(),
        "beam:resources:min_ram_bytes:v1": b"32000000000",
    }
    hinted = _hinted_transforms(pipeline)
    modes = ("Paint[edit]", "Paint[t2i]")
    assert {name for name in hinted if "/" not in name} == set(modes)  # one paint transform per mode
    assert all(name.split("/")[0] in modes for name in hinted)  # and nothing outside them
    assert all(hints == expected for hints in hinted.values())
    for mode in modes:  # the steps that need the GPU worker: re-read, paint, write
        for step in ("ToPaintRequest", "RunInference", "WriteImages"):
            assert any(name.startswith(f"{mode}/{step}") for name in hinted), (mode, step)
    for other in ("ReadManifest", "FetchImages", "Design", "WriteProvenance", "WriteBlueprints", "ByMode"):
        assert not any(name.startswith(other) for name in hinted), other

    visitor = _Applied()
    pipeline.visit(visitor)
    applied = {name for name, hints in visitor.hints.items() if hints}
    assert applied and all(name.split("/")[0] in modes for name in applied)
    assert {name for name in applied if "/" not in name} == set(modes)
    assert all(visitor.hints[name] == expected for name in applied)


def test_no_hints_without_paint_settings(tmp_path):
    pipeline = _built(tmp_path)
    assert _hinted_transforms(pipeline) == {}
    visitor = _Applied()
    pipeline.visit(visitor)
    assert not any(visitor.hints.values())


def test_only_min_ram(tmp_path):
    hinted = _hinted_transforms(_built(tmp_path, paint_min_ram="30GiB"))
    assert hinted and all(
        h == {"beam:resources:min_ram_bytes:v1": str(30 * 2**30).encode()} for h in hinted.values()
    )


def test_runner_spec_gives_the_hints_as_with_resource_hints_takes_them():
    spec = _spec(runner={"paint_accelerator": " type:nvidia-h100-80gb ; count:8 ;install-nvidia-driver "})
    assert spec.runner.paint_resource_hints() == {
        "accelerator": "type:nvidia-h100-80gb;count:8;install-nvidia-driver"
    }
    assert _spec().runner.paint_resource_hints() == {}
