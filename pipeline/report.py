"""`dimflow report`: what a run did, from its provenance (the analytics API) and run records.

Queries run in duckdb over the Arrow table read through Beam's filesystems (local or gs://, no duckdb
network extension). Numbers: rows by status, failures by stage and error kind, throughput, latency
percentiles, designer tokens and cost (prices from the job spec), retries, the painters' weights licenses
(rows per license, and whether it allows commercial use), the judge's figures when the run had a judge
(pipeline/report_judge.py), and the same figures of the previous run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.report_judge import judge_figures
from pipeline.run import read_provenance
from transforms.painter.licenses import commercial_use
from transforms.schema import STATUSES
from transforms.tables import SkippedFile, log_skipped

PERCENTILES = (0.5, 0.9, 0.99)


@dataclass
class RunReport:
    run_id: str
    rows: int
    by_status: dict[str, int]
    started_at: str | None
    finished_at: str | None
    wall_s: float | None
    rows_per_hour: float | None
    stages: dict[str, dict[str, Any]]  # design / paint: rows, busy seconds, rows per wall hour
    latency_s: dict[str, dict[str, float | None]]  # design / paint: p50, p90, p99, max
    failures_by_stage: dict[str, int]
    failures_by_kind: list[dict[str, Any]]  # stage, kind, rows (most common first)
    tokens_in: int
    tokens_out: int
    cost: float | None  # None when the spec has no price for a designer that used tokens
    cost_by_designer: dict[str, float | None]
    retried_rows: int
    retries: int
    # The painters' weights licenses of the run's rows: {license, commercial_use, rows}, most rows first;
    # license None for rows with none recorded (failed before their mode was known, or older provenance).
    painter_licenses: list[dict[str, Any]] = field(default_factory=list)
    previous: dict[str, Any] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    # The judge's figures (pipeline/report_judge.py) when the run had a judge, else None.
    judge: dict[str, Any] | None = None
    # Files under the output that were not read: damaged part files, older or incomplete writes,
    # unreadable run records ({path, reason}); the figures above are of the rest.
    skipped_files: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "spec"}
        return json.loads(json.dumps(data, default=str))


def error_kind(error: str | None) -> str:
    """An error message without what varies per row (file and row, paths, quoted values, positions)."""
    text = error or ""
    text = re.sub(r"^.*? row \d+(, )?", "", text)  # "FILE row N, " prefix of manifest errors
    text = re.sub(r"field '(\w+)'", r"field <\1>", text)  # keep field names through the next step
    text = re.sub(r"'[^']*'", "'…'", text)  # quoted values
    text = re.sub(r"\(?(?:/|[a-z][a-z0-9+.-]*://)[^\s)]*\)?", "PATH", text)
    text = re.sub(r"field <(\w+)>", r"field '\1'", text)
    text = re.sub(r"\b(column|byte|character|row|line|at) \d+", r"\1 N", text)
    text = re.sub(r"\d{4,}", "N", text)
    text = re.sub(r"\s+", " ", text).strip(" ;:")
    return text[:100] or "(no message)"


def read_run_records(output: str, skipped: list[SkippedFile] | None = None) -> dict[str, dict[str, Any]]:
    """run_id -> run record (sharded runs: the shards' records merged: counts summed, earliest start).

    A record that cannot be read is left out and appended to ``skipped`` with the reason.
    """
    pattern = FileSystems.join(output, "runs", "*.json")
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:
        return {}
    records: dict[str, dict[str, Any]] = {}
    for match in matches:
        try:
            with FileSystems.open(match.path) as handle:
                record = json.loads(handle.read().decode("utf-8"))
            for key in ("run_id", "started_at", "finished_at"):
                if not isinstance(record.get(key), str):
                    raise ValueError(f"field {key!r} is not a string")
            run_id = record["run_id"]
            counts = record.get("counts", {})
            if not isinstance(counts, dict) or not all(isinstance(counts.get(s, 0), int) for s in STATUSES):
                raise ValueError("field 'counts' is not a map of status to row count")
        except Exception as exc:
            item = SkippedFile(match.path, f"unreadable run record ({type(exc).__name__}: {exc}); not read")
            if skipped is None:
                log_skipped([item], "runs")
            else:
                skipped.append(item)
            continue
        merged = records.setdefault(run_id, {**record, "counts": dict.fromkeys(STATUSES, 0)})
        for status in STATUSES:
            merged["counts"][status] += record.get("counts", {}).get(status, 0)
        merged["started_at"] = min(merged["started_at"], record["started_at"])
        merged["finished_at"] = max(merged["finished_at"], record["finished_at"])
    return records


def _connect(table: pa.Table):
    import duckdb

    con = duckdb.connect()
    con.register("prov", table)
    return con


def _one(con, sql: str, params: list | None = None) -> tuple:
    return con.execute(sql, params or []).fetchone()


def run_order(con) -> list[str]:
    """Run ids, oldest first (by their first row's finish time)."""
    return [
        r[0]
        for r in con.execute(
            "SELECT run_id FROM prov GROUP BY run_id ORDER BY min(finished_at), run_id"
        ).fetchall()
    ]


def compute(con, run_id: str, spec: dict[str, Any]) -> RunReport:
    where = "run_id = ?"
    p = [run_id]
    counts = dict(
        con.execute(f"SELECT status, count(*) FROM prov WHERE {where} GROUP BY status", p).fetchall()
    )
    rows = sum(counts.values())
    started, finished = _one(
        con, f"SELECT min(coalesce(started_at, finished_at)), max(finished_at) FROM prov WHERE {where}", p
    )
    wall = (finished - started).total_seconds() if started and finished else None
    per_hour = rows / wall * 3600 if wall else None

    stages = {}
    latency = {}
    for stage, column, condition in (
        ("design", "design_s", "designer_attempts > 0"),
        ("paint", "paint_s", "paint_s IS NOT NULL"),
    ):
        n, busy = _one(con, f"SELECT count(*), sum({column}) FROM prov WHERE {where} AND {condition}", p)
        stages[stage] = {
            "rows": n,
            "busy_s": round(busy or 0.0, 3),
            "rows_per_hour": (n / wall * 3600) if wall and n else None,
        }
        quantiles = _one(
            con,
            f"SELECT {', '.join(f'quantile_cont({column}, {q})' for q in PERCENTILES)}, max({column}) "
            f"FROM prov WHERE {where} AND {condition}",
            p,
        )
        latency[stage] = {
            **{f"p{int(q * 100)}": _round(v) for q, v in zip(PERCENTILES, quantiles[:-1], strict=True)},
            "max": _round(quantiles[-1]),
        }

    failures_by_stage = dict(
        con.execute(
            f"SELECT error_stage, count(*) FROM prov WHERE {where} AND status = 'failed' GROUP BY 1 ORDER BY 2 DESC, 1",
            p,
        ).fetchall()
    )
    failed = con.execute(
        f"SELECT error_stage, error FROM prov WHERE {where} AND status = 'failed'", p
    ).fetchall()
    kinds: dict[tuple[str, str], int] = {}
    for stage, error in failed:
        key = (stage or "?", error_kind(error))
        kinds[key] = kinds.get(key, 0) + 1
    by_kind = [
        {"stage": stage, "kind": kind, "rows": n}
        for (stage, kind), n in sorted(kinds.items(), key=lambda item: (-item[1], item[0]))
    ]

    token_rows = con.execute(
        f"SELECT designer, sum(coalesce(tokens_in, 0)), sum(coalesce(tokens_out, 0)) FROM prov "
        f"WHERE {where} AND designer IS NOT NULL GROUP BY designer ORDER BY designer",
        p,
    ).fetchall()
    prices = spec.get("prices") or {}
    cost_by: dict[str, float | None] = {}
    for designer, tin, tout in token_rows:
        price = prices.get(designer)
        if not tin and not tout:
            cost_by[designer] = 0.0
        elif price is None:
            cost_by[designer] = None
        else:
            cost_by[designer] = round(
                tin / 1e6 * price["input_per_million_tokens"]
                + tout / 1e6 * price["output_per_million_tokens"],
                6,
            )
    cost = None if any(v is None for v in cost_by.values()) else round(sum(cost_by.values()), 6)
    retried, retries = _one(
        con,
        f"SELECT count(*), coalesce(sum(designer_attempts - 1), 0) FROM prov WHERE {where} AND designer_attempts > 1",
        p,
    )
    licenses = [
        {"license": name, "commercial_use": None if name is None else commercial_use(name), "rows": int(n)}
        for name, n in con.execute(
            f"SELECT painter_license, count(*) FROM prov WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST",
            p,
        ).fetchall()
    ]
    return RunReport(
        painter_licenses=licenses,
        run_id=run_id,
        rows=rows,
        by_status={s: int(counts.get(s, 0)) for s in STATUSES},
        started_at=started.isoformat() if started else None,
        finished_at=finished.isoformat() if finished else None,
        wall_s=_round(wall),
        rows_per_hour=_round(per_hour),
        stages=stages,
        latency_s=latency,
        failures_by_stage=failures_by_stage,
        failures_by_kind=by_kind,
        tokens_in=int(sum(r[1] for r in token_rows)),
        tokens_out=int(sum(r[2] for r in token_rows)),
        cost=cost,
        cost_by_designer=cost_by,
        retried_rows=int(retried),
        retries=int(retries),
        spec=spec,
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def build_report(output: str, run_id: str | None = None) -> tuple[RunReport, pa.Table]:
    """The report of ``run_id`` (default: the newest run) with the previous run's headline figures."""
    skipped: list[SkippedFile] = []
    table = read_provenance(output, skipped=skipped)
    if table.num_rows == 0:
        raise ValueError(f"no provenance under {output}")
    con = _connect(table)
    order = run_order(con)
    chosen = run_id or order[-1]
    if chosen not in order:
        raise ValueError(f"run {chosen!r} has no provenance under {output}; runs: {', '.join(order[-10:])}")
    records = read_run_records(output, skipped)
    spec = records.get(chosen, {}).get("spec", {})
    report = compute(con, chosen, spec)
    run_table = table.filter(pa.compute.equal(table.column("run_id"), chosen))
    report.judge = judge_figures(con, chosen, run_table, spec.get("prices") or {})
    report.skipped_files = [item.as_json() for item in skipped]
    index = order.index(chosen)
    if index > 0:
        previous_id = order[index - 1]
        before = compute(con, previous_id, records.get(previous_id, {}).get("spec", {}))
        report.previous = {
            "run_id": previous_id,
            "rows": before.rows,
            "by_status": before.by_status,
            "rows_per_hour": before.rows_per_hour,
            "paint_p50_s": before.latency_s["paint"]["p50"],
            "design_p50_s": before.latency_s["design"]["p50"],
            "cost": before.cost,
        }
    return report, run_table


def license_line(entry: dict[str, Any]) -> tuple[str, str]:
    """(license, what it allows) of one ``painter_licenses`` entry, for the console and the HTML page."""
    name = entry["license"]
    if name is None:
        return "(none recorded)", "rows that failed before their mode was known, or older provenance"
    use = {True: "commercial use allowed", False: "NOT for commercial use", None: "commercial use not known"}
    return name, use[entry["commercial_use"]]
