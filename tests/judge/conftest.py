"""Fixtures for the judge tests: the fake OpenAI-compatible server and key (``tests.fakes.openai_fixtures``),
a set-up OpenAI judge, test images and verdicts."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from tests.fakes.openai_fixtures import api_key, fake_server, set_up_providers  # noqa: F401 - fixtures
from transforms.judge.openai_judge import OpenAIJudge


def image_bytes(width: int, height: int, colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def verdict_json(
    follow: float = 8, quality: float = 9, preservation: float | None = 7, reason: str = "ok"
) -> str:
    """A reply in dimflow's rubric's JSON shape (``preservation=None`` leaves it out, as for text-to-image)."""
    document: dict = {"instruction_following": follow, "visual_quality": quality}
    if preservation is not None:
        document["preservation"] = preservation
    document["reason"] = reason
    return json.dumps(document)


@pytest.fixture
def judge(api_key) -> Iterator[Callable[..., OpenAIJudge]]:  # noqa: F811 - the imported fixture
    """``judge(server, **overrides)``: a set-up OpenAI judge with fast test defaults."""
    yield from set_up_providers(OpenAIJudge, model="judge-test")
