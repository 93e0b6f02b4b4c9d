"""The table papers print for a benchmark run, from its provenance: per category and overall, the rows
judged out of the rows, and the mean of each criterion and of ``judge_overall`` over the judged rows.

Pure: ``eval_table`` takes a provenance Arrow table (one run's rows) and queries it in duckdb, so it is
tested without running a job. Rows without a verdict (failed, or a judge error) are counted apart and left
out of the means, never scored as zero; text-to-image rows have no ``preservation`` and are left out of
that mean only. The scores are dimflow's rubric, not a paper's, unless the paper's judge and prompt were
used (``footnote``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
from rich.table import Table
from rich.text import Text

from pipeline.terminal import printable, text
from transforms.judge.scores import CRITERIA

MEANS = (*CRITERIA, "judge_overall")
COUNTS = ("rows", "judged", "failed", "judge_errors", "unjudged")
CSV_COLUMNS = ("scope", "category", *COUNTS, *MEANS)


@dataclass(frozen=True)
class EvalLine:
    """One line of the table: a category's rows (or all rows), what became of them, and the means."""

    category: str | None  # None: rows without a category (the overall line: every row)
    rows: int
    judged: int  # rows with a verdict (judge_overall), whatever their status but failed
    failed: int  # status failed: nothing painted, or nothing kept
    judge_errors: int  # painted, but the judge gave no verdict (judge_error)
    unjudged: int  # neither: e.g. rows skipped by an incremental run without scores of their own
    instruction_following: float | None
    visual_quality: float | None
    preservation: float | None  # edits only (text-to-image rows have nothing to preserve)
    judge_overall: float | None


@dataclass(frozen=True)
class EvalTable:
    categories: list[EvalLine]  # by category name, rows without one last
    overall: EvalLine  # every row of the run; the means over all judged rows (not a mean of means)
    judges: list[str]  # provenance ``judge`` values of the judged rows
    painters: list[str]  # provenance ``painter`` values
    max_paints: int | None  # the most paints a row took (> 1: best-of-N scores, not single paints)
    run_ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _score(name: str) -> str:
    """SQL: criterion ``name`` from the row's ``judge_scores`` JSON, a number or NULL (never a guess)."""
    path = f"'$.{name}'"
    return (
        f"CASE WHEN judged AND json_valid(judge_scores) AND json_type(judge_scores, {path}) IN "
        f"('DOUBLE', 'BIGINT', 'UBIGINT') THEN CAST(json_extract(judge_scores, {path}) AS DOUBLE) END"
    )


_ROWS = f"""
WITH base AS (
    SELECT category, status, judge_error, judge_scores, judge_overall,
           judge_overall IS NOT NULL AND status IS DISTINCT FROM 'failed' AS judged
    FROM prov
), scored AS (
    SELECT *, {", ".join(f"{_score(name)} AS {name}" for name in CRITERIA)} FROM base
)
SELECT {{group}}
    count(*),
    count(*) FILTER (WHERE judged),
    count(*) FILTER (WHERE status = 'failed'),
    count(*) FILTER (WHERE NOT judged AND status IS DISTINCT FROM 'failed' AND judge_error IS NOT NULL),
    count(*) FILTER (WHERE NOT judged AND status IS DISTINCT FROM 'failed' AND judge_error IS NULL),
    {", ".join(f"avg({name})" for name in CRITERIA)},
    avg(judge_overall) FILTER (WHERE judged)
FROM scored
{{by}}
"""


def _line(category: str | None, values: tuple) -> EvalLine:
    counts, means = values[: len(COUNTS)], values[len(COUNTS) :]
    return EvalLine(
        category,
        *(int(n) for n in counts),
        *(None if m is None else float(m) for m in means),
    )


