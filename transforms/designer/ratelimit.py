"""Client-side limits for a remote designer: requests/minute, tokens/minute, concurrency, backoff.

How the *global* limit holds across N workers (processes or pods): per-worker shares. Every process
gets ``limit / workers`` of each rate and ``max_concurrency // workers`` (at least 1) concurrent
requests, where ``workers`` comes from the job spec (``designer.workers``; the pipeline sets it from the
runner's worker or shard count). Inside one process all provider instances (Beam may run several DoFn
instances per process, one per bundle thread) share one limiter through ``shared_limiter``. The shares
only add up to the limit if ``workers`` is not below the number of processes that call the API; a
worker with nothing to do leaves its share unused (the price of needing no coordination service).

Each rate is a token bucket whose capacity is one request (implemented as virtual scheduling, i.e.
GCRA): callers reserve their start time under a lock and then sleep outside it, so waiters are served in
order and idle time never builds up a burst. A steady stream of requests is spaced ``1/rate`` apart,
so any window of the limit's length (a provider's fixed or sliding minute) sees at most ``rate * window``
plus one request. ``HEADROOM`` keeps a little below the limit to absorb clock and network jitter
between our send time and the server's arrival time.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

HEADROOM = 0.98  # fraction of each (per-worker) limit we aim for
MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After is capped: the row should fail, not stall the worker


class Bucket:
    """Token bucket of capacity one request, as virtual scheduling: ``reserve`` returns when to start.

    Thread-safe. ``rate`` is in units (requests or tokens) per second; a reservation of ``cost`` units
    pushes the next start time ``cost / rate`` later.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._next = -math.inf  # the earliest start time of the next reservation

    def reserve(self, cost: float = 1.0) -> float:
        """Reserve ``cost`` units; returns the clock time at which the caller may start."""
        with self._lock:
            start = max(self._clock(), self._next)
            self._next = start + cost / self.rate
            return start

    def adjust(self, delta: float) -> None:
        """Reconcile an estimate: ``delta`` = actual − reserved units (negative gives units back)."""
        with self._lock:
            self._next += delta / self.rate

    def hold_until(self, when: float) -> None:
        """No reservation starts before ``when`` (a server told us to back off)."""
        with self._lock:
            self._next = max(self._next, when)


@dataclass
class Permit:
    """One admitted request: settle its token estimate once the reply's ``usage`` is known."""

    limiter: RateLimiter
    estimated_tokens: int
    settled: bool = False

    def settle(self, actual_tokens: int | None) -> None:
        if self.settled or actual_tokens is None:
            return
        self.settled = True
        self.limiter.tokens.adjust(actual_tokens - self.estimated_tokens)


class RateLimiter:
    """Requests/minute and tokens/minute buckets plus a concurrency cap, for this worker's share."""

    def __init__(
        self,
        *,
        requests_per_minute: float,
        tokens_per_minute: float,
        max_concurrency: int,
        workers: int = 1,
        headroom: float = HEADROOM,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if workers < 1:
            raise ValueError(f"designer.workers must be >= 1, got {workers}")
        if max_concurrency < 1:
            raise ValueError(f"designer.max_concurrency must be >= 1, got {max_concurrency}")
        self.workers = workers
        self.requests = Bucket(requests_per_minute * headroom / workers / 60.0, clock)
        self.tokens = Bucket(tokens_per_minute * headroom / workers / 60.0, clock)
        self.concurrency = max(1, max_concurrency // workers)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._clock = clock
        self._sleep = sleep
        self._pause_lock = threading.Lock()
        self._paused_until = -math.inf
        self._pauses = 0  # bumped by every pause, so sleepers notice one that began after they reserved

    @contextmanager
    def admit(self, estimated_tokens: int) -> Iterator[Permit]:
        """Hold a concurrency slot and wait for this request's turn under both rates."""
        self._slots.acquire()
        try:
            token_start = self.tokens.reserve(estimated_tokens)
            while True:
                pauses = self._pauses
                start = max(self.requests.reserve(1), token_start)
                self._sleep_until(start)
                if self._pauses == pauses or start >= self._paused_until:
                    break
                # A server asked everyone to back off while we slept: take a new turn after the pause
                # instead of firing at its end together with every other sleeper.
            yield Permit(self, estimated_tokens)
        finally:
            self._slots.release()

    def pause(self, seconds: float) -> None:
        """Start no request for ``seconds`` (honouring a 429's Retry-After for the whole worker)."""
        until = self._clock() + seconds
        with self._pause_lock:
            if until > self._paused_until:
                self._paused_until = until
                self._pauses += 1
        self.requests.hold_until(until)

    def _sleep_until(self, when: float) -> None:
        delay = when - self._clock()
        if delay > 0:
            self._sleep(delay)


_SHARED: dict[tuple, RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(scope: str, **settings) -> RateLimiter:
    """The process-wide limiter for ``scope`` (endpoint + model) and ``settings``; created on first use."""
    key = (scope, tuple(sorted(settings.items())))
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            limiter = _SHARED[key] = RateLimiter(**settings)
        return limiter


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date); None if absent.

    ``now`` is the wall-clock epoch time (for HTTP dates); the result is clamped to [0, MAX_RETRY_AFTER_S].
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return _clamp(float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return _clamp(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return _clamp(when.timestamp() - (time.time() if now is None else now))


def _clamp(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    rng = rng or random
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** (attempt - 1)))
