"""The openai provider against the fake server: outcomes per fault, retries, Retry-After, limits, secrets."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.designer.conftest import FAKE_KEY, KEY_ENV, png_bytes
from transforms.designer.base import Design, DesignerSetupError, DesignFailure, DesignRequest
from transforms.designer.openai_provider import OpenAIDesigner
from transforms.designer.registry import make_provider
from transforms.designer.stage import DesignRecords
from transforms.records import EditRecord, ManifestRow, RowRef
from transforms.reread import SourceLimits

IMAGE = png_bytes()


def request(key: str, image: bytes | None = IMAGE) -> DesignRequest:
    return DesignRequest(key, f"make the {key} row blue", image)


def test_every_row_ends_ok_or_failed_with_its_reason(fake_server, designer):
    server = fake_server(slow_s=1.5)
    scripts = {
        "plain": [],
        "think": ["think"],
        "flaky500": ["500", "ok"],
        "flaky429": ["429:none", "ok"],
        "slowonce": ["slow", "ok"],
        "garbledonce": ["malformed", "ok"],
        "down": ["500", "503", "500", "ok"],
        "hung": ["slow", "slow", "slow"],
        "garbled": ["malformed"] * 3,
        "empty": ["empty"],
        "refused": ["refusal"],
        "bad": ["400"],
    }
    for marker, faults in scripts.items():
        server.script(f"the {marker} row", faults)
    provider = designer(server, timeout_s=0.5, max_attempts=3)
    requests = [request(marker) for marker in scripts] + [
        DesignRequest("t2i", "a red bicycle", None),
        DesignRequest("broken", "make it blue", b"not an image"),
    ]
    results = dict(zip([r.key for r in requests], provider.design(requests), strict=True))

    for key in ("plain", "think", "t2i"):
        assert isinstance(results[key], Design) and results[key].attempts == 1, results[key]
    for key in ("flaky500", "flaky429", "slowonce", "garbledonce"):
        assert isinstance(results[key], Design) and results[key].attempts == 2, results[key]
    assert isinstance(results["down"], DesignFailure)  # 3 attempts, all 5xx: the 4th (ok) never happens
    expected_failures = {
        "down": ("HTTP 500: scripted 500; gave up after 3 attempts", 3),
        "hung": ("timed out after 0.5 s; gave up after 3 attempts", 3),
        "empty": ("empty reply", 1),
        "refused": ("designer refused: \"I'm sorry, but I can't help with that request.\"", 1),
        "bad": ("HTTP 400: scripted 400 (not retried)", 1),
        "broken": ("cannot decode source image for the designer", 0),
    }
    for key, (reason, attempts) in expected_failures.items():
        result = results[key]
        assert isinstance(result, DesignFailure) and result.error.startswith(reason), (key, result)
        assert result.attempts == attempts, (key, result)
    garbled = results["garbled"]
    assert isinstance(garbled, DesignFailure) and garbled.attempts == 3
    assert garbled.error.startswith("malformed reply") and garbled.error.endswith("gave up after 3 attempts")

    # Calls per row: retries happen, and stop at max_attempts.
    calls = {marker: len(server.matching(f"the {marker} row")) for marker in scripts}
    assert calls == {
        "plain": 1,
        "think": 1,
        "flaky500": 2,
        "flaky429": 2,
        "slowonce": 2,
        "garbledonce": 2,
        "down": 3,
        "hung": 3,
        "garbled": 3,
        "empty": 1,
        "refused": 1,
        "bad": 1,
    }
    assert not server.matching("make it blue")  # the undecodable image never left the worker

    plain = results["plain"]
    assert plain.blueprint.startswith("1. Edit instruction: Instruction: make the plain row blue")
    assert plain.tokens_in and plain.tokens_out and plain.latency_s > 0
    assert "<think>" not in results["think"].blueprint
    assert results["refused"].tokens_out  # a refused reply was still paid for
    assert results["t2i"].blueprint.startswith("1. Edit instruction: Request: a red bicycle")


def test_request_shape_image_bounds_and_sampling_defaults(fake_server, designer):
    server = fake_server()
    provider = designer(server, seed=1234)
    big = png_bytes(2400, 1600, noise=True)
    (result,) = provider.design([DesignRequest("big", "make it blue", big)])
    assert isinstance(result, Design)
    (seen,) = server.requests
    assert seen.authorized and seen.model == "gpt-test"
    assert seen.temperature == 0.0 and seen.seed == 1234 and seen.max_tokens == 1024
    assert seen.images == 1 and seen.image_sizes == [(1024, 683)]
    assert seen.image_bytes <= 400_000  # random noise forces lower quality / size to fit
    assert "1. Edit instruction:" in seen.text and seen.text.endswith("Instruction: make it blue")


def test_retry_after_is_honoured(fake_server, designer):
    server = fake_server()
    server.script("the seconds row", ["429:1", "ok"])
    server.script("the date row", ["429:date:2", "ok"])
    server.script("the unavailable row", ["503:1", "ok"])
    provider = designer(server, max_concurrency=1, backoff_base_s=0.0, backoff_max_s=0.0)
    for marker, at_least in (("seconds", 0.95), ("date", 0.95), ("unavailable", 0.95)):
        (result,) = provider.design([request(marker)])
        assert isinstance(result, Design) and result.attempts == 2
        first, second = server.matching(f"the {marker} row")
        assert second.t - first.t >= at_least, marker
        assert second.t - first.t < 5.0, marker


def test_a_429_with_retry_after_pauses_the_whole_worker(fake_server, designer):
    server = fake_server()
    server.script("the limited row", ["429:1", "ok"])
    provider = designer(server, max_concurrency=2)
    requests = [request("limited")] + [request(f"other{i}") for i in range(6)]
    start = time.monotonic()
    results = provider.design(requests)
    assert all(isinstance(r, Design) for r in results)
    throttled_at = server.matching("the limited row")[0].t
    sent = [r.t for r in server.requests if r.fault == "ok"]
    assert len(sent) == 7 and time.monotonic() - start >= 0.95
    # Requests already on their way when the 429 came back may land just after it; then nothing is
    # sent until its Retry-After (1 s) has passed.
    assert not [t for t in sent if throttled_at + 0.3 < t < throttled_at + 0.95]
    assert [t for t in sent if t >= throttled_at + 0.95]


def test_the_configured_limit_is_never_exceeded(fake_server, designer):
    server = fake_server(limit=10, window_s=2.0)  # 300 requests/minute, counted per 2 s window
    provider = designer(server, requests_per_minute=300, max_concurrency=8, headroom=0.9)
    results = provider.design([request(f"r{i}") for i in range(20)])
    assert all(isinstance(r, Design) and r.attempts == 1 for r in results)
    assert server.limited == 0 and max(server.window_counts.values()) <= 10
    assert server.window_counts[0] >= 8  # and it was not far below the limit either


def test_going_over_the_limit_is_throttled_and_retried(fake_server, designer):
    server = fake_server(limit=5, window_s=1.0)
    provider = designer(server, requests_per_minute=6000, max_attempts=6)  # far above the server's 300/min
    results = provider.design([request(f"r{i}") for i in range(12)])
    assert server.limited > 0  # the fake does enforce its limit...
    assert all(isinstance(r, Design) for r in results)  # ...and Retry-After + retries get every row through
    assert max(server.window_counts.values()) <= 5


def test_token_budget_spaces_requests(fake_server, designer):
    server = fake_server()
    # ~2,000-token estimates under 120,000 tokens/minute (2,000/s): about one request per second
    provider = designer(server, tokens_per_minute=120_000, headroom=1.0, max_tokens=1000)
    start = time.monotonic()
    results = provider.design([request(f"r{i}") for i in range(3)])
    assert all(isinstance(r, Design) for r in results)
    times = sorted(r.t for r in server.requests)
    assert times[2] - times[0] >= 0.8
    assert time.monotonic() - start < 10


def test_auth_failure_stops_calling(fake_server, designer, monkeypatch):
    server = fake_server()
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-000")
    provider = designer(server, max_concurrency=1)
    results = provider.design([request(f"r{i}") for i in range(5)])
    assert all(isinstance(r, DesignFailure) for r in results)
    assert results[0].error == "HTTP 401: scripted 401 (not retried)" and results[0].attempts == 1
    assert all(r.error.startswith("HTTP 401") and r.attempts == 0 for r in results[1:])
    assert len(server.requests) == 1


def test_missing_key_is_a_setup_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("DIMFLOW_NO_SUCH_KEY", raising=False)
    provider = OpenAIDesigner(model="gpt-4o", api_key_env="DIMFLOW_NO_SUCH_KEY")
    with pytest.raises(DesignerSetupError, match="environment variable DIMFLOW_NO_SUCH_KEY is not set"):
        provider.setup()
    monkeypatch.setenv("DIMFLOW_NO_SUCH_KEY", "   ")
    with pytest.raises(DesignerSetupError, match="DIMFLOW_NO_SUCH_KEY"):
        provider.setup()


def test_keyless_endpoint(fake_server, designer):
    server = fake_server()
    server.expected_key = None
    provider = designer(server, model="local-vllm", api_key_env="")
    (result,) = provider.design([request("x")])
    assert isinstance(result, Design)


def test_secret_never_leaks(fake_server, designer, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore", "transforms"):
        caplog.set_level(logging.DEBUG, logger=name)
    server = fake_server()
    server.script("the leaky row", ["leak"])
    server.script("the failing row", ["500", "500"])
    provider = designer(server, max_attempts=2)
    results = provider.design([request("leaky"), request("failing"), request("fine")])
    assert (
        "invalid credentials: Bearer [redacted]" in results[0].error
    )  # the server echoed it; we scrubbed it
    assert isinstance(results[2], Design)
    out = capsys.readouterr()
    texts = [
        caplog.text,
        out.out,
        out.err,
        repr(provider),
        str(provider),
        json.dumps(provider.config()),
        *map(str, results),
        *map(repr, results),
        provider.name,
    ]
    assert caplog.text  # there was logging to look at
    assert not [text for text in texts if FAKE_KEY in text]
    assert not any(FAKE_KEY in str(value) for value in provider.__getstate__().values())
    pickled = pickle.dumps(provider)  # Beam may ship providers to workers: the key must not travel
    assert FAKE_KEY.encode() not in pickled
    assert pickle.loads(pickled).config() == provider.config()


def test_config_names_what_changes_blueprints_and_nothing_else():
    a = make_provider(
        {
            "kind": "openai",
            "model": "gpt-4o",
            "base_url": "https://user:pw@example.com:8443/v1",
            "api_key_env": "SOME_KEY",
            "requests_per_minute": 10,
            "tokens_per_minute": 1000,
            "max_concurrency": 2,
            "timeout_s": 5,
            "max_attempts": 2,
            "temperature": 0.0,
            "seed": 7,
            "cache": True,
            "workers": 3,
        }
    )
    b = make_provider({"kind": "openai", "model": "gpt-4o", "base_url": "https://example.com/v1", "seed": 7})
    assert a.config() == b.config()  # limits, key name, workers and credentials do not enter design_key
    assert a.config() == {
        "kind": "openai",
        "model": "gpt-4o",
        "endpoint": "example.com",
        "prompt": a.config()["prompt"],
        "temperature": 0.0,
        "seed": 7,
        "max_tokens": 1024,
        "image_max_side": 1024,
    }
    assert a.name == "openai:gpt-4o" and a.workers == 3
    assert make_provider({"kind": "openai", "model": "gpt-4o"}).config()["endpoint"] == "api.openai.com"
    assert make_provider({"kind": "openai", "model": "m", "seed": None}).config()["seed"] is None
    with pytest.raises(ValueError, match="designer.kind='gemini'"):
        make_provider({"kind": "gemini"})


def _record(row_id: str, instruction: str, source: Path) -> EditRecord:
    """A fetched record: the stage reads its source again and checks the sha256."""
    return EditRecord(
        ManifestRow(row_id, instruction, str(source), None, None, RowRef("m.jsonl", 1)),
        source_sha256=hashlib.sha256(IMAGE).hexdigest(),
        source_size=len(IMAGE),
    )


def test_through_the_beam_stage(fake_server, api_key, tmp_path):
    source = tmp_path / "image.png"
    source.write_bytes(IMAGE)
    server = fake_server()
    server.script("the refused row", ["refusal"])
    server.script("the down row", ["500", "500"])
    config = {
        "kind": "openai",
        "model": "gpt-test",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "requests_per_minute": 6000,
        "max_attempts": 2,
        "max_concurrency": 2,
    }
    records = [_record(k, f"make the {k} row blue", source) for k in ("ok1", "ok2", "ok3", "refused", "down")]
    with beam.Pipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(records)
            | DesignRecords(
                lambda: make_provider(config),
                lambda r: f"dk-{r.id}",
                max_batch_size=2,
                source_limits=SourceLimits(max_image_bytes=len(IMAGE)),
            )
        )
        designed = out.designed | "D" >> beam.Map(
            lambda r: (r.id, r.designer, r.designer_attempts, r.tokens_in > 0)
        )
        failed = out.failed | "F" >> beam.Map(
            lambda f: (f.id, f.stage, f.error.split(";")[0], f.record.designer_attempts)
        )
        assert_that(
            designed,
            equal_to([(k, "openai:gpt-test", 1, True) for k in ("ok1", "ok2", "ok3")]),
            label="designed",
        )
        assert_that(
            failed,
            equal_to(
                [
                    (
                        "refused",
                        "design",
                        "designer refused: \"I'm sorry, but I can't help with that request.\"",
                        1,
                    ),
                    ("down", "design", "HTTP 500: scripted 500", 2),
                ]
            ),
            label="failed",
        )