def eval_table(table: pa.Table) -> EvalTable:
    """The eval table of the provenance rows in ``table`` (one run's: ``read_provenance(output, run_id)``)."""
    import duckdb

    con = duckdb.connect()
    con.register("prov", table)
    grouped = con.execute(
        _ROWS.format(group="category,", by="GROUP BY category ORDER BY category NULLS LAST")
    ).fetchall()
    (total,) = con.execute(_ROWS.format(group="", by="")).fetchall()

    def distinct(column: str, where: str = "TRUE") -> list[str]:
        sql = f"SELECT DISTINCT {column} FROM prov WHERE {column} IS NOT NULL AND {where} ORDER BY 1"
        return [r[0] for r in con.execute(sql).fetchall()]

    (max_paints,) = con.execute("SELECT max(paints) FROM prov").fetchone()
    return EvalTable(
        categories=[_line(row[0], row[1:]) for row in grouped],
        overall=_line(None, total),
        judges=distinct("judge", "judge_overall IS NOT NULL"),
        painters=distinct("painter"),
        max_paints=None if max_paints is None else int(max_paints),
        run_ids=distinct("run_id"),
    )


# ----------------------------------------------------------------------------------------------------
# Output: text (rich), JSON, CSV


def footnote(table: EvalTable, rubric: str | None) -> str:
    """What the numbers are, and what they are not."""
    prompt = f"the rubric file {rubric}" if rubric else "dimflow's own rubric prompt"
    scored = (
        f"Scores by {', '.join(table.judges)}" if table.judges else "No row has a verdict; scores would be"
    )
    lines = [
        f"{scored} with {prompt}: criteria 0-10, judge_overall in [0, 1] by dimflow's formula "
        "(sqrt(IF x min(VQ, PR)) / 10; text-to-image sqrt(IF x VQ) / 10).",
        "These are dimflow-rubric scores, not the paper's numbers, unless the paper's judge model and its "
        "prompt (judge.rubric) were used.",
        "Rows without a verdict (failed, judge errors, other unjudged) are counted apart and left out of the "
        "means, never scored as zero; preservation is over edit rows only.",
    ]
    if table.max_paints is not None and table.max_paints > 1:
        lines.append(
            f"Some rows were painted up to {table.max_paints} times (quality.max_paints): the scores are of the "
            "best paint, not of single paints as papers report."
        )
    return "\n".join(lines)


def title(table: EvalTable, benchmark: str, painter_fallback: str, judge_fallback: str) -> str:
    """Names the painter(s) and judge(s) from the provenance (the spec's when no row has one)."""
    painters = ", ".join(table.painters) or f"{painter_fallback} (nothing painted)"
    judges = ", ".join(table.judges) or f"{judge_fallback} (no verdicts)"
    return f"eval of {benchmark}: painter {painters}; judge {judges}"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cells(line: EvalLine, label: str) -> list[str]:
    return [
        label,
        f"{line.judged} / {line.rows}",
        str(line.failed),
        str(line.judge_errors),
        str(line.unjudged),
        *(_num(getattr(line, name), 2) for name in CRITERIA),
        _num(line.judge_overall, 3),
    ]


NO_CATEGORY = "(no category)"


def rich_table(table: EvalTable, heading: str, note: str) -> Table:
    """The console table: one line per category, then the overall line; the footnote as its caption."""
    caption = Text(printable(note, keep_newlines=True))
    out = Table(title=text(heading), title_justify="left", caption=caption, caption_justify="left")
    for column in ("category", "judged / rows", "failed", "judge errors", "other unjudged"):
        out.add_column(column, justify="left" if column == "category" else "right", overflow="fold")
    for column in ("instruction following", "visual quality", "preservation", "overall"):
        out.add_column(column, justify="right")
    for line in table.categories:
        out.add_row(*(text(cell) for cell in _cells(line, line.category or NO_CATEGORY)))
    out.add_section()
    out.add_row(*(text(cell, "bold") for cell in _cells(table.overall, "overall")))
    return out


def _cell(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (a category label comes from the manifest)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_text(table: EvalTable) -> str:
    """One CSV line per category (scope ``category``; an empty category: rows without one) and the overall
    line (scope ``overall``); means at full precision, empty where there is none. A category starting with
    ``= + - @`` gets a leading ``'`` so spreadsheets show it as text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    lines = [("category", line) for line in table.categories] + [("overall", table.overall)]
    for scope, line in lines:
        means = ["" if getattr(line, name) is None else repr(getattr(line, name)) for name in MEANS]
        writer.writerow(
            [scope, _cell(line.category or ""), *(getattr(line, name) for name in COUNTS), *means]
        )
    return buffer.getvalue()
