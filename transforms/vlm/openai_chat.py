"""One OpenAI-compatible chat-completions endpoint, rate limited and retried: shared by the ``openai``
designer and the ``openai`` judge, so that both keep the same promises about limits, retries and keys.

Works with OpenAI, Azure OpenAI's v1 API (``base_url=https://RESOURCE.openai.azure.com/openai/v1/``) and
OpenAI-compatible servers (vLLM, SGLang, Ollama) through ``base_url``.

The official client does no retrying here (``max_retries=0``): ``ChatEndpoint.complete`` does, so that
every retry also waits for its turn under the worker's request and token budgets
(``transforms.designer.ratelimit``), a 429's ``Retry-After`` pauses the whole worker rather than one
thread, and the attempt count reaches provenance. A status that will fail every later row the same way
(401, 403, 404) stops all calling. The caller's ``parse`` decides what a reply means: it returns the parsed
value, or raises ``RetryableReply`` (ask again) or ``FinalReply`` (this row fails now).

The API key is read from the environment variable the spec names, at ``setup`` (on the worker), and is
kept only inside the client: it is not in ``repr``, pickles, logs or error messages. Every text that comes
back from the server (replies, errors, refusals) is scrubbed of it and of anything shaped like a credential
(``transforms.secrets``) before it goes anywhere: a server that echoes the request headers in a 200 reply
must not put the key into a blueprint or a judge's reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import openai

from transforms.designer.ratelimit import (
    HEADROOM,
    RateLimiter,
    backoff_delay,
    parse_retry_after,
    shared_limiter,
)
from transforms.secrets import REDACTED, Scrubber

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "api.openai.com"
RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# Statuses that will fail every later row the same way: stop calling after the first one.
FATAL_STATUS = frozenset({401, 403, 404})
MAX_ERROR_CHARS = 300

T = TypeVar("T")
R = TypeVar("R")


class RetryableReply(Exception):
    """Raised by ``parse`` (or the endpoint) for a reply worth asking for again; ``reason`` is why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FinalReply(Exception):
    """Raised by ``parse`` (or the endpoint) for a reply that fails its row without another call."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ChatResult(Generic[T]):
    value: T  # what ``parse`` returned
    attempts: int  # calls made (retries included)
    tokens_in: int | None = None  # summed over every reply that reported usage (retried ones were paid too)
    tokens_out: int | None = None
    latency_s: float = 0.0  # from the first call's start to the final reply


@dataclass(frozen=True)
class ChatFailure:
    error: str  # scrubbed; the row's failure reason
    attempts: int  # 0 when no call was made
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float = 0.0


class ChatEndpoint:
    """A client for one model on one endpoint, under this worker's share of ``section``'s limits.

    ``section`` (``designer`` / ``judge``) names the job-spec section in messages; ``setup_error`` is the
    exception class raised for settings or a key that cannot work; ``scope_prefix`` separates budgets:
    limiters are shared per process by ``scope_prefix + endpoint + model`` (and settings).
    """

    def __init__(
        self,
        *,
        section: str,
        setup_error: type[Exception],
        scope_prefix: str = "",
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        requests_per_minute: float = 60.0,
        tokens_per_minute: float = 150_000.0,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_attempts: int = 5,
        temperature: float = 0.0,
        seed: int | None = 0,
        max_tokens: int = 1024,
        workers: int = 1,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        headroom: float = HEADROOM,
    ):
        if not model:
            raise setup_error(f"{section}.model is required for {section}.kind='openai'")
        for field, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
            ("timeout_s", timeout_s),
        ):
            if not value > 0:
                raise setup_error(f"{section}.{field} must be > 0, got {value!r}")
        for field, value in (
            ("max_concurrency", max_concurrency),
            ("max_attempts", max_attempts),
            ("max_tokens", max_tokens),
            ("workers", workers),
        ):
            if int(value) < 1:
                raise setup_error(f"{section}.{field} must be >= 1, got {value!r}")
        self.section = section
        self.setup_error = setup_error
        self.scope_prefix = scope_prefix
        self.model = model
        self.base_url = base_url or None
        self.api_key_env = api_key_env
        self.requests_per_minute = float(requests_per_minute)
        self.tokens_per_minute = float(tokens_per_minute)
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.temperature = float(temperature)
        self.seed = seed
        self.max_tokens = int(max_tokens)
        self.workers = int(workers)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.headroom = float(headroom)
        self._client: openai.OpenAI | None = None
        self._limiter: RateLimiter | None = None
        self._secret = ""
        self._scrubber = Scrubber([api_key_env])
        self._fatal: str | None = None

    def __repr__(self) -> str:
        return f"ChatEndpoint({self.section}, model={self.model!r}, endpoint={self.host!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Beam may pickle providers; the client and limiter are per process and built by setup().
        state = dict(self.__dict__)
        state.update(_client=None, _limiter=None, _secret="", _fatal=None)
        return state

    @property
    def host(self) -> str:
        """The server's host name: identifies the model deployment without ports, paths or credentials."""
        if not self.base_url:
            return DEFAULT_ENDPOINT
        return (urlsplit(self.base_url).hostname or self.base_url).lower()

    @property
    def scope(self) -> str:
        """The limiter's scope: every instance in a process with this scope (and settings) shares a budget."""
        return f"{self.scope_prefix}{self.base_url or DEFAULT_ENDPOINT}|{self.model}"

    @property
    def limiter(self) -> RateLimiter | None:
        return self._limiter

    # -- lifecycle ---------------------------------------------------------------------------------

    def _read_key(self) -> str:
        """The key from the environment ('' for a keyless endpoint); ``setup_error`` when it is missing."""
        if not self.api_key_env:
            return ""
        secret = os.environ.get(self.api_key_env, "").strip()
        if not secret:
            raise self.setup_error(
                f"{self.section}.api_key_env: environment variable {self.api_key_env} is not set or empty on "
                f"this machine; export it (or map the Kubernetes Secret to it), or set "
                f"{self.section}.api_key_env='' for an endpoint without authentication"
            )
        return secret

    def preflight(self) -> None:
        """Driver-side: the key is there. Sends nothing."""
        self._read_key()

    def setup(self) -> None:
        self._secret = self._read_key()
        secret = self._secret or "no-key"  # the client insists on one; keyless servers ignore it
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=secret, timeout=self.timeout_s, max_retries=0
        )
        self._limiter = shared_limiter(
            self.scope,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrency=self.max_concurrency,
            workers=self.workers,
            headroom=self.headroom,
        )
        if self.max_concurrency < self.workers:
            log.warning(
                "%s.max_concurrency=%d < %s.workers=%d: each worker still runs 1 request at a "
                "time, so up to %d run at once",
                self.section,
                self.max_concurrency,
                self.section,
                self.workers,
                self.workers,
            )

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._secret = ""

    # -- calling -----------------------------------------------------------------------------------

    def fan_out(self, items: Sequence[T], one: Callable[[T], R]) -> list[R]:
        """``one`` over ``items`` on this worker's concurrency share of threads; results in order."""
        if self._client is None or self._limiter is None:
            raise RuntimeError(f"{self!r}: called before setup()")
        if not items:
            return []
        threads = min(len(items), self._limiter.concurrency)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=self.section) as pool:
            return list(pool.map(one, items))

    def complete(
        self, key: str, messages: list[dict[str, Any]], estimate: int, parse: Callable[[str | None], T]
    ) -> ChatResult[T] | ChatFailure:
        """Ask until ``parse`` accepts a reply or ``max_attempts`` calls were made; never raises for the row.

        ``key`` names the row in logs; ``estimate`` is the request's token estimate (prompt, images and the
        reply's ceiling) for the tokens/minute budget; ``parse`` gets the reply's scrubbed text (None if the
        reply had none).
        """
        if self._client is None or self._limiter is None:
            raise RuntimeError(f"{self!r}: complete() called before setup()")
        if self._fatal:
            return ChatFailure(self._fatal, attempts=0)
        started: float | None = None
        usage = _Usage()
        reason = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            with self._limiter.admit(estimate) as permit:
                if started is None:
                    started = time.monotonic()
                try:
                    completion = self._client.chat.completions.create(
                        model=self.model,
                        messages=messages,
                        temperature=self.temperature,
                        max_tokens=self.max_tokens,
                        n=1,
                        **({} if self.seed is None else {"seed": self.seed}),
                    )
                    permit.settle(_total_tokens(completion))
                    usage.add(completion)
                    value = self._read(completion, parse)
                    return ChatResult(value, attempt, usage.tokens_in, usage.tokens_out, _since(started))
                except RetryableReply as retry:
                    reason = retry.reason
                except FinalReply as final:
                    return ChatFailure(
                        final.reason, attempt, usage.tokens_in, usage.tokens_out, _since(started)
                    )
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    reason = f"HTTP {status}: {self._detail(exc)}"
                    if status not in RETRYABLE_STATUS:
                        if status in FATAL_STATUS:
                            self._fatal = f"{reason} (earlier row; not calling again)"
                        return ChatFailure(
                            f"{reason} (not retried)",
                            attempt,
                            usage.tokens_in,
                            usage.tokens_out,
                            _since(started),
                        )
                    retry_after = parse_retry_after(exc.response.headers)
                    if status == 429 and retry_after is not None:
                        self._limiter.pause(retry_after)
                except openai.APITimeoutError:
                    reason = f"timed out after {self.timeout_s:g} s"
                except openai.APIConnectionError as exc:
                    cause = exc.__cause__ or exc
                    reason = f"connection error: {type(cause).__name__}: {self.scrub(str(cause))[:MAX_ERROR_CHARS]}"
                except (openai.APIResponseValidationError, ValueError) as exc:
                    # A 200 whose body is not a chat completion (truncated or non-JSON body).
                    reason = (
                        f"malformed reply: {type(exc).__name__}: {self.scrub(str(exc))[:MAX_ERROR_CHARS]}"
                    )
            if attempt == self.max_attempts:
                break
            delay = (
                retry_after
                if retry_after is not None
                else backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s)
            )
            log.info(
                "%s row %s attempt %d/%d failed (%s); retrying in %.2f s",
                self.section,
                key,
                attempt,
                self.max_attempts,
                reason,
                delay,
            )
            time.sleep(delay)
        return ChatFailure(
            f"{reason}; gave up after {self.max_attempts} attempts",
            self.max_attempts,
            usage.tokens_in,
            usage.tokens_out,
            _since(started),
        )

    def _read(self, completion: Any, parse: Callable[[str | None], T]) -> T:
        """The parsed reply; ``RetryableReply`` for a structurally broken one, ``FinalReply`` for a refusal."""
        choices = getattr(completion, "choices", None)
        if not choices:
            raise RetryableReply("malformed reply: no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise RetryableReply("malformed reply: no message")
        if getattr(message, "refusal", None):
            raise FinalReply(f"{self.section} refused: {self.scrub(message.refusal)[:MAX_ERROR_CHARS]!r}")
        if getattr(choice, "finish_reason", None) == "content_filter":
            raise FinalReply("reply blocked by the endpoint's content filter")
        return parse(None if message.content is None else self.scrub(message.content))

    def _detail(self, exc: openai.APIStatusError) -> str:
        body = exc.body
        message = None
        if isinstance(body, dict):
            error = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
        text = str(message) if message else exc.message
        return self.scrub(text)[:MAX_ERROR_CHARS]

    def scrub(self, text: str) -> str:
        """The key this client holds (even if the environment changed since setup), then every secret shape."""
        if len(self._secret) >= 4:
            text = text.replace(self._secret, REDACTED)
        return self._scrubber(text)


class _Usage:
    """Token counts summed over a row's replies; None until a reply reports them."""

    def __init__(self) -> None:
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None

    def add(self, completion: Any) -> None:
        usage = getattr(completion, "usage", None)
        prompt, reply = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int):
            self.tokens_in = (self.tokens_in or 0) + prompt
        if isinstance(reply, int):
            self.tokens_out = (self.tokens_out or 0) + reply


def _total_tokens(completion: Any) -> int | None:
    usage = getattr(completion, "usage", None)
    total = getattr(usage, "total_tokens", None)
    return total if isinstance(total, int) else None


def _since(started: float | None) -> float:
    return 0.0 if started is None else time.monotonic() - started


class OnChatEndpoint:
    """What an ``openai`` provider (designer, judge) takes from its ``ChatEndpoint`` (``self._endpoint``):
    the host it names, its workers, the lifecycle hooks and the sampling settings its ``config`` names."""

    _endpoint: ChatEndpoint

    @property
    def endpoint(self) -> str:
        """The server's host name: identifies the model deployment without ports, paths or credentials."""
        return self._endpoint.host

    @property
    def workers(self) -> int:
        return self._endpoint.workers

    def sampling(self) -> dict[str, Any]:
        """The settings that change what the model answers (for the provider's ``config``)."""
        endpoint = self._endpoint
        return {"temperature": endpoint.temperature, "seed": endpoint.seed, "max_tokens": endpoint.max_tokens}

    def preflight(self) -> None:
        self._endpoint.preflight()

    def setup(self) -> None:
        self._endpoint.setup()

    def teardown(self) -> None:
        self._endpoint.teardown()
