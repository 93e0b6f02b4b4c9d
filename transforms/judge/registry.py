"""Build a judge provider from the job spec's ``judge`` section (a plain dict), as the designer registry does.

Building is cheap and touches no network, model, key or file: the launcher builds a judge to read
``config()`` for the quality key and to ``preflight()`` it; clients, keys and weights are acquired in
``setup()`` on the worker. The rubric file is read once, on the driver, by ``load_rubric``; its result
travels in the dict, so workers never read the file.
"""

from __future__ import annotations

from typing import Any

from transforms.judge.base import JudgeProvider
from transforms.judge.rubric import rubric_from_config
from transforms.vlm.spec_keys import LOCAL_KEYS, OPENAI_KEYS, provider_kwargs


def make_judge(config: dict[str, Any]) -> JudgeProvider | None:
    """The judge for ``config``, or None for ``kind: none`` (no judge stage).

    ``config`` is ``spec.judge.model_dump()`` with its ``rubric`` entry (a path or None in the spec)
    replaced by ``transforms.judge.rubric.load_rubric(spec.judge.rubric)``, called on the driver::

        config = {**spec.judge.model_dump(), "rubric": load_rubric(spec.judge.rubric)}
        judge = make_judge(config)

    ``load_rubric(None)`` is None (dimflow's own rubric). A ``rubric`` that is still a path string is
    refused (``RubricError``), so a worker can never be asked to read the file. Keys a provider does not
    use are ignored (the spec itself rejects unknown keys).
    """
    kind = config.get("kind", "none")
    if kind == "none":
        return None
    rubric = rubric_from_config(config.get("rubric"))
    if kind == "openai":
        from transforms.judge.openai_judge import OpenAIJudge

        return OpenAIJudge(
            rubric=rubric, **provider_kwargs(config, OPENAI_KEYS, keep_none=("seed", "base_url", "model"))
        )
    if kind == "local":
        from transforms.judge.local_judge import LocalJudge

        return LocalJudge(rubric=rubric, **provider_kwargs(config, LOCAL_KEYS))
    raise ValueError(f"judge.kind={kind!r} is unknown; expected one of: openai, local, none")
