"""Run a job spec for a command and print what it did: shared by ``dimflow run`` and ``dimflow eval``.

Exit codes: 0 the run finished (rows may still have failed: see the summary and provenance), 1 the run
itself failed, 2 bad spec, manifest path or arguments (nothing was processed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.terminal import printable, set_secret_env_names, text

if TYPE_CHECKING:
    from pipeline.run import RunResult
    from pipeline.spec import JobSpec
    from transforms.shards import Shard

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# painter.kind -> (architecture, model) named by the warning a 'tiny' checkpoint prints
TINY_MODELS = {
    "dim": ("DIM's", "DIM-4.6B"),
    "qwen-image-edit": ("Qwen-Image-Edit's", "Qwen-Image-Edit"),
    "longcat-image-edit": ("LongCat-Image-Edit's", "LongCat-Image-Edit"),
}


def tiny_warning(kind: str) -> str:
    architecture, model = TINY_MODELS.get(kind, (f"painter kind {kind}'s", kind))
    return (
        f"a painter checkpoint is 'tiny': the painter is {architecture} architecture at toy size with RANDOM "
        f"weights. Its images are noise-like and show only that the pipeline works, not what {model} paints."
    )


def labelled(label: str, message: object, *, style: str = "red", keep_newlines: bool = False) -> Text:
    """``label message`` with the label in colour and the message made safe to print."""
    return Text.assemble((label, style), " ", printable(message, keep_newlines=keep_newlines))


def execute(
    spec: JobSpec,
    beam_args: list[str],
    console: Console,
    *,
    show_progress: bool = True,
    run_id: str | None = None,
    shard: Shard | None = None,
) -> RunResult | int:
    """Run ``spec`` through ``run_job`` and print its summary: the ``RunResult``, or the exit code of a job
    that was refused (2) or broke (1). ``dimflow run`` and ``dimflow eval`` share it."""
    from pipeline.run import run_job

    set_secret_env_names(spec.secret_env_names())
    if "tiny" in spec.painter.checkpoints().values():
        console.print(labelled("warning:", tiny_warning(spec.painter.kind), style="yellow"))
    console.print(Text.assemble("dimflow: job ", text(spec.name, "bold"), ", manifest ", text(spec.manifest)))
    try:
        if shard is not None:
            console.print(text(f"shard {shard.index} of {shard.count}, run {run_id}"))
        result = run_job(
            spec, beam_args, console=console, show_progress=show_progress, run_id=run_id, shard=shard
        )
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        console.print(labelled("error:", exc, keep_newlines=True))
        return EXIT_BAD_INPUT
    except Exception as exc:  # the run itself broke (not a row): say so and exit non-zero
        console.print(labelled("run failed:", f"{type(exc).__name__}: {exc}", keep_newlines=True))
        return EXIT_RUN_FAILED

    from pipeline.progress import summary_table

    console.print(summary_table(f"run {result.run_id}", result.counts, result.elapsed_s))
    if result.stage == "design":
        console.print(text(f"blueprints: {result.table_dir}"))
    else:
        console.print(text(f"images:     {result.images_dir}"))
        console.print(text(f"provenance: {result.table_dir}"))
    console.print(text(f"run record: {result.run_record}"))
    if result.failures:
        table = Table(title="failed rows (first 10)", title_justify="left")
        for column in ("id", "stage", "error"):
            table.add_column(column, overflow="fold")
        for failure in result.failures:
            table.add_row(
                text(failure["id"] or "(unreadable row)"), text(failure["stage"]), text(failure["error"])
            )
        console.print(table)
    if result.counts.get("failed"):
        console.print(
            f"{result.counts['failed']} row(s) failed; their stage and error are in the "
            f"{'blueprint table' if result.stage == 'design' else 'provenance'} (status='failed').",
            highlight=False,
        )
    if result.counts.get("rejected"):
        console.print(
            f"{result.counts['rejected']} row(s) rejected: judged below quality.min_overall after "
            "quality.max_paints paints; their best image is kept, for review (provenance status='rejected').",
            highlight=False,
        )
    return result
