"""The ``openai`` designer: any OpenAI-compatible chat-completions endpoint, rate limited and retried.

Works with OpenAI, Azure OpenAI's v1 API (``base_url=https://RESOURCE.openai.azure.com/openai/v1/``) and
OpenAI-compatible servers (vLLM, SGLang, Ollama) through ``base_url``. One user message carries the
source image (a bounded base64 JPEG) and our prompt; DIM's defaults are temperature 0 and a fixed seed.

The official client does no retrying here (``max_retries=0``): our loop does, so that every retry also
waits for its turn under the worker's request and token budgets (``ratelimit.py``), a 429's
``Retry-After`` pauses the whole worker rather than one thread, and the attempt count reaches provenance.

The API key is read from the environment variable the spec names, at ``setup`` (on the worker), and is
kept only inside the client: it is not in ``config()``, ``repr``, logs or error messages. Every text that
comes back from the server (replies, errors, refusals) is scrubbed of it and of anything shaped like a
credential (``transforms.secrets``) before it goes anywhere: a server that echoes the request headers in a
200 reply must not put the key into a blueprint.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import openai

from transforms.designer.base import (
    Design,
    DesignerProvider,
    DesignerSetupError,
    DesignFailure,
    DesignRequest,
)
from transforms.designer.image import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SIDE,
    ImageError,
    image_tokens,
    prepare_jpeg,
)
from transforms.designer.parse import ReplyError, parse_reply
from transforms.designer.prompt import PROMPT_VERSION, build_prompt
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
_MAX_ERROR_CHARS = 300


class _Retry(Exception):
    """An attempt failed in a way worth retrying; ``delay`` is the server's Retry-After if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class OpenAIDesigner(DesignerProvider):
    """Blueprints from an OpenAI-compatible vision chat model, under per-worker rate-limit shares."""

    def __init__(
        self,
        *,
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
        image_max_side: int = DEFAULT_MAX_SIDE,
        image_max_bytes: int = DEFAULT_MAX_BYTES,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        headroom: float = HEADROOM,
    ):
        if not model:
            raise DesignerSetupError("designer.model is required for designer.kind='openai'")
        for field, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
            ("timeout_s", timeout_s),
        ):
            if not value > 0:
                raise DesignerSetupError(f"designer.{field} must be > 0, got {value!r}")
        for field, value in (
            ("max_concurrency", max_concurrency),
            ("max_attempts", max_attempts),
            ("max_tokens", max_tokens),
            ("workers", workers),
        ):
            if int(value) < 1:
                raise DesignerSetupError(f"designer.{field} must be >= 1, got {value!r}")
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
        self.image_max_side = int(image_max_side)
        self.image_max_bytes = int(image_max_bytes)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.headroom = float(headroom)
        self.name = f"openai:{model}"
        self._client: openai.OpenAI | None = None
        self._limiter: RateLimiter | None = None
        self._secret = ""
        self._scrubber = Scrubber([api_key_env])
        self._fatal: str | None = None

    def __repr__(self) -> str:
        return f"OpenAIDesigner(model={self.model!r}, endpoint={self.endpoint!r}, workers={self.workers})"

    def __getstate__(self) -> dict[str, Any]:
        # Beam may pickle providers; the client and limiter are per process and built by setup().
        state = dict(self.__dict__)
        state.update(_client=None, _limiter=None, _secret="", _fatal=None)
        return state

    @property
    def endpoint(self) -> str:
        """The server's host name: identifies the model deployment without ports, paths or credentials."""
        if not self.base_url:
            return DEFAULT_ENDPOINT
        return (urlsplit(self.base_url).hostname or self.base_url).lower()

    def config(self) -> dict[str, Any]:
        return {
            "kind": "openai",
            "model": self.model,
            "endpoint": self.endpoint,
            "prompt": PROMPT_VERSION,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "image_max_side": self.image_max_side,
        }

    # -- lifecycle ---------------------------------------------------------------------------------

    def _read_key(self) -> str:
        """The key from the environment ('' for a keyless endpoint); DesignerSetupError when it is missing."""
        if not self.api_key_env:
            return ""
        secret = os.environ.get(self.api_key_env, "").strip()
        if not secret:
            raise DesignerSetupError(
                f"designer.api_key_env: environment variable {self.api_key_env} is not set or empty on "
                f"this machine; export it (or map the Kubernetes Secret to it), or set "
                f"designer.api_key_env='' for an endpoint without authentication"
            )
        return secret

    def preflight(self) -> None:
        self._read_key()

    def setup(self) -> None:
        self._secret = self._read_key()
        secret = self._secret or "no-key"  # the client insists on one; keyless servers ignore it
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=secret, timeout=self.timeout_s, max_retries=0
        )
        self._limiter = shared_limiter(
            f"{self.base_url or DEFAULT_ENDPOINT}|{self.model}",
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrency=self.max_concurrency,
            workers=self.workers,
            headroom=self.headroom,
        )
        if self.max_concurrency < self.workers:
            log.warning(
                "designer.max_concurrency=%d < designer.workers=%d: each worker still runs 1 request at a "
                "time, so up to %d run at once",
                self.max_concurrency,
                self.workers,
                self.workers,
            )

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._secret = ""

    # -- designing ---------------------------------------------------------------------------------

    def design(self, requests: Sequence[DesignRequest]) -> list[Design | DesignFailure]:
        if self._client is None or self._limiter is None:
            raise RuntimeError(f"{self!r}: design() called before setup()")
        if not requests:
            return []
        threads = min(len(requests), self._limiter.concurrency)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="designer") as pool:
            return list(pool.map(self._design_row, requests))

    def _design_row(self, request: DesignRequest) -> Design | DesignFailure:
        try:
            return self._design_one(request)
        except Exception as exc:  # a bug here must cost one row, not the batch
            log.exception("designer row %s: unexpected error", request.key)
            return DesignFailure(f"designer internal error: {type(exc).__name__}: {self._scrub(str(exc))}", 0)

    def _design_one(self, request: DesignRequest) -> Design | DesignFailure:
        assert self._client is not None and self._limiter is not None
        if self._fatal:
            return DesignFailure(self._fatal, attempts=0)
        try:
            messages, estimate = self._messages(request)
        except ImageError as exc:
            return DesignFailure(str(exc), attempts=0)

        started: float | None = None
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
                    return self._result(completion, attempt, time.monotonic() - started)
                except _Retry as retry:
                    reason, retry_after = retry.reason, retry.retry_after
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    reason = f"HTTP {status}: {self._detail(exc)}"
                    if status not in RETRYABLE_STATUS:
                        if status in FATAL_STATUS:
                            self._fatal = f"{reason} (earlier row; not calling again)"
                        return DesignFailure(f"{reason} (not retried)", attempt, latency_s=_since(started))
                    retry_after = parse_retry_after(exc.response.headers)
                    if status == 429 and retry_after is not None:
                        self._limiter.pause(retry_after)
                except openai.APITimeoutError:
                    reason = f"timed out after {self.timeout_s:g} s"
                except openai.APIConnectionError as exc:
                    cause = exc.__cause__ or exc
                    reason = f"connection error: {type(cause).__name__}: {self._scrub(str(cause))[:_MAX_ERROR_CHARS]}"
                except (openai.APIResponseValidationError, ValueError) as exc:
                    # A 200 whose body is not a chat completion (truncated or non-JSON body).
                    reason = (
                        f"malformed reply: {type(exc).__name__}: {self._scrub(str(exc))[:_MAX_ERROR_CHARS]}"
                    )
            if attempt == self.max_attempts:
                break
            delay = (
                retry_after
                if retry_after is not None
                else backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s)
            )
            log.info(
                "designer row %s attempt %d/%d failed (%s); retrying in %.2f s",
                request.key,
                attempt,
                self.max_attempts,
                reason,
                delay,
            )
            time.sleep(delay)
        return DesignFailure(
            f"{reason}; gave up after {self.max_attempts} attempts",
            self.max_attempts,
            latency_s=_since(started),
        )

    def _messages(self, request: DesignRequest) -> tuple[list[dict[str, Any]], int]:
        """The chat messages and the request's token estimate (prompt + image + the reply's ceiling)."""
        prompt = build_prompt(request.instruction, has_image=request.image is not None)
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        estimate = len(prompt) // 4 + 16 + self.max_tokens
        if request.image is not None:
            prepared = prepare_jpeg(request.image, self.image_max_side, self.image_max_bytes)
            url = "data:image/jpeg;base64," + base64.b64encode(prepared.jpeg).decode("ascii")
            content.insert(0, {"type": "image_url", "image_url": {"url": url, "detail": "high"}})
            estimate += image_tokens(prepared.width, prepared.height)
        return [{"role": "user", "content": content}], estimate

    def _result(self, completion: Any, attempts: int, latency_s: float) -> Design | DesignFailure:
        """A parsed completion; raises ``_Retry`` for a reply that is structurally broken."""
        usage = getattr(completion, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", None)
        tokens_out = getattr(usage, "completion_tokens", None)
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _Retry("malformed reply: no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise _Retry("malformed reply: no message")

        def failed(reason: str) -> DesignFailure:
            return DesignFailure(
                reason, attempts, tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency_s
            )

        if getattr(message, "refusal", None):
            return failed(f"designer refused: {self._scrub(message.refusal)[:_MAX_ERROR_CHARS]!r}")
        if getattr(choice, "finish_reason", None) == "content_filter":
            return failed("reply blocked by the endpoint's content filter")
        try:
            blueprint = parse_reply(None if message.content is None else self._scrub(message.content))
        except ReplyError as exc:
            return failed(str(exc))
        return Design(blueprint, attempts, tokens_in=tokens_in, tokens_out=tokens_out, latency_s=latency_s)

    def _detail(self, exc: openai.APIStatusError) -> str:
        body = exc.body
        message = None
        if isinstance(body, dict):
            error = body.get("error", body)
            message = error.get("message") if isinstance(error, dict) else error
        text = str(message) if message else exc.message
        return self._scrub(text)[:_MAX_ERROR_CHARS]

    def _scrub(self, text: str) -> str:
        """The key this client holds (even if the environment changed since setup), then every secret shape."""
        if len(self._secret) >= 4:
            text = text.replace(self._secret, REDACTED)
        return self._scrubber(text)


def _total_tokens(completion: Any) -> int | None:
    usage = getattr(completion, "usage", None)
    total = getattr(usage, "total_tokens", None)
    return total if isinstance(total, int) else None


def _since(started: float | None) -> float:
    return 0.0 if started is None else time.monotonic() - started
