"""The local designer on a tiny random Qwen2.5-VL: loading, batching, per-row failures, config.

A random model writes noise, so these tests check plumbing, not blueprints.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from tests.designer.conftest import png_bytes
from tests.designer.tiny_vlm import build_tiny_qwen25vl
from transforms.designer.base import Design, DesignerSetupError, DesignFailure, DesignRequest
from transforms.designer.local_provider import LocalDesigner
from transforms.designer.registry import make_provider


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl") / "model")


@pytest.fixture(scope="module")
def tiny_eos(tmp_path_factory):
    """A tiny model whose first generated token is forced to be end-of-sequence: an empty reply."""
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl-eos") / "model", force_eos=True)


@contextmanager
def patched_generate(provider: LocalDesigner, wrapper):
    """Wrap the (process-shared) model's generate for one test: ``wrapper(original, **inputs)``."""
    model = provider._loaded.model
    original = model.generate
    model.generate = lambda **inputs: wrapper(original, **inputs)
    try:
        yield
    finally:
        del model.generate


def test_batches_rows_and_keeps_their_order(tiny):
    provider = make_provider({"kind": "local", "model": str(tiny), "max_tokens": 6, "max_concurrency": 2})
    assert isinstance(provider, LocalDesigner)
    provider.setup()
    sizes: list[int] = []

    def spy(original, **inputs):
        sizes.append(int(inputs["input_ids"].shape[0]))
        return original(**inputs)

    requests = [
        DesignRequest("a", "make it blue", png_bytes(120, 90)),
        DesignRequest("t2i", "a red bicycle", None),
        DesignRequest("b", "add a hat", png_bytes(60, 80)),
        DesignRequest("broken", "x", b"not an image"),
        DesignRequest("c", "remove the tree", png_bytes(200, 100)),
    ]
    with patched_generate(provider, spy):
        results = provider.design(requests)
    assert sizes == [2, 1, 1]  # images: a+b, then c; the text-only row alone; the broken row never
    assert len(results) == 5
    broken = results[3]
    assert isinstance(broken, DesignFailure) and broken.attempts == 0
    assert broken.error.startswith("cannot decode source image")
    for result in results[:3] + results[4:]:
        assert isinstance(result, Design | DesignFailure) and result.attempts == 1
        assert result.tokens_in > 0 and 1 <= result.tokens_out <= 6
        if isinstance(result, DesignFailure):  # noise may decode to whitespace only
            assert result.error.startswith("empty reply")
    assert results[0].tokens_in > results[1].tokens_in  # the image's tokens count


def test_empty_replies_fail_the_row(tiny_eos):
    provider = LocalDesigner(model=str(tiny_eos), max_tokens=1)
    provider.setup()
    results = provider.design(
        [DesignRequest("a", "make it blue", png_bytes()), DesignRequest("b", "a cat", None)]
    )
    assert [(type(r), r.error) for r in results] == [(DesignFailure, "empty reply")] * 2


def test_a_failing_batch_is_retried_row_by_row(tiny):
    provider = LocalDesigner(model=str(tiny), max_tokens=3, max_concurrency=4)
    provider.setup()
    calls: list[int] = []

    def flaky(original, **inputs):
        calls.append(int(inputs["input_ids"].shape[0]))
        if inputs["input_ids"].shape[0] > 1:
            raise RuntimeError("CUDA out of memory (pretend)")
        if calls.count(1) == 2:
            raise ValueError("this row is cursed")
        return original(**inputs)

    with patched_generate(provider, flaky):
        results = provider.design([DesignRequest(k, "make it blue", png_bytes()) for k in "abc"])
    assert calls == [3, 1, 1, 1]
    assert isinstance(results[1], DesignFailure)
    assert results[1].error == "local designer failed: ValueError: this row is cursed"
    assert all(
        not isinstance(r, DesignFailure) or r.error.startswith("empty") for r in (results[0], results[2])
    )


def test_model_is_loaded_once_per_process(tiny):
    first, second = LocalDesigner(model=str(tiny)), LocalDesigner(model=str(tiny))
    first.setup()
    second.setup()
    assert first._loaded is second._loaded


def test_config_and_settings():
    provider = make_provider(
        {
            "kind": "local",
            "model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "max_tokens": 512,
            "temperature": 0.0,
            "max_concurrency": 4,
            "requests_per_minute": 5,
        }
    )
    assert provider.name == "local:Qwen/Qwen2.5-VL-7B-Instruct"
    assert provider.config() == {
        "kind": "local",
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "prompt": provider.config()["prompt"],
        "decoding": "greedy",
        "max_tokens": 512,
        "image_max_side": 1024,
    }
    assert make_provider({"kind": "local", "model": None}).model_id == "Qwen/Qwen2.5-VL-3B-Instruct"
    with pytest.raises(DesignerSetupError, match="temperature"):
        make_provider({"kind": "local", "model": "m", "temperature": 0.7})
    with pytest.raises(DesignerSetupError, match="cannot load"):
        LocalDesigner(model="/nonexistent/model/dir").setup()
