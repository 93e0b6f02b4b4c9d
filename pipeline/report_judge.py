"""The judge's figures of a run for `dimflow report`: verdicts and errors, the ``judge_overall``
distribution, mean scores per criterion and per category, paints per row (what best-of-N cost), judge
tokens and cost, and the rejected rows to review.

Computed in duckdb over the run's provenance (the ``prov`` view ``pipeline.report`` registers); the per
category means are the eval table's (``pipeline.eval``), so report and eval can never disagree.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.eval import eval_table
from transforms.judge.scores import CRITERIA

HISTOGRAM_BINS = 10  # judge_overall in [0, 1]: bin i holds [i/10, (i+1)/10), the last one 1.0 too
REJECTED_LISTED = 50  # rejected ids listed for review (all of them are in the provenance)

_BIN = f"least(floor(judge_overall * {HISTOGRAM_BINS}), {HISTOGRAM_BINS - 1})"


def has_judge(con, where: str, params: list) -> bool:
    """Whether any row of the run was judged or met a judge error (no judge: the report has no judge part)."""
    (n,) = con.execute(
        f"SELECT count(*) FROM prov WHERE {where} AND (judge IS NOT NULL OR judge_overall IS NOT NULL "
        "OR judge_error IS NOT NULL)",
        params,
    ).fetchone()
    return n > 0


def histogram(con, where: str, params: list) -> list[dict[str, Any]]:
    """Rows per ``judge_overall`` bin (judged rows only), every bin listed."""
    counts = dict(
        con.execute(
            f"SELECT {_BIN} AS bin, count(*) FROM prov WHERE {where} AND judge_overall IS NOT NULL "
            "AND status IS DISTINCT FROM 'failed' GROUP BY 1",
            params,
        ).fetchall()
    )
    return [
        {"from": i / HISTOGRAM_BINS, "to": (i + 1) / HISTOGRAM_BINS, "rows": int(counts.get(i, 0))}
        for i in range(HISTOGRAM_BINS)
    ]


def _cost(tokens: list[tuple], prices: dict[str, Any]) -> tuple[dict[str, float | None], float | None]:
    """Estimated cost per judge (provenance ``judge`` value -> spec ``prices``), and in all (None when a judge
    that used tokens has no price)."""
    by: dict[str, float | None] = {}
    for judge, tin, tout in tokens:
        price = prices.get(judge)
        if not tin and not tout:
            by[judge] = 0.0
        elif price is None:
            by[judge] = None
        else:
            by[judge] = round(
                tin / 1e6 * price["input_per_million_tokens"]
                + tout / 1e6 * price["output_per_million_tokens"],
                6,
            )
    total = None if any(v is None for v in by.values()) else round(sum(by.values()), 6)
    return by, total


def judge_figures(con, run_id: str, run_table: pa.Table, prices: dict[str, Any]) -> dict[str, Any] | None:
    """The judge part of a run's report, or None when the run had no judge."""
    where, p = "run_id = ?", [run_id]
    if not has_judge(con, where, p):
        return None
    judged, errors, calls = con.execute(
        f"SELECT count(*) FILTER (WHERE judge_overall IS NOT NULL AND status IS DISTINCT FROM 'failed'), "
        f"count(*) FILTER (WHERE judge_error IS NOT NULL), coalesce(sum(judge_attempts), 0) "
        f"FROM prov WHERE {where}",
        p,
    ).fetchone()
    tokens = con.execute(
        f"SELECT judge, sum(coalesce(judge_tokens_in, 0)), sum(coalesce(judge_tokens_out, 0)) FROM prov "
        f"WHERE {where} AND judge IS NOT NULL GROUP BY judge ORDER BY judge",
        p,
    ).fetchall()
    cost_by, cost = _cost(tokens, prices)
    paints = con.execute(
        f"SELECT paints, count(*) FROM prov WHERE {where} AND paints IS NOT NULL GROUP BY 1 ORDER BY 1", p
    ).fetchall()
    (rejected,) = con.execute(
        f"SELECT count(*) FROM prov WHERE {where} AND status = 'rejected'", p
    ).fetchone()
    rejected_ids = [
        r[0]
        for r in con.execute(
            f"SELECT id FROM prov WHERE {where} AND status = 'rejected' ORDER BY id LIMIT {REJECTED_LISTED}",
            p,
        ).fetchall()
    ]
    table = eval_table(run_table)
    overall = table.overall
    categories = (
        [line.__dict__ for line in table.categories]
        if any(line.category is not None for line in table.categories)
        else []
    )
    return {
        "judges": sorted({t[0] for t in tokens}),
        "judged_rows": int(judged),
        "judge_errors": int(errors),
        "judge_calls": int(calls),
        "histogram": histogram(con, where, p),
        "means": {name: getattr(overall, name) for name in (*CRITERIA, "judge_overall")},
        "by_category": categories,
        "paints_per_row": {str(int(n)): int(rows) for n, rows in paints},
        "tokens_in": int(sum(t[1] for t in tokens)),
        "tokens_out": int(sum(t[2] for t in tokens)),
        "cost": cost,
        "cost_by_judge": cost_by,
        "rejected_rows": int(rejected),
        "rejected_ids": rejected_ids,
    }


def bar_lines(bins: list[dict[str, Any]], width: int = 40) -> list[str]:
    """The histogram as text: one line per bin with its range, a bar scaled to the fullest bin, the count."""
    most = max((b["rows"] for b in bins), default=0)
    lines = []
    for b in bins:
        bar = "#" * (round(b["rows"] / most * width) if most else 0)
        if b["rows"] and not bar:
            bar = "#"  # a bin with rows is never drawn empty
        lines.append(f"{b['from']:.1f}-{b['to']:.1f} | {bar:<{width}} {b['rows']:,}")
    return lines
