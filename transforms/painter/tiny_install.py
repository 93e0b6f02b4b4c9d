"""Build a tiny checkpoint folder once per cache, safely when several processes or threads ask at once."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

# Builds seed torch's global RNG: two threads building at once would interleave draws.
BUILD_LOCK = threading.Lock()


def install_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``final`` once it holds ``marker``; else ``build`` into a private folder next to it, renamed into place.

    A loser of the race discards its (identical) copy and uses the winner's; files are made world-readable.
    """
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        with BUILD_LOCK:
            build(scratch)
        for path in [scratch, *scratch.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / marker).is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return final
