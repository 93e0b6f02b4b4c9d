"""The limiter's arithmetic with a fake clock (no sleeping), Retry-After parsing, backoff bounds."""

from __future__ import annotations

import email.utils
import random
import threading
import time

import pytest

from transforms.designer.ratelimit import (
    MAX_RETRY_AFTER_S,
    Bucket,
    RateLimiter,
    backoff_delay,
    parse_retry_after,
    shared_limiter,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_spaces_requests_and_never_banks_idle_time():
    clock = FakeClock()
    bucket = Bucket(rate=2.0, clock=clock)  # 2 per second
    starts = [bucket.reserve() for _ in range(5)]
    assert starts == [1000.0, 1000.5, 1001.0, 1001.5, 1002.0]
    clock.now = 1100.0  # a long idle stretch buys no burst
    assert [bucket.reserve(), bucket.reserve()] == [1100.0, 1100.5]


def test_bucket_any_window_holds_at_most_rate_times_window_plus_one():
    clock = FakeClock()
    bucket = Bucket(rate=10 / 60, clock=clock)  # 10 per minute
    starts = [bucket.reserve() for _ in range(100)]
    for first in starts:
        assert sum(first <= s < first + 60 for s in starts) <= 10


def test_token_bucket_reconciles_estimates_with_usage():
    clock = FakeClock()
    tokens = Bucket(rate=100.0, clock=clock)
    assert tokens.reserve(500) == 1000.0
    assert tokens.reserve(500) == 1005.0  # the first estimate holds the second back 5 s
    tokens.adjust(200 - 500)  # the first reply used 200 tokens, not 500
    assert tokens.reserve(100) == 1007.0


def test_limiter_shares_limits_between_workers():
    limiter = RateLimiter(
        requests_per_minute=600, tokens_per_minute=60_000, max_concurrency=8, workers=4, headroom=1.0
    )
    assert limiter.requests.rate == pytest.approx(2.5)  # 600/min over 4 workers
    assert limiter.tokens.rate == pytest.approx(250.0)
    assert limiter.concurrency == 2
    tiny = RateLimiter(requests_per_minute=60, tokens_per_minute=1e6, max_concurrency=2, workers=4)
    assert tiny.concurrency == 1
    with pytest.raises(ValueError, match="workers"):
        RateLimiter(requests_per_minute=60, tokens_per_minute=1e6, max_concurrency=1, workers=0)


def test_admit_waits_for_both_rates():
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_minute=120,
        tokens_per_minute=6000,
        max_concurrency=4,
        headroom=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    started = []
    for _ in range(3):
        with limiter.admit(estimated_tokens=50) as permit:
            started.append(clock.now)
            permit.settle(50)
    # 2 requests/s and 100 tokens/s both space 50-token requests 0.5 s apart...
    assert started == [1000.0, 1000.5, 1001.0]
    # ...but a 150-token request holds the next one 1.5 s: the token rate dominates.
    with limiter.admit(estimated_tokens=150):
        started.append(clock.now)
    with limiter.admit(estimated_tokens=10):
        started.append(clock.now)
    assert started[3:] == [1001.5, 1003.0]


def test_pause_moves_every_later_start_past_the_pause():
    clock = FakeClock()
    limiter = RateLimiter(
        requests_per_minute=600,
        tokens_per_minute=1e9,
        max_concurrency=4,
        headroom=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    with limiter.admit(1):
        pass
    limiter.pause(3.0)
    with limiter.admit(1):
        assert clock.now == pytest.approx(1003.0)


def test_concurrency_cap_holds_across_threads():
    limiter = RateLimiter(requests_per_minute=1e9, tokens_per_minute=1e12, max_concurrency=3)
    active = peak = 0
    lock = threading.Lock()

    def work():
        nonlocal active, peak
        with limiter.admit(1):
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert peak == 3


def test_shared_limiter_is_one_per_process_and_settings():
    a = shared_limiter("host|m", requests_per_minute=60, tokens_per_minute=1e6, max_concurrency=2, workers=1)
    b = shared_limiter("host|m", requests_per_minute=60, tokens_per_minute=1e6, max_concurrency=2, workers=1)
    c = shared_limiter("host|m", requests_per_minute=30, tokens_per_minute=1e6, max_concurrency=2, workers=1)
    assert a is b and a is not c


def test_parse_retry_after_forms():
    now = 1_700_000_000.0
    assert parse_retry_after({"Retry-After": "7"}, now) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}, now) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now) == 0.0
    assert parse_retry_after({"Retry-After": "86400"}, now) == MAX_RETRY_AFTER_S
    assert parse_retry_after({"Retry-After": "soon"}, now) is None
    assert parse_retry_after({"Retry-After": "-3"}, now) == 0.0
    assert parse_retry_after({}, now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 8.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.5 * ceiling  # jitter spreads over the whole range
