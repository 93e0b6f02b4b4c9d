"""A local OpenAI-compatible ``/v1/chat/completions`` server with its own rate limit and scripted faults.

It stands in for OpenAI / vLLM in tests and benchmarks (loopback only). What it does:

* enforces ``limit`` requests per fixed window of ``window_s`` seconds (counted from server start):
  a request beyond it gets 429 (with ``Retry-After`` = seconds to the next window, unless
  ``limit_retry_after=False``) and does not count as accepted; ``window_counts`` holds the accepted
  requests per window, so tests assert ``max(window_counts.values()) <= limit``;
* waits ``latency_s`` before every reply (except limit rejections);
* serves scripted faults, either for requests whose text contains a marker (``script(marker, [...])``,
  one fault per matching request, in order) or for the next requests whatever they are
  (``script_next([...])``). Faults: ``ok``, ``429`` / ``429:S`` (Retry-After S seconds), ``429:none``
  (no Retry-After), ``429:date:S`` (Retry-After as an HTTP date S seconds ahead), ``500``, ``503:S``,
  ``400``, ``401``, ``slow`` (reply after ``slow_s``), ``malformed`` (200 with a broken JSON body),
  ``empty`` (empty content), ``refusal``, ``think`` (answer wrapped in think/answer tags), ``leak``
  (400 whose message echoes the Authorization header, like a careless proxy: tests that we scrub it),
  ``echo`` / ``echo-json`` (a 200 whose blueprint carries every request header, as ``Name: value`` lines
  or as a JSON object, like an echo endpoint behind a misrouted proxy), ``reply:TEXT`` (a 200 whose content
  is TEXT verbatim; only the first ``:`` separates, so TEXT may contain colons: a judge's scripted verdict);
* records every request (time, model, sampling parameters, prompt text, image count, whether the
  Authorization header matched ``expected_key``, and the ``usage`` a 200 reply reported) in ``requests``;
  header values are never stored.

A normal reply is a blueprint that quotes the last line of the prompt text, with ``usage`` filled in.
"""

from __future__ import annotations

import base64
import email.utils
import http.server
import io
import json
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class Recorded:
    """One request as the server saw it (no header values)."""

    t: float  # seconds since server start, at arrival
    model: str | None
    temperature: float | None
    seed: int | None
    max_tokens: int | None
    text: str
    images: int
    image_bytes: int
    image_sizes: list[tuple[int, int]]
    authorized: bool
    fault: str
    status: int = 0  # 0 until the reply has been sent
    prompt_tokens: int | None = None  # the usage a 200 completion reported (None: no completion sent)
    completion_tokens: int | None = None


@dataclass
class _Script:
    by_marker: dict[str, deque[str]] = field(default_factory=dict)
    queue: deque[str] = field(default_factory=deque)


