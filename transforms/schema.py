"""Arrow schemas of dimflow's tables and the content keys that name outputs.

Provenance column names are the analytics API (DESIGN.md): add columns, never rename them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

PROVENANCE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id", pa.string()),
        ("status", pa.string()),  # ok | failed | skipped | rejected
        ("error_stage", pa.string()),
        ("error", pa.string()),
        ("mode", pa.string()),  # edit | t2i
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("instruction", pa.string()),
        ("blueprint", pa.string()),
        ("designer", pa.string()),
        ("design_key", pa.string()),
        ("designer_attempts", pa.int32()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("design_s", pa.float64()),
        ("blueprint_run_id", pa.string()),  # the run whose designer call made the blueprint (cache reuse)
        ("painter", pa.string()),
        ("checkpoint_sha256", pa.string()),
        # The license of the painter's weights (transforms/painter/licenses.py): apache-2.0, dim-non-commercial...
        ("painter_license", pa.string()),
        ("seed", pa.int64()),
        ("steps", pa.int32()),
        ("guidance_scale", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("dtype", pa.string()),
        # How the VAE ran (painter.vae_dtype): the dtype, or float32-autocast / float32-from-<dtype>.
        ("vae_dtype", pa.string()),
        ("device", pa.string()),
        ("batch_size", pa.int32()),
        ("paint_s", pa.float64()),
        ("render_key", pa.string()),
        ("output_uri", pa.string()),
        ("output_sha256", pa.string()),
        # The manifest's category column (alias edit_type, task_type): eval tables and report means group by it
        ("category", pa.string()),
        # The judge (transforms/judge): which model, its scores of the kept image as JSON (criteria 0-10),
        # judge_overall in [0, 1] (transforms/judge/scores.py), its one-sentence reason, an error when no
        # verdict came back (the row stays ok), calls made (retries included, all paints), tokens, seconds.
        ("judge", pa.string()),
        ("judge_scores", pa.string()),
        ("judge_overall", pa.float64()),
        ("judge_reason", pa.string()),
        ("judge_error", pa.string()),
        ("judge_attempts", pa.int32()),
        ("judge_tokens_in", pa.int64()),
        ("judge_tokens_out", pa.int64()),
        ("judge_s", pa.float64()),
        # Best-of-N (quality.max_paints): paints made for the row, and every paint as JSON (seed, render key,
        # image, scores, errors); quality_key names the request + judge + bar (incremental runs look it up).
        ("paints", pa.int32()),
        ("paint_attempts", pa.string()),
        ("quality_key", pa.string()),
        # Region-locked edits (manifest ``mask``): the mask, its sha256, the share of output pixels locked to
        # the source's, and the largest |written - source| inside the locked region (0 when exact).
        ("mask_uri", pa.string()),
        ("mask_sha256", pa.string()),
        ("locked_fraction", pa.float64()),
        ("locked_max_abs_diff", pa.int32()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("worker", pa.string()),
        ("metadata", pa.string()),  # JSON text
        ("versions", pa.string()),  # JSON text
    ]
)

from transforms.records import STATUSES  # noqa: E402, F401 - the provenance statuses, kept importable here

# The design half of a run: one row per manifest row (ok with a blueprint, or failed before/at design),
# under ``{output}/blueprints/run={run_id}/``. Written by ``stage: design`` and ``stage: all``; read by
# ``stage: paint`` and by the designer cache. A DIM-Edit-style dataset: source, instruction, blueprint.
BLUEPRINT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id", pa.string()),
        ("status", pa.string()),  # ok | failed
        ("error_stage", pa.string()),
        ("error", pa.string()),
        ("mode", pa.string()),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("instruction", pa.string()),
        ("design_key", pa.string()),
        ("designer", pa.string()),
        ("blueprint", pa.string()),
        ("blueprint_run_id", pa.string()),
        ("designer_attempts", pa.int32()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("design_s", pa.float64()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("worker", pa.string()),
    ]
)


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def design_key(*, source_sha256: str | None, instruction: str, designer_config: dict[str, Any]) -> str:
    """Identity of a designer call: the same source, instruction and designer config give one blueprint."""
    return _digest({"source_sha256": source_sha256, "instruction": instruction, "designer": designer_config})


def render_key(
    *,
    source_sha256: str | None,
    instruction: str,
    designer_config: dict[str, Any],
    painter_config: dict[str, Any],
    checkpoint_sha256: str,
    seed: int,
) -> str:
    """Identity of a rendered image; outputs are named by it, so an unchanged row rewrites nothing.

    ``painter_config`` carries steps, guidance and resolution (and anything else that changes pixels).
    """
    return _digest(
        {
            "source_sha256": source_sha256,
            "instruction": instruction,
            "designer": designer_config,
            "painter": painter_config,
            "checkpoint_sha256": checkpoint_sha256,
            "seed": seed,
        }
    )


def quality_key(
    *, render_key: str, judge_config: dict[str, Any], min_overall: float | None, max_paints: int
) -> str:
    """Identity of a judged row's outcome: its first paint (``render_key``: source, instruction, seed,
    designer, painter), the judge's config (model, rubric, sampling; never keys or rate limits) and what the
    verdicts decide (``quality.min_overall``, ``quality.max_paints``). Incremental runs skip a row only if a
    row with this key ended ``ok`` or ``skipped`` and its image is still there."""
    return _digest(
        {
            "render_key": render_key,
            "judge": judge_config,
            "min_overall": min_overall,
            "max_paints": max_paints,
        }
    )
