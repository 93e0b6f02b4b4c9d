"""The openai judge against the fake server: scripted verdicts, retries of malformed replies, faults, request
shape, secrets, and a rate-limit budget of its own."""

from __future__ import annotations

import json
import logging
import math
import pickle
import time

import pytest

from tests.designer.conftest import FAKE_KEY, KEY_ENV
from tests.judge.conftest import image_bytes, verdict_json
from transforms.designer.openai_provider import OpenAIDesigner
from transforms.judge.base import JudgeFailure, JudgeRequest, JudgeSetupError, Verdict
from transforms.judge.openai_judge import OpenAIJudge
from transforms.judge.registry import make_judge
from transforms.judge.rubric import RUBRIC_VERSION

SOURCE = image_bytes(64, 48, (200, 40, 40))
EDITED = image_bytes(80, 60, (40, 40, 200))


def edit(key: str) -> JudgeRequest:
    return JudgeRequest(key, f"make the {key} row blue", SOURCE, EDITED)


def t2i(key: str) -> JudgeRequest:
    return JudgeRequest(key, f"a {key} bicycle", None, EDITED)


def expected_tokens(server, marker: str, replies: list[str]) -> tuple[int, int]:
    """The fake's usage (text/4 + 765 per image in; reply/4 out), summed over the calls for ``marker``."""
    calls = server.matching(marker)
    assert len(calls) == len(replies)
    return (
        sum(len(c.text) // 4 + 765 * c.images for c in calls),
        sum(len(r) // 4 for r in replies),
    )


def test_scripted_scores_become_verdicts(fake_server, judge):
    server = fake_server()
    good = verdict_json(9, 8, 10, "the shirt is blue and nothing else changed")
    poor = verdict_json(2, 9, 9, "the shirt is still red")
    picture = verdict_json(6, 6, None, "a bicycle, but green")
    server.script("the good row", [f"reply:{good}"])
    server.script("the poor row", [f"reply:{poor}"])
    server.script("a red bicycle", [f"reply:{picture}"])
    results = judge(server).judge([edit("good"), edit("poor"), t2i("red")])

    assert [type(r) for r in results] == [Verdict] * 3
    first, second, third = results
    assert first.scores == {"instruction_following": 9.0, "visual_quality": 8.0, "preservation": 10.0}
    assert math.isclose(first.overall, math.sqrt(9 * 8) / 10)
    assert first.reason == "the shirt is blue and nothing else changed" and first.attempts == 1
    assert (first.tokens_in, first.tokens_out) == expected_tokens(server, "the good row", [good])
    assert first.latency_s > 0
    assert math.isclose(second.overall, math.sqrt(2 * 9) / 10)
    assert third.scores == {"instruction_following": 6.0, "visual_quality": 6.0}
    assert math.isclose(third.overall, 0.6)
    assert (third.tokens_in, third.tokens_out) == expected_tokens(server, "a red bicycle", [picture])


def test_request_shape_images_and_sampling(fake_server, judge):
    server = fake_server()
    server.script_next([f"reply:{verdict_json()}", f"reply:{verdict_json(preservation=None)}"])
    provider = judge(server, max_concurrency=1, temperature=0.2, seed=77, max_tokens=300, image_max_side=70)
    results = provider.judge([edit("shape"), t2i("green")])
    assert all(isinstance(r, Verdict) for r in results), results
    edit_call, t2i_call = server.requests
    assert edit_call.authorized and edit_call.model == "judge-test"
    assert (edit_call.temperature, edit_call.seed, edit_call.max_tokens) == (0.2, 77, 300)
    # the source first, then the edited image, each fitted within image_max_side
    assert edit_call.images == 2 and edit_call.image_sizes == [(64, 48), (70, 53)]
    assert t2i_call.images == 1 and t2i_call.image_sizes == [(70, 53)]
    assert "make the shape row blue" in edit_call.text and '"preservation"' in edit_call.text
    assert "a green bicycle" in t2i_call.text and '"preservation"' not in t2i_call.text
    assert (t2i_call.temperature, t2i_call.seed, t2i_call.max_tokens) == (0.2, 77, 300)
    default = judge(server)
    server.script("the defaults row", [f"reply:{verdict_json()}"])
    default.judge([edit("defaults")])
    (seen,) = server.matching("the defaults row")
    assert (seen.temperature, seen.seed, seen.max_tokens) == (0.0, 0, 512)


def test_malformed_replies_are_asked_again_then_fail(fake_server, judge):
    server = fake_server()
    good = verdict_json(7, 7, 7, "fine")
    server.script("the once row", ["reply:The edit looks fine to me, 7/10.", f"reply:{good}"])
    server.script("the fenced row", ['reply:```json\n{"instruction_following": 7```', f"reply:{good}"])
    server.script("the never row", [f"reply:{verdict_json(follow='high')}"] * 3)
    server.script("the refused row", ["refusal"])
    server.script("the filtered row", ["reply:I'm sorry, but I cannot help with rating this."])
    results = dict(
        zip(
            "once fenced never refused filtered".split(),
            judge(server, max_attempts=3).judge(
                [edit(k) for k in "once fenced never refused filtered".split()]
            ),
            strict=True,
        )
    )
    for key in ("once", "fenced"):
        assert isinstance(results[key], Verdict) and results[key].attempts == 2, results[key]
    once_replies = ["The edit looks fine to me, 7/10.", good]
    assert (results["once"].tokens_in, results["once"].tokens_out) == expected_tokens(
        server, "the once row", once_replies
    )  # both calls were paid for
    never = results["never"]
    assert isinstance(never, JudgeFailure) and never.attempts == 3
    assert never.error == (
        "malformed judge reply: 'instruction_following' must be a number, got str 'high'; "
        "gave up after 3 attempts"
    )
    assert never.tokens_in and never.tokens_out  # three paid replies, summed
    for key in ("refused", "filtered"):  # a refusal is final: asking again gets the same refusal
        failure = results[key]
        assert isinstance(failure, JudgeFailure) and failure.attempts == 1, failure
        assert failure.error.startswith("judge refused: "), failure
    calls = {k: len(server.matching(f"the {k} row")) for k in results}
    assert calls == {"once": 2, "fenced": 2, "never": 3, "refused": 1, "filtered": 1}


def test_faults_retries_and_timeouts(fake_server, judge):
    server = fake_server(slow_s=1.5)
    good = f"reply:{verdict_json()}"
    server.script("the flaky row", ["500", "503", good])
    server.script("the slow row", ["slow", good])
    server.script("the hung row", ["slow", "slow", "slow"])
    server.script("the garbled row", ["malformed", good])
    server.script("the bad row", ["400"])
    keys = ["flaky", "slow", "hung", "garbled", "bad"]
    results = dict(zip(keys, judge(server, timeout_s=0.5).judge([edit(k) for k in keys]), strict=True))
    assert isinstance(results["flaky"], Verdict) and results["flaky"].attempts == 3
    assert isinstance(results["slow"], Verdict) and results["slow"].attempts == 2
    assert isinstance(results["garbled"], Verdict) and results["garbled"].attempts == 2
    hung = results["hung"]
    assert isinstance(hung, JudgeFailure) and hung.attempts == 3
    assert hung.error == "timed out after 0.5 s; gave up after 3 attempts"
    assert results["bad"] == JudgeFailure(
        "HTTP 400: scripted 400 (not retried)", 1, None, None, results["bad"].latency_s
    )


def test_retry_after_is_honoured(fake_server, judge):
    server = fake_server()
    server.script("the limited row", ["429:1", f"reply:{verdict_json()}"])
    provider = judge(server, max_concurrency=1, backoff_base_s=0.0, backoff_max_s=0.0)
    (result,) = provider.judge([edit("limited")])
    assert isinstance(result, Verdict) and result.attempts == 2
    first, second = server.matching("the limited row")
    assert 0.95 <= second.t - first.t < 5.0


def test_auth_failure_stops_calling(fake_server, judge, monkeypatch):
    server = fake_server()
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-000")
    results = judge(server, max_concurrency=1).judge([edit(f"r{i}") for i in range(4)])
    assert results[0].error == "HTTP 401: scripted 401 (not retried)" and results[0].attempts == 1
    assert all(
        isinstance(r, JudgeFailure) and r.attempts == 0 and r.error.startswith("HTTP 401")
        for r in results[1:]
    )
    assert len(server.requests) == 1


def test_undecodable_images_fail_without_a_call(fake_server, judge):
    server = fake_server()
    provider = judge(server)
    results = provider.judge(
        [
            JudgeRequest("e", "make it blue", SOURCE, b"not an image"),
            JudgeRequest("s", "make it blue", b"\x89PNG broken", EDITED),
        ]
    )
    assert results[0].error.startswith("cannot decode edited image for the judge: ")
    assert results[1].error.startswith("cannot decode source image for the judge: ")
    assert all(isinstance(r, JudgeFailure) and r.attempts == 0 for r in results)
    assert server.requests == []


def test_the_key_never_leaks(fake_server, judge, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "transforms"):
        caplog.set_level(logging.DEBUG, logger=name)
    server = fake_server()
    server.script("the leak row", ["leak"])
    server.script("the echo row", ["echo", "echo-json"])
    server.script(
        "the quoted row", [f"reply:{verdict_json(reason=f'headers were Authorization: Bearer {FAKE_KEY}')}"]
    )
    server.script("the bare row", [f"reply:{verdict_json(reason=f'the key is {FAKE_KEY}.')}"])
    provider = judge(server, max_attempts=2)
    results = provider.judge([edit(k) for k in ("leak", "echo", "quoted", "bare")])
    leak, echo, quoted, bare = results
    assert "invalid credentials: Bearer [redacted]" in leak.error
    assert isinstance(echo, JudgeFailure) and echo.error.startswith("malformed judge reply: ")
    assert isinstance(quoted, Verdict) and quoted.reason.startswith(
        "headers were Authorization: Bearer [redacted]"
    )
    assert isinstance(bare, Verdict) and bare.reason == "the key is [redacted]."
    out = capsys.readouterr()
    texts = [caplog.text, out.out, out.err, repr(provider), json.dumps(provider.config()), provider.name]
    texts += [str(r) for r in results] + [repr(r) for r in results]
    assert caplog.text  # there was logging to look at
    assert not [text for text in texts if FAKE_KEY in text]
    pickled = pickle.dumps(provider)  # Beam may ship providers to workers: the key must not travel
    assert FAKE_KEY.encode() not in pickled
    assert pickle.loads(pickled).config() == provider.config()


def test_the_judge_has_a_budget_of_its_own(fake_server, judge, api_key):
    """A judge and a designer on one endpoint and model never share a limiter; two judges do."""
    server = fake_server()
    settings = dict(
        model="shared-model",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        requests_per_minute=600,
        tokens_per_minute=1_000_000,
        max_concurrency=4,
    )
    designer = OpenAIDesigner(**settings)
    designer.setup()
    try:
        first, second = judge(server, **settings), judge(server, **settings)
        assert first._endpoint.limiter is second._endpoint.limiter  # one budget per process...
        assert first._endpoint.limiter is not designer._endpoint.limiter  # ...that is not the designer's
        assert first._endpoint.scope == f"judge|{server.base_url}|shared-model"
        assert designer._endpoint.scope == f"{server.base_url}|shared-model"
        # A 429 that pauses the judge's budget leaves the designer's alone.
        first._endpoint.limiter.pause(2.0)
        start = time.monotonic()
        with designer._endpoint.limiter.admit(10):
            pass
        assert time.monotonic() - start < 1.0
    finally:
        designer.teardown()


def test_config_and_settings(monkeypatch):
    a = make_judge(
        {
            "kind": "openai",
            "model": "gpt-4o",
            "base_url": "https://user:pw@judge.example.com:8443/v1",
            "api_key_env": "SOME_KEY",
            "requests_per_minute": 10,
            "tokens_per_minute": 1000,
            "max_concurrency": 2,
            "timeout_s": 5,
            "max_attempts": 2,
            "temperature": 0.0,
            "seed": 7,
            "max_tokens": 512,
            "workers": 3,
            "device": "auto",
            "dtype": "auto",
            "rubric": None,
        }
    )
    b = make_judge(
        {"kind": "openai", "model": "gpt-4o", "base_url": "https://judge.example.com/v1", "seed": 7}
    )
    assert isinstance(a, OpenAIJudge) and a.workers == 3 and a.name == "openai:gpt-4o"
    assert (
        a.config()
        == b.config()
        == {
            "kind": "openai",
            "model": "gpt-4o",
            "endpoint": "judge.example.com",
            "rubric": RUBRIC_VERSION,
            "temperature": 0.0,
            "seed": 7,
            "max_tokens": 512,
            "image_max_side": 1024,
        }
    )
    assert make_judge({"kind": "openai", "model": "m", "seed": None}).config()["seed"] is None
    with pytest.raises(ValueError, match="judge.kind='gemini'"):
        make_judge({"kind": "gemini"})
    with pytest.raises(JudgeSetupError, match="judge.model is required"):
        make_judge({"kind": "openai", "model": None})
    with pytest.raises(JudgeSetupError, match="judge.max_attempts must be >= 1"):
        make_judge({"kind": "openai", "model": "m", "max_attempts": 0})
    monkeypatch.delenv("DIMFLOW_NO_SUCH_KEY", raising=False)
    missing = make_judge({"kind": "openai", "model": "m", "api_key_env": "DIMFLOW_NO_SUCH_KEY"})
    with pytest.raises(JudgeSetupError, match="judge.api_key_env: environment variable DIMFLOW_NO_SUCH_KEY"):
        missing.preflight()
    with pytest.raises(JudgeSetupError, match="DIMFLOW_NO_SUCH_KEY"):
        missing.setup()
