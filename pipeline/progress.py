"""Live progress of a local run, and the one summary formatter shared with reports.

Beam runners only expose metrics after a run, so workers send one datagram per finished row to a
listener on 127.0.0.1 owned by the ``dimflow run`` process (works for in-process and multi-process
FnApiRunner workers). The display is best effort; the final counts are read from the provenance
Parquet, which is exact. Remote runners (Dataflow, Flink on a cluster) get no listener address.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from transforms.schema import STATUSES


class ReportProgress(beam.DoFn):
    """Pass provenance rows through, telling the listener (if any) each row's status."""

    def __init__(self, address: tuple[str, int]):
        self._address = address
        self._socket: socket.socket | None = None

    def setup(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def teardown(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def process(self, row: dict[str, Any]):
        try:
            assert self._socket is not None
            self._socket.sendto(str(row.get("status", "?")).encode(), self._address)
        except OSError:
            pass  # progress is advisory; the Parquet row below is what counts
        yield row


@dataclass
class ProgressState:
    counts: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str) -> None:
        with self.lock:
            self.counts[status] += 1

    def snapshot(self) -> tuple[dict[str, int], float]:
        with self.lock:
            return dict(self.counts), time.monotonic() - self.started


class ProgressListener:
    """A UDP listener on loopback that counts statuses while a run is going."""

    def __init__(self) -> None:
        self.state = ProgressState()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dimflow-progress", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._socket.getsockname()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            self.state.add(data.decode(errors="replace"))

    def __enter__(self) -> ProgressListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


def format_rate(rows: int, seconds: float) -> str:
    if seconds <= 0 or rows == 0:
        return "-"
    rate = rows / seconds
    return f"{rate:.2f} rows/s" if rate < 100 else f"{rate:,.0f} rows/s"


def progress_line(counts: Mapping[str, int], elapsed_s: float, total: int | None = None) -> Text:
    """One line: done/total, per-status counts, rate, elapsed."""
    done = sum(counts.values())
    of = f"/{total}" if total else ""
    text = Text(f"rows {done}{of}  ")
    text.append(f"ok {counts.get('ok', 0)}  ", style="green")
    text.append(f"failed {counts.get('failed', 0)}  ", style="red" if counts.get("failed") else "")
    if counts.get("skipped"):
        text.append(f"skipped {counts['skipped']}  ", style="yellow")
    if counts.get("rejected"):
        text.append(f"rejected {counts['rejected']}  ", style="magenta")
    text.append(f"{format_rate(done, elapsed_s)}  {elapsed_s:,.1f}s")
    return text


def summary_table(title: str, counts: Mapping[str, int], elapsed_s: float | None = None) -> Table:
    """The run summary (also used by ``dimflow report``): rows by status, share and rate."""
    total = sum(counts.values())
    table = Table(title=Text(title), title_justify="left")
    table.add_column("status")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    # rejected (judged below quality.min_overall) only where there are some: a job without a judge has none
    shown = [status for status in STATUSES if status != "rejected" or counts.get(status)]
    for status in shown:
        n = counts.get(status, 0)
        table.add_row(status, f"{n:,}", f"{(100.0 * n / total) if total else 0:.1f}%")
    table.add_section()
    table.add_row("total", f"{total:,}", "100.0%" if total else "-")
    if elapsed_s is not None:
        table.caption = f"{elapsed_s:,.1f}s wall, {format_rate(total, elapsed_s)}"
    return table


class LiveProgress:
    """Show a ``ProgressListener``'s counts while a run goes on.

    On a terminal: a rich Live line refreshed 4x a second. Elsewhere (CI, pod logs): one plain line
    every ``log_interval_s`` so long jobs still show they are moving.
    """

    def __init__(
        self,
        listener: ProgressListener,
        console: Console,
        log_interval_s: float = 10.0,
        total: int | None = None,
    ):
        self._listener = listener
        self._total = total
        self._console = console
        self._interval = log_interval_s
        self._live: Live | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if console.is_terminal:
            self._live = Live(console=console, refresh_per_second=4, get_renderable=self._render)

    def _render(self) -> Text:
        counts, elapsed = self._listener.state.snapshot()
        return progress_line(counts, elapsed, self._total)

    def _log_loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._console.print(self._render())

    def __enter__(self) -> LiveProgress:
        if self._live is not None:
            self._live.start()
        else:
            self._thread = threading.Thread(target=self._log_loop, name="dimflow-progress-log", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=2)
            self._console.print(self._render())
