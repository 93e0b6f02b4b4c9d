"""A scripted in-process judge for the quality-gate tests, and a small job to run it on.

``ScriptedJudge`` scores each row by its id and by how many times that row was judged before (its paint
number): ``SCRIPTS[script][row_id]`` lists one entry per paint, the last one repeating. An entry is an
overall score in [0, 1] (each criterion is 10 x it, so ``scores.overall`` gives it back), or a fault:
``fail`` (a ``JudgeFailure``, as after retries), ``raise`` (the provider raises for the whole batch), ``short``
(the provider returns one result too few for the batch), ``bad`` (a verdict whose overall is 1.5), or a
callable taking the request and returning one of those (a side effect between paints). A row the script
does not name scores ``DEFAULT``. The embedded runner runs the stage in this process, so the
module's counters see every call.

Tests install it with ``install(monkeypatch, script)``: ``pipeline.edit.judge_factory`` then builds it for
any spec whose ``judge.kind`` is not ``none`` (the driver's preflight and ``config()`` included).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from transforms.judge.base import JudgeFailure, JudgeProvider, JudgeRequest, JudgeSetupError, Verdict
from transforms.judge.scores import criteria_for, overall

DEFAULT = 0.9
SCRIPTS: dict[str, dict[str, list[Any]]] = {}
_LOCK = threading.Lock()
_TOKENS = itertools.count()
CALLS: Counter = Counter()  # (script, row id) -> judgements asked for
SEEN: dict[str, list[tuple[str, bool, int]]] = {}  # script -> (row id, had a source, edited image bytes)


class ScriptedJudge(JudgeProvider):
    """Scores from ``SCRIPTS[script]``; ``version`` enters ``config()`` (as a rubric or model change would)."""

    def __init__(self, script: str, version: str = "v1", preflight_error: str | None = None):
        self.script = script
        self.version = version
        self.preflight_error = preflight_error
        self.name = f"scripted:{version}"

    def config(self) -> dict[str, Any]:
        return {"kind": "scripted", "version": self.version}

    def preflight(self) -> None:
        if self.preflight_error:
            raise JudgeSetupError(self.preflight_error)

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Verdict | JudgeFailure]:
        entries = []
        with _LOCK:
            for request in requests:
                paint = CALLS[(self.script, request.key)]
                CALLS[(self.script, request.key)] += 1
                script = SCRIPTS[self.script].get(request.key, [DEFAULT])
                entry = script[min(paint, len(script) - 1)]
                entries.append(entry(request) if callable(entry) else entry)
                SEEN.setdefault(self.script, []).append(
                    (request.key, request.source is not None, len(request.edited))
                )
        if "raise" in entries:
            raise RuntimeError("scripted judge crash")
        results = [self._result(request, entry) for request, entry in zip(requests, entries, strict=True)]
        return results[:-1] if "short" in entries else results

    @staticmethod
    def _result(request: JudgeRequest, entry: Any) -> Verdict | JudgeFailure:
        if entry == "fail":
            return JudgeFailure("scripted outage: 503 after 3 attempts", attempts=3, latency_s=0.01)
        if entry == "bad":
            return Verdict({}, 1.5, "out of range")
        if entry == "short":
            entry = DEFAULT
        mode = "edit" if request.source is not None else "t2i"
        scores = {name: 10.0 * float(entry) for name in criteria_for(mode)}
        return Verdict(
            scores,
            overall(scores, mode),
            f"scripted verdict {entry}",
            attempts=1,
            tokens_in=100,
            tokens_out=20,
            latency_s=0.01,
        )


def install(monkeypatch, script: dict[str, list[Any]], **judge_kwargs: Any) -> str:
    """Make every job with a judge use a ``ScriptedJudge`` playing ``script``; returns its name."""
    from pipeline import edit

    name = f"script-{next(_TOKENS)}"
    SCRIPTS[name] = script

    def factory(spec):
        if spec.judge.kind == "none":
            return None
        return lambda: ScriptedJudge(name, **judge_kwargs)

    monkeypatch.setattr(edit, "judge_factory", factory)
    return name


def calls(script: str) -> dict[str, int]:
    """Row id -> judgements asked for under ``script``."""
    return {key: n for (name, key), n in CALLS.items() if name == script}


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_job(directory: Path, rows: dict[str, str | None], **sections: Any) -> Path:
    """A spec over ``rows`` (id -> source file name, or None for a text-to-image row), tiny painters at
    toy size, a judge (played by the installed script) and ``sections`` merged over it."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (row_id, source) in enumerate(rows.items()):
        row: dict[str, Any] = {"id": row_id, "instruction": f"make {row_id} shine", "seed": 10 + index}
        if source is not None:
            (directory / "images" / source).write_bytes(_png(20 * index % 256))
            row["source"] = f"images/{source}"
        lines.append(json.dumps(row))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    spec: dict[str, Any] = {
        "name": "quality",
        "manifest": "manifest.jsonl",
        "output": "out",
        "painter": {
            "checkpoint": "tiny",
            "t2i_checkpoint": "tiny",
            "steps": 1,
            "resolution": 32,
            "batch_size": 2,
            "device": "cpu",
        },
        "judge": {"kind": "openai", "model": "scripted", "max_concurrency": 4},
        "quality": {"min_overall": 0.5, "max_paints": 3},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
