"""The judge stage on its own (no painter): every record comes out once, a judge or read problem is a
``judge_error`` on its row; the per-row decisions; quality keys; provenance of judged rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that

from pipeline.edit import JobKeys
from tests import quality_support as qs
from transforms.judge.base import JudgedAttempt
from transforms.judge.scores import repaint_seed
from transforms.judge.stage import JudgeRecords
from transforms.provenance import RunContext, provenance_row
from transforms.quality import REPAINT, decide, finish, repaint_failed, with_verdict
from transforms.records import EditRecord, Failure, Judging, KeptPaint, ManifestRow, RowRef
from transforms.reread import SourceLimits
from transforms.secrets import Scrubber

LIMITS = SourceLimits(max_image_bytes=1 << 20, fetch_timeout_s=10)


def _record(
    tmp_path: Path, row_id: str, *, source: bool = True, image: bytes | None = b"painted"
) -> EditRecord:
    src = tmp_path / f"{row_id}-source.png"
    src.write_bytes(b"source " + row_id.encode())
    out = tmp_path / "out" / f"{row_id}.png"
    out.parent.mkdir(exist_ok=True)
    if image is not None:
        out.write_bytes(image)
    row = ManifestRow(row_id, f"edit {row_id}", str(src) if source else None, 7, None, RowRef("m.jsonl", 1))
    return EditRecord(
        row,
        source_sha256=hashlib.sha256(src.read_bytes()).hexdigest() if source else None,
        seed=7,
        render_key="ab" * 32,
        output_uri=str(out),
        output_sha256=hashlib.sha256(image or b"painted").hexdigest(),
        paint={"painter": "p"},
    )


def _outcome(record: EditRecord) -> tuple:
    judging = record.judging
    (attempt,) = judging.attempts
    return (record.id, attempt.overall, judging.error, judging.calls)


def test_every_record_once_with_its_verdict_or_error(tmp_path, monkeypatch):
    script = qs.install(
        monkeypatch,
        {"good": [0.6], "fails": ["fail"], "crash": ["raise"], "short": ["short"], "bad": ["bad"]},
    )
    records = [
        _record(tmp_path, "good"),
        _record(tmp_path, "t2i", source=False),
        _record(tmp_path, "fails"),
        _record(tmp_path, "crash"),
        _record(tmp_path, "short"),
        _record(tmp_path, "bad"),
        _record(tmp_path, "gone", image=None),  # its image is not there
        _record(tmp_path, "too-big", image=b"x" * 200),
    ]
    changed = _record(tmp_path, "changed")  # the image was overwritten after it was written
    Path(changed.output_uri).write_bytes(b"other bytes")
    source_changed = _record(tmp_path, "source-changed")
    Path(source_changed.row.source).write_bytes(b"new source")
    records += [changed, source_changed]
    big = records[7]
    records[7] = big.evolve(output_sha256=hashlib.sha256(b"x" * 200).hexdigest())

    judge = "scripted:v1"
    source_sha = source_changed.source_sha256

    def check(outcomes: list[tuple]) -> None:
        by_id = {o[0]: o[1:] for o in outcomes}
        assert len(outcomes) == len(by_id) == len(records)  # every record once
        assert by_id["good"] == (pytest.approx(0.6), None, 1)
        assert by_id["t2i"] == (pytest.approx(0.9), None, 1)
        assert by_id["fails"] == (None, "scripted outage: 503 after 3 attempts", 3)
        assert by_id["crash"] == (None, f"judge {judge} raised RuntimeError: scripted judge crash", 1)
        assert by_id["short"] == (None, f"judge {judge} returned 0 results for 1 requests", 1)
        assert by_id["bad"] == (None, f"judge {judge} returned judge_overall 1.5, not a number in [0, 1]", 1)
        # never sent (no judge call): why, naming the image or the source
        assert by_id["gone"][1].startswith("painted image not read back: source not found: ")
        assert by_id["too-big"][1].startswith("painted image not read back: source is ")
        assert "max_image_bytes=100" in by_id["too-big"][1]
        assert by_id["changed"][1].startswith(
            f"painted image changed since it was written (sha256 {records[8].output_sha256[:12]}... written"
        )
        assert by_id["source-changed"][1].startswith(
            f"source changed since it was fetched (sha256 {source_sha[:12]}... at fetch"
        )
        assert "not judged" in by_id["source-changed"][1]
        assert all(
            by_id[k][0] is None and by_id[k][2] == 0 for k in ("gone", "too-big", "changed", "source-changed")
        )

    with beam.Pipeline("FnApiRunner") as pipeline:
        judged = (
            pipeline
            | beam.Create(records)
            | JudgeRecords(
                lambda: qs.ScriptedJudge(script),
                source_limits=LIMITS,
                image_limits=SourceLimits(max_image_bytes=100, fetch_timeout_s=10),
                max_batch_size=1,  # a fault poisons only its own batch
            )
        )
        assert_that(judged | beam.Map(_outcome), check)
    sent = {key for key, _source, _size in qs.SEEN[script]}
    assert sent == {"good", "t2i", "fails", "crash", "short", "bad"}  # unreadable rows were never sent


def _verdict(overall: float):
    from transforms.judge.base import Verdict

    return Verdict({"instruction_following": 10 * overall}, overall, f"r{overall}", tokens_in=3, tokens_out=1)


def _painted(record: EditRecord, attempt: int) -> EditRecord:
    return record.evolve(
        seed=repaint_seed(7, attempt),
        render_key=f"{attempt:02d}" * 32,
        output_uri=f"/out/{attempt}.png",
        output_sha256=str(attempt) * 64,
        paint={"painter": "p", "device": f"cpu#{attempt}"},
        paint_s=float(attempt),
    )


def _run(record: EditRecord, results: list, min_overall: float | None, max_paints: int):
    """Paint/judge/decide ``record`` through ``results`` as the unrolled stages would; the last decision."""
    from transforms.judge.base import JudgeFailure

    for attempt, result in enumerate(results, start=1):
        record = with_verdict(
            _painted(record, attempt), result if isinstance(result, JudgeFailure) else _verdict(result), "j"
        )
        (outcome,) = decide(record, min_overall, max_paints)
        if not isinstance(outcome, beam.pvalue.TaggedOutput):
            return outcome
        assert outcome.tag == REPAINT
        record = outcome.value
    return record


def test_decisions(tmp_path):
    from transforms.judge.base import JudgeFailure

    base = _record(tmp_path, "row")
    tie = _run(base, [0.3, 0.3, 0.3], 0.5, 3)
    assert (
        tie.rejected and tie.output_uri == "/out/1.png" and tie.seed == 7 and tie.paint["device"] == "cpu#1"
    )
    best = _run(base, [0.3, 0.4, 0.1], 0.5, 3)
    assert best.rejected and (best.render_key, best.paint_s, best.judging.overall) == ("02" * 32, 2.0, 0.4)
    assert (best.judging.calls, best.judging.tokens_in, len(best.judging.attempts)) == (3, 9, 3)
    passed = _run(base, [0.3, 0.7], 0.5, 3)
    assert not passed.rejected and passed.seed == repaint_seed(7, 2) and passed.judging.reason == "r0.7"
    unbarred = _run(base, [0.1], None, 1)
    assert not unbarred.rejected and unbarred.judging.overall == 0.1
    outage = _run(base, [JudgeFailure("down", attempts=4)], 0.5, 3)
    assert not outage.rejected and outage.judging.error == "down" and outage.output_uri == "/out/1.png"
    assert outage.judging.kept is None and outage.judging.calls == 4
    late = _run(base, [0.2, JudgeFailure("down")], 0.5, 3)
    assert late.rejected and late.output_uri == "/out/1.png" and late.judging.stop_stage == "judge"
    assert late.judging.stop_error.startswith(
        f"paint 2 of 3 (seed {repaint_seed(7, 2)}) was not judged: down"
    )
    # a repaint that fails at write: rejected with the best judged image, the failed paint recorded
    (again,) = decide(with_verdict(_painted(base, 1), _verdict(0.2), "j"), 0.5, 3)
    failed = repaint_failed(
        Failure(_painted(again.value, 2).evolve(output_uri=None), "write", "OSError: full"), 0.5, 3
    )
    assert failed.rejected and failed.output_uri == "/out/1.png" and failed.judging.stop_stage == "write"
    assert failed.judging.attempts[-1] == JudgedAttempt(
        2, repaint_seed(7, 2), "02" * 32, error="OSError: full"
    )
    assert "failed at write: OSError: full; kept paint 1 (judge_overall 0.200" in failed.judging.stop_error


def _keys(judge_config=None, min_overall=None, max_paints=1) -> JobKeys:
    return JobKeys(
        designer_config={"kind": "none"},
        painter_config={"steps": 1},
        checkpoint_sha256={"edit": "e" * 64, "t2i": "f" * 64},
        default_seed=233,
        judge_config=judge_config,
        min_overall=min_overall,
        max_paints=max_paints,
    )


def test_quality_key_names_the_first_paint_the_judge_and_the_bar(tmp_path):
    record = _record(tmp_path, "row").evolve(render_key=None, seed=None)
    assert _keys().with_keys(record).quality_key is None  # no judge, no quality key
    judge = {"kind": "scripted", "version": "v1"}
    keyed = _keys(judge, 0.5, 3).with_keys(record)
    assert keyed.quality_key and keyed.render_key == _keys().with_keys(record).render_key
    variants = [_keys(judge, 0.6, 3), _keys(judge, 0.5, 2), _keys({**judge, "version": "v2"}, 0.5, 3)]
    assert len({keyed.quality_key, *(k.with_keys(record).quality_key for k in variants)}) == 4
    assert _keys(dict(judge), 0.5, 3).with_keys(record).quality_key == keyed.quality_key
    # the second paint: the next seed of the row's sequence, its own render key, no image yet
    judged = with_verdict(keyed, _verdict(0.2), "j")
    second = _keys(judge, 0.5, 3).for_paint(judged, 2)
    assert second.seed == repaint_seed(7, 2) and second.render_key not in (None, keyed.render_key)
    assert (second.output_uri, second.output_sha256, second.paint, second.quality_key) == (
        None,
        None,
        {},
        keyed.quality_key,
    )


def test_provenance_of_judged_rows_is_scrubbed(tmp_path, monkeypatch):
    secret = "sk-quality-test-secret-0123456789abcdef"
    monkeypatch.setenv("JUDGE_TEST_KEY", secret)
    record = _record(tmp_path, "row")
    leaky = f"upstream said Authorization: Bearer {secret}"
    judging = Judging(
        judge="openai:m",
        scores={"instruction_following": 2.0},
        overall=0.2,
        reason=f"looks fine {secret}",
        kept=KeptPaint(1, 7, "ab" * 32, record.output_uri, record.output_sha256, {"painter": "p"}, 1.0, None),
        attempts=(
            JudgedAttempt(
                1, 7, "ab" * 32, record.output_uri, record.output_sha256, {"instruction_following": 2.0}, 0.2
            ),
            JudgedAttempt(2, 8, "cd" * 32, judge_error=leaky),
        ),
        error=leaky,
        calls=2,
        stop_stage="judge",
        stop_error=f"paint 2 of 2 (seed 8) was not judged: {leaky}",
    )
    context = RunContext(run_id="r", versions_json="{}", scrub=Scrubber(["JUDGE_TEST_KEY"]))
    row = provenance_row(finish(record.evolve(judging=judging), rejected=True), context, 0.0)
    assert secret not in json.dumps(row, default=str)
    assert (row["status"], row["error_stage"], row["paints"], row["judge_attempts"]) == (
        "rejected",
        "judge",
        2,
        2,
    )
    assert "[redacted]" in row["judge_error"] and "[redacted]" in row["judge_reason"]
    attempts = json.loads(row["paint_attempts"])
    assert "[redacted]" in attempts[1]["judge_error"] and attempts[0]["overall"] == 0.2
    skipped = provenance_row(
        record.evolve(skipped=True, judging=Judging(judge="j", overall=0.9)), context, 0.0
    )
    assert (skipped["status"], skipped["judge_overall"], skipped["judge_attempts"], skipped["paints"]) == (
        "skipped",
        0.9,
        None,
        None,
    )
