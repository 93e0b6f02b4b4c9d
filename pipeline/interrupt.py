"""Ctrl-C (SIGINT) and SIGTERM for the ``dimflow`` command: one line, clean-up, exit 130 / 143, never a hang.

Python runs a signal handler in the main thread only between bytecodes: a main thread blocked inside
Beam's runner may not see Ctrl-C for a long time, a ``KeyboardInterrupt`` raised inside the runner can be
caught and logged as a traceback, and worker threads that are not daemons keep the interpreter alive after
it. So the command blocks SIGINT and SIGTERM in every thread (threads started later inherit the mask) and
one daemon thread takes them with ``signal.sigwait``: it prints one line, runs the registered clean-ups
under a watchdog, kills the worker processes this process started (they inherit the blocked mask, so they
would not stop by themselves), and leaves with ``os._exit``. Nothing waits on the pipeline.

Only the command line installs this (``install``); code that imports dimflow as a library, tests included,
keeps Python's default behaviour.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Clean-ups get this long before the process leaves anyway.
GRACE_S = 10.0

_cleanups: list[Callable[[], None]] = []
_lock = threading.Lock()
_installed = False


@contextlib.contextmanager
def cleanup(callback: Callable[[], None]) -> Iterator[None]:
    """Run ``callback`` if the process is interrupted while the block runs."""
    with _lock:
        _cleanups.append(callback)
    try:
        yield
    finally:
        with _lock:
            _cleanups.remove(callback)


def install(message: str, write: Callable[[str], None] | None = None) -> None:
    """Take over SIGINT and SIGTERM for the rest of this process (idempotent). ``message`` is the one line
    printed when one arrives ("interrupted" and the signal's name are put in front of it)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    signal.pthread_sigmask(signal.SIG_BLOCK, set(EXIT_CODES))
    thread = threading.Thread(
        target=_wait, args=(message, write or _write_stderr), name="dimflow-signals", daemon=True
    )
    thread.start()


def _write_stderr(text: str) -> None:
    if sys.stderr.isatty():
        text = "\x1b[?25h\n" + text  # show the cursor again (the live progress line hides it)
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _wait(message: str, write: Callable[[str], None]) -> None:
    number = signal.sigwait(set(EXIT_CODES))
    code = EXIT_CODES[signal.Signals(number)]
    watchdog = threading.Timer(GRACE_S, os._exit, (code,))
    watchdog.daemon = True
    watchdog.start()
    try:
        name = "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name
        with contextlib.suppress(Exception):
            write(f"dimflow: interrupted ({name}); {message}")
        with _lock:
            callbacks = list(reversed(_cleanups))
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()
        end_child_processes()
    finally:
        os._exit(code)


def child_processes(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc; [] where there is none."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (command) "
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in found]
        found.extend(children)
        frontier.extend(children)
    return found


def end_child_processes() -> None:
    """SIGKILL this process's descendants (Beam's worker processes), which ignore the blocked signals."""
    for pid in child_processes(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
