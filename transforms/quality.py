"""Best-of-N: what the judge's verdicts decide for a row (``quality.min_overall``, ``quality.max_paints``).

A row is painted (paint 1, with its own seed), judged, and then:

- its paint reaches the bar (or there is no bar): ``ok``, with the best-scoring image (the passing paint:
  every earlier one was below the bar);
- no verdict came back for paint 1 (judge outage, unreadable image): ``ok`` with ``judge_error``; a judging
  outage never discards a paid-for image, and nothing is repainted blind;
- below the bar with paints left: painted again with the next seed of its sequence
  (``transforms.judge.scores.repaint_seed``) under that paint's own render key, and judged again;
- below the bar after ``max_paints`` paints: ``rejected``, keeping the best-scoring image (ties: the
  earlier);
- a repaint that fails (paint or write) or whose judging gives no verdict: repainting stops and the row is
  ``rejected`` with the best judged image (it was below the bar), ``error_stage`` naming where that paint
  stopped (``paint``, ``write`` or ``judge``) and ``error`` what happened to it. Never ``failed``: the row
  has an image.

The pipeline unrolls the loop at build time (``pipeline/edit.py``); the functions here are the per-row
steps, on small records (URIs and hashes, no pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import apache_beam as beam

from transforms.judge.base import JudgedAttempt, JudgeFailure, Verdict
from transforms.records import STAGE_JUDGE, EditRecord, Failure, Judging, KeptPaint, bounded_error

REPAINT = "repaint"


def _add(total: int | None, more: int | None) -> int | None:
    if more is None:
        return total
    return more if total is None else total + more


def with_verdict(record: EditRecord, result: Verdict | JudgeFailure, judge: str) -> EditRecord:
    """``record`` with the judge's result on its latest paint: one more ``JudgedAttempt``, the costs added,
    and the paint kept if it scores better than every earlier one."""
    judging = record.judging or Judging()
    assert record.seed is not None and record.render_key is not None
    verdict = result if isinstance(result, Verdict) else None
    attempt = JudgedAttempt(
        attempt=len(judging.attempts) + 1,
        seed=record.seed,
        render_key=record.render_key,
        output_uri=record.output_uri,
        output_sha256=record.output_sha256,
        scores=dict(verdict.scores) if verdict else {},
        overall=verdict.overall if verdict else None,
        judge_error=None if verdict else bounded_error(str(result.error)),
    )
    changes: dict = {
        "judge": judge,
        "attempts": (*judging.attempts, attempt),
        "calls": judging.calls + result.attempts,
        "tokens_in": _add(judging.tokens_in, result.tokens_in),
        "tokens_out": _add(judging.tokens_out, result.tokens_out),
        "seconds": judging.seconds + result.latency_s,
    }
    if verdict is None:
        changes["error"] = attempt.judge_error
    elif judging.overall is None or verdict.overall > judging.overall:
        assert record.output_uri is not None and record.output_sha256 is not None
        changes.update(
            scores=dict(verdict.scores),
            overall=verdict.overall,
            reason=verdict.reason,
            kept=KeptPaint(
                attempt=attempt.attempt,
                seed=record.seed,
                render_key=record.render_key,
                output_uri=record.output_uri,
                output_sha256=record.output_sha256,
                paint=dict(record.paint),
                paint_s=record.paint_s,
                finished_at=record.finished_at,
            ),
        )
    return record.evolve(judging=dataclasses.replace(judging, **changes))


def finish(record: EditRecord, *, rejected: bool) -> EditRecord:
    """The row as provenance writes it: its paint fields are the kept paint's (when one was judged)."""
    judging = record.judging
    kept = judging.kept if judging is not None else None
    if kept is not None:
        record = record.evolve(
            seed=kept.seed,
            render_key=kept.render_key,
            output_uri=kept.output_uri,
            output_sha256=kept.output_sha256,
            paint=dict(kept.paint),
            paint_s=kept.paint_s,
            finished_at=kept.finished_at,
        )
    return record.evolve(rejected=rejected)


def _kept_note(judging: Judging, min_overall: float | None) -> str:
    kept = judging.kept
    assert kept is not None and judging.overall is not None
    bar = f"quality.min_overall {min_overall:g}" if min_overall is not None else "the bar"
    return f"kept paint {kept.attempt} (judge_overall {judging.overall:.3f}, below {bar})"


def decide(record: EditRecord, min_overall: float | None, max_paints: int) -> Iterable:
    """A judged record -> the finished row (main output), or the record tagged ``repaint``."""
    judging = record.judging
    assert judging is not None and judging.attempts, "decide needs a judged record"
    last = judging.attempts[-1]
    paints = len(judging.attempts)
    if last.judge_error is not None:
        if judging.kept is None:  # the first paint got no verdict: keep it, never repaint blind
            yield finish(record, rejected=False)
            return
        stop = (
            f"paint {paints} of {max_paints} (seed {last.seed}) was not judged: {last.judge_error}; "
            + _kept_note(judging, min_overall)
        )
        stopped = dataclasses.replace(judging, stop_stage=STAGE_JUDGE, stop_error=stop)
        yield finish(record.evolve(judging=stopped), rejected=True)
    elif min_overall is None or (last.overall is not None and last.overall >= min_overall):
        yield finish(record, rejected=False)
    elif paints < max_paints:
        yield beam.pvalue.TaggedOutput(REPAINT, record)
    else:
        yield finish(record, rejected=True)


def repaint_failed(failure: Failure, min_overall: float | None, max_paints: int) -> EditRecord:
    """A repaint that failed (its source could not be read again, the painter or the write failed): the
    row stops, ``rejected`` with its best judged image, the failed paint recorded with its error."""
    record = failure.record
    assert record is not None and record.judging is not None and record.judging.kept is not None
    judging = record.judging
    assert record.seed is not None and record.render_key is not None
    attempt = JudgedAttempt(
        attempt=len(judging.attempts) + 1,
        seed=record.seed,
        render_key=record.render_key,
        error=failure.error,
    )
    stop = (
        f"paint {attempt.attempt} of {max_paints} (seed {attempt.seed}) failed at {failure.stage}: "
        f"{failure.error}; " + _kept_note(judging, min_overall)
    )
    stopped = dataclasses.replace(
        judging, attempts=(*judging.attempts, attempt), stop_stage=failure.stage, stop_error=stop
    )
    return finish(record.evolve(judging=stopped), rejected=True)
