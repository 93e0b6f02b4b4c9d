"""The local judge on the tiny random Qwen2.5-VL the designer tests build: loading, two images per edit row,
batching by mode, noise replies as failures naming the parse problem, and a valid reply as a verdict.

A random model writes noise, so a failure is the honest outcome of judging with it.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.designer.tiny_vlm import build_tiny_qwen25vl
from tests.judge.conftest import image_bytes, verdict_json
from transforms.designer.local_provider import LocalDesigner
from transforms.judge.base import JudgeFailure, JudgeRequest, JudgeSetupError, Verdict
from transforms.judge.local_judge import LocalJudge
from transforms.judge.registry import make_judge
from transforms.judge.rubric import RUBRIC_VERSION

SOURCE = image_bytes(120, 90, (200, 40, 40))
EDITED = image_bytes(120, 90, (40, 40, 200))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl-judge") / "model")


@pytest.fixture
def spied(monkeypatch):
    """Record each generate call's (rows, images) on a set-up judge's process-shared model."""

    def attach(provider: LocalJudge) -> list[tuple[int, int]]:
        model = provider._loaded.model
        original = model.generate
        calls: list[tuple[int, int]] = []

        def spy(**inputs):
            calls.append((int(inputs["input_ids"].shape[0]), int(inputs["image_grid_thw"].shape[0])))
            return original(**inputs)

        monkeypatch.setattr(model, "generate", spy)
        return calls

    return attach


def test_noise_replies_fail_naming_the_parse_problem(tiny, spied):
    provider = make_judge(
        {"kind": "local", "model": str(tiny), "max_tokens": 8, "max_concurrency": 4, "rubric": None}
    )
    assert isinstance(provider, LocalJudge)
    provider.setup()
    calls = spied(provider)
    requests = [
        JudgeRequest("a", "make it blue", SOURCE, EDITED),
        JudgeRequest("t2i", "a red bicycle", None, EDITED),
        JudgeRequest("broken", "make it blue", SOURCE, b"not an image"),
        JudgeRequest("b", "add a hat", SOURCE, EDITED),
    ]
    results = provider.judge(requests)
    # edits together (two images per row: 2 rows, 4 images), then the text-to-image row (one image);
    # the undecodable row never reaches the model
    assert calls == [(2, 4), (1, 1)]
    assert len(results) == 4
    broken = results[2]
    assert isinstance(broken, JudgeFailure) and broken.attempts == 0
    assert broken.error.startswith("cannot decode edited image for the judge")
    for result in (results[0], results[1], results[3]):
        assert isinstance(result, JudgeFailure), result  # random weights cannot write a verdict
        assert result.error.startswith("malformed judge reply: "), result.error
        assert "gave up" not in result.error  # no retry: greedy decoding would repeat itself
        assert result.attempts == 1 and result.tokens_in > 0 and 1 <= result.tokens_out <= 8
    assert results[0].tokens_in > results[1].tokens_in  # two images' tokens against one


def test_a_valid_reply_is_a_verdict(tiny, monkeypatch):
    provider = LocalJudge(model=str(tiny), max_tokens=4)
    provider.setup()
    replies = [
        f"<think>looks right</think>{verdict_json(9, 4, 8, 'blue, slightly soft')}",
        verdict_json(5, 5, None, "a bicycle"),
    ]
    processor = provider._loaded.processor
    decode_sizes: list[int] = []

    def decode(generated, **kwargs):
        decode_sizes.append(int(generated.shape[0]))
        return [replies.pop(0) for _ in range(generated.shape[0])]

    monkeypatch.setattr(processor, "batch_decode", decode)
    edit, picture = provider.judge(
        [JudgeRequest("a", "make it blue", SOURCE, EDITED), JudgeRequest("t", "a bicycle", None, EDITED)]
    )
    assert decode_sizes == [1, 1]
    assert isinstance(edit, Verdict) and edit.attempts == 1 and edit.tokens_in > 0
    assert edit.scores == {"instruction_following": 9.0, "visual_quality": 4.0, "preservation": 8.0}
    assert math.isclose(edit.overall, 0.6) and edit.reason == "blue, slightly soft"
    assert isinstance(picture, Verdict) and math.isclose(picture.overall, 0.5)
    assert picture.scores == {"instruction_following": 5.0, "visual_quality": 5.0}


def test_shares_the_loaded_model_with_a_local_designer(tiny):
    judge, designer = LocalJudge(model=str(tiny)), LocalDesigner(model=str(tiny))
    judge.setup()
    designer.setup()
    assert judge._loaded is designer._loaded


def test_config_and_settings(tmp_path):
    provider = make_judge(
        {
            "kind": "local",
            "model": "Qwen/Qwen2.5-VL-72B-Instruct",
            "max_tokens": 256,
            "temperature": 0.0,
            "max_concurrency": 2,
            "requests_per_minute": 5,
            "rubric": None,
        }
    )
    assert provider.name == "local:Qwen/Qwen2.5-VL-72B-Instruct" and provider.batch_size == 2
    assert provider.config() == {
        "kind": "local",
        "model": "Qwen/Qwen2.5-VL-72B-Instruct",
        "rubric": RUBRIC_VERSION,
        "decoding": "greedy",
        "max_tokens": 256,
        "image_max_side": 1024,
    }
    json.dumps(provider.config())
    with pytest.raises(JudgeSetupError, match="judge.temperature=0.7: the local judge decodes greedily"):
        make_judge({"kind": "local", "model": "m", "temperature": 0.7})
    with pytest.raises(JudgeSetupError, match="judge.model='/nonexistent/judge' is not available here"):
        LocalJudge(model="/nonexistent/judge").preflight()
    with pytest.raises(JudgeSetupError, match="judge.model='/nonexistent/judge': cannot load"):
        LocalJudge(model="/nonexistent/judge").setup()
