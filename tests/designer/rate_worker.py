"""One worker process of the two-process rate test: ``python -m tests.designer.rate_worker JSON``.

It builds the openai provider from a designer config dict (as a pipeline worker would), waits for a
common start time so both processes overlap, designs ``rows`` text-only rows and prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import time

from transforms.designer.base import Design, DesignRequest
from transforms.designer.registry import make_provider


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    provider = make_provider(job["designer"])
    provider.setup()
    requests = [
        DesignRequest(f"{job['name']}-{i}", f"row {job['name']}-{i}", None) for i in range(job["rows"])
    ]
    time.sleep(max(0.0, job["start_at"] - time.time()))
    results = provider.design(requests)
    provider.teardown()
    print(
        json.dumps(
            {
                "ok": sum(isinstance(r, Design) for r in results),
                "attempts": sum(r.attempts for r in results),
                "errors": sorted({r.error for r in results if not isinstance(r, Design)}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
