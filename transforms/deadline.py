"""A storage call that must answer within a deadline.

Client libraries retry an unreachable store for minutes (google-cloud-storage: 120 s per call, Beam's GCS
filesystem on top of it), and a hung mount never answers. The few storage calls made before a run starts
(listing the manifest, the output's write check) go through ``call_with_deadline``, so an unreachable
store refuses the job within the deadline instead. The call runs on a daemon thread; one that never
answers is abandoned (it cannot be killed) and ends with the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call gave no answer in time; the message names what was asked and the deadline."""


def call_with_deadline(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """``call()``'s result or exception, or ``DeadlineExceeded`` after ``timeout_s`` seconds."""
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller as it is
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="dimflow-deadline", daemon=True).start()
    if not done.wait(timeout_s):
        raise DeadlineExceeded(
            f"{what}: no answer within {timeout_s:g} s (limits.fetch_timeout_s); is it reachable?"
        )
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