class FakeOpenAI:
    """Context manager: ``with FakeOpenAI(limit=10, window_s=2) as server: server.base_url``."""

    def __init__(
        self,
        *,
        limit: int | None = None,
        window_s: float = 60.0,
        latency_s: float = 0.0,
        slow_s: float = 5.0,
        expected_key: str | None = None,
        limit_retry_after: bool = True,
    ):
        self.limit = limit
        self.window_s = window_s
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.expected_key = expected_key
        self.limit_retry_after = limit_retry_after
        self.requests: list[Recorded] = []
        self.window_counts: Counter[int] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.limited = 0  # 429s from the server's own limit (not scripted ones)
        self._script = _Script()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.request_queue_size = 256
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        self._t0 = time.monotonic()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def script(self, marker: str, faults: list[str]) -> None:
        """Serve ``faults`` in order to requests whose prompt text contains ``marker``; then ``ok``."""
        with self._lock:
            self._script.by_marker.setdefault(marker, deque()).extend(faults)

    def script_next(self, faults: list[str]) -> None:
        """Serve ``faults`` to the next requests (after marker scripts), whatever they ask."""
        with self._lock:
            self._script.queue.extend(faults)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.window_counts.clear()
            self.status_counts.clear()
            self.limited = 0

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def matching(self, marker: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if marker in r.text]

    # -- request handling (called from handler threads) ----------------------------------------------

    def _admit(self, text: str) -> tuple[str, float | None]:
        """Decide this request's fate: a scripted fault, a limit rejection, or ``ok``."""
        with self._lock:
            now = self.elapsed()
            if self.limit is not None:
                window = int(now // self.window_s)
                if self.window_counts[window] >= self.limit:
                    self.limited += 1
                    return "limited", (window + 1) * self.window_s - now
                self.window_counts[window] += 1
            for marker, faults in self._script.by_marker.items():
                if marker in text and faults:
                    return faults.popleft(), None
            if self._script.queue:
                return self._script.queue.popleft(), None
            return "ok", None

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _finish(self, recorded: Recorded, status: int) -> None:
        with self._lock:
            recorded.status = status
            self.status_counts[status] += 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't wait for delayed ACKs
    server_fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request stderr lines
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fake = self.server_fake
        arrived = fake.elapsed()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        authorized = (
            fake.expected_key is None or self.headers.get("Authorization") == f"Bearer {fake.expected_key}"
        )
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._json(400, {"error": {"message": "request body is not JSON"}})
            return
        text, images, image_bytes, sizes = _content(body)
        if not authorized:
            fault, wait = "401", None
        else:
            fault, wait = fake._admit(text)
        recorded = Recorded(
            t=arrived,
            model=body.get("model"),
            temperature=body.get("temperature"),
            seed=body.get("seed"),
            max_tokens=body.get("max_tokens"),
            text=text,
            images=images,
            image_bytes=image_bytes,
            image_sizes=sizes,
            authorized=authorized,
            fault=fault,
        )
        fake._record(recorded)  # at arrival: a slow reply still counts while the client waits
        echo = ""
        if fault == "leak":
            echo = self.headers.get("Authorization", "")
        elif fault == "echo":
            echo = "\n".join(f"{name}: {value}" for name, value in self.headers.items())
        elif fault == "echo-json":
            echo = json.dumps(dict(self.headers.items()))
        fake._finish(recorded, self._serve(fault, wait, body, text, echo, recorded))

    def _serve(
        self, fault: str, wait: float | None, body: dict[str, Any], text: str, echo: str, recorded: Recorded
    ) -> int:
        fake = self.server_fake
        kind, _, arg = fault.partition(":")
        if kind == "limited":
            headers = {"Retry-After": str(max(1, math.ceil(wait or 0)))} if fake.limit_retry_after else {}
            return self._json(
                429, {"error": {"message": "Rate limit reached for requests", "type": "requests"}}, headers
            )
        fake._wait(fake.latency_s)
        if kind == "429":
            headers = {}
            if arg.startswith("date"):
                seconds = float(arg.partition(":")[2] or 1)
                headers["Retry-After"] = email.utils.formatdate(time.time() + seconds, usegmt=True)
            elif arg != "none":
                headers["Retry-After"] = arg or "1"
            return self._json(429, {"error": {"message": "Rate limit reached (scripted)"}}, headers)
        if kind in ("500", "503", "400", "401"):
            headers = {"Retry-After": arg} if arg else {}
            return self._json(int(kind), {"error": {"message": f"scripted {kind}"}}, headers)
        if kind == "leak":
            return self._json(400, {"error": {"message": f"invalid credentials: {echo}"}})
        if kind == "slow":
            fake._wait(fake.slow_s)
        if kind == "malformed":
            return self._raw(
                200,
                b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "trunc',
                "application/json",
            )
        if kind == "empty":
            content = ""
        elif kind == "refusal":
            content = REFUSAL
        elif kind == "think":
            content = f"<think>weighing the scene</think><answer>{_blueprint(text)}</answer>"
        elif kind == "reply":
            content = arg
        elif kind in ("echo", "echo-json"):
            content = f"{_blueprint(text)}\n\nrequest received with headers:\n{echo}"
        else:
            content = _blueprint(text)
        completion = _completion(body, text, content)
        recorded.prompt_tokens = completion["usage"]["prompt_tokens"]
        recorded.completion_tokens = completion["usage"]["completion_tokens"]
        try:
            return self._json(200, completion)
        except OSError:  # the client gave up (timeout) and closed the connection
            return 200

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        return self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> int:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
        return status


def _content(body: dict[str, Any]) -> tuple[str, int, int, list[tuple[int, int]]]:
    """The user text, the number of images, their decoded bytes and pixel sizes, from a request body."""
    texts: list[str] = []
    sizes: list[tuple[int, int]] = []
    images = image_bytes = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images += 1
                url = (part.get("image_url") or {}).get("url", "")
                if url.startswith("data:") and "," in url:
                    data = base64.b64decode(url.split(",", 1)[1])
                    image_bytes += len(data)
                    with Image.open(io.BytesIO(data)) as image:
                        sizes.append(image.size)
    return "\n".join(texts), images, image_bytes, sizes


def _blueprint(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return (
        f"1. Edit instruction: {last}\n2. Global layout: a fake scene.\n3. Local objects: a fake object.\n"
        f"4. Area to edit: the fake object.\n5. Edited image: the fake scene after: {last}"
    )


def _completion(body: dict[str, Any], text: str, content: str) -> dict[str, Any]:
    prompt_tokens = len(text) // 4 + 765 * _content(body)[1]
    completion_tokens = len(content) // 4
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "fake",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
