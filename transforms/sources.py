"""Read one source safely: regular files only, inside the REAL source roots, within a deadline, and
failing fast while its storage keeps failing.

Sources are untrusted paths. What this module guarantees for every read (``SourceReader.read``):

- **Regular files only.** A local path is ``os.stat``-ed first, so a named pipe, socket, device or
  directory is refused without being opened at all; it is then opened with
  ``O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY`` (opening a FIFO that way returns at once) and the
  ``fstat`` of that fd decides (a path swapped after the stat is still caught). The bytes are read through
  that same fd.
- **Real paths inside the roots.** With ``limits.source_roots`` set, the real path of the file actually
  opened (``/proc/self/fd/N`` on Linux; elsewhere ``realpath`` plus an st_dev/st_ino match against the
  fd) must lie under the real path of a root, so a symlink inside a root cannot lead outside it. The
  check happens before a single byte is read.
- **A deadline.** The open+read of remote storage and of files on network or FUSE mounts (told from
  /proc/self/mountinfo; where there is none, every read) runs on a daemon thread; the caller waits at most
  ``limits.fetch_timeout_s`` and fails the row when it passes. The read itself checks the deadline between
  chunks, so a slow trickle stops at the next chunk. Files on local disks are read inline with that same
  chunk-level deadline: a local disk answers or fails, and handing each read to a thread costs more than
  reading a small source. A thread stuck inside one OS or library call
  cannot be killed: it is *abandoned*, keeps its fd until that call returns, and ends then (its bytes are
  dropped). Abandoned threads stay bounded: every timeout counts as a storage error of its location, so
  after ``limits.storage_errors_before_fail_fast`` (K) of them the location fails fast and starts no new
  read; and a location with K abandoned reads still running starts no new read either (not even the probe
  after a cool-down). So each location holds at most K abandoned threads plus the reads that were already
  in flight when the K-th timed out (at most one per Beam bundle thread of the process).
- **Bounded retries on gs://.** Beam 2.77's ``GcsIO.open`` returns a ``BeamBlobReader`` whose
  ``blob.reload()`` uses google-cloud-storage's ``DEFAULT_RETRY`` and whose reads use Beam's
  ``DEFAULT_RETRY_WITH_THROTTLING_COUNTER``: both retry connection errors, timeouts, 408/429/5xx with
  backoff 1 s doubling to 60 s for up to 120 s, each HTTP request waiting up to 60 s, and no pipeline
  option changes that (``no_gcsio_throttling_counter`` only swaps one 120 s retry for the other). An
  unreachable bucket thus costs ~120 s per row. So gs:// sources are read here with google-cloud-storage's
  own ``BlobReader`` on the client Beam builds (``GcsIO(options).client``: same credentials, project and
  user agent), with ``retry=DEFAULT_RETRY.with_timeout(fetch_timeout_s / 2)`` and an HTTP timeout of
  ``fetch_timeout_s / 2``, raw bytes as stored (as Beam asks). Other schemes (s3://, azfs://, ...) go
  through ``FileSystems.open``, bounded by the deadline alone.
- **Fail fast.** A per-process circuit breaker per storage location (``gs://bucket``, ``scheme://host``,
  ``local``): after K consecutive storage errors of the same kind there (connection errors, timeouts,
  5xx, 401/403/408/429; not a local file's own permissions), further reads fail at once for ``limits.storage_cooldown_s``; then one probe
  read is let through, and a success closes the breaker (a failure opens it again). An answer from the
  storage (the bytes, "not found", a refusal of what the source is) resets the streak.
"""

from __future__ import annotations

import errno
import functools
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_ERRORS_BEFORE_FAIL_FAST = 3
DEFAULT_COOLDOWN_S = 30.0
LOCAL = "local"

_CHUNK = 1 << 20  # bytes per read call: the deadline is checked between them
_GCS_REQUEST_BYTES = 8 << 20  # bytes per ranged GET on gs://
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)")
_PROC_FD = "/proc/self/fd"
# Errors that prove the storage answered about the path: they say nothing about its health. A local
# file's permissions are its own (EACCES on one file says nothing of the next); a bucket's 403 is not.
_ANSWER_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.ELOOP,
    errno.ENAMETOOLONG,
    errno.EISDIR,
    errno.ENXIO,
    errno.EACCES,
    errno.EPERM,
}
# HTTP statuses that are a storage failure; any other 4xx is an answer (404, 400, 412, 416, ...).
_FAILURE_STATUSES = {401, 403, 408, 429}


class SourceError(ValueError):
    """A source that cannot be used; the message is the row's error (it never quotes the source's bytes)."""


class StorageError(SourceError):
    """The storage did not answer (connection error, timeout, 5xx, permission): counts toward fail-fast."""

    def __init__(self, message: str, *, kind: str, reason: str):
        super().__init__(message)
        self.kind = kind  # "same kind" for the circuit breaker: the root exception's class, or "timeout"
        self.reason = reason  # the message without the URI, quoted by later fail-fast rows


class FailingFast(SourceError):
    """Not read at all: the storage location's circuit breaker is open."""


def storage_location(uri: str) -> str:
    """The circuit breaker's key: ``scheme://bucket`` or ``scheme://host[:port]``; ``local`` for files."""
    match = _URI.match(uri)
    return f"{match.group(1).lower()}://{match.group(2)}" if match else LOCAL


# --- opening ---------------------------------------------------------------------------------------

_KINDS = (
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISDIR, "directory"),
)


def special_file_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file ("named pipe", ...); None if it is."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _refuse_non_regular(mode: int, uri: str) -> None:
    kind = special_file_kind(mode)
    if kind is not None:
        raise SourceError(f"source is a {kind}, not a regular file ({uri})")


def _real_path_of(fd: int, path: str, opened: os.stat_result) -> str:
    """The real path of the file behind ``fd`` (not of whatever ``path`` names by now)."""
    if os.path.isdir(_PROC_FD):
        return os.readlink(f"{_PROC_FD}/{fd}")
    real = os.path.realpath(path)
    now = os.stat(real)
    if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        raise SourceError(f"source changed while it was opened; not read ({path})")
    return real


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_real_path(fd: int, path: str, opened: os.stat_result, roots: Sequence[str]) -> None:
    real = _real_path_of(fd, path, opened)
    real_roots = [os.path.realpath(root) for root in roots if not _URI.match(root)]
    if not any(_inside(real, root) for root in real_roots):
        raise SourceError(
            f"source resolves to a path outside limits.source_roots ({path} -> {real}); not read"
        )


def open_local(path: str, roots: Sequence[str] | None) -> BinaryIO:
    """Open a local regular file without ever blocking on what it is; refuse anything else."""
    _refuse_non_regular(os.stat(path).st_mode, path)  # a FIFO or device is never even opened
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        opened = os.fstat(fd)
        _refuse_non_regular(opened.st_mode, path)  # swapped for something else after the stat
        if roots is not None:
            _check_real_path(fd, path, opened, roots)
        os.set_blocking(fd, True)  # a regular file: plain reads from here on
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _beam_options() -> Any:
    # What FileSystems.get_filesystem hands GCSFileSystem (Beam 2.77, apache_beam/io/filesystems.py).
    from apache_beam.options.value_provider import RuntimeValueProvider

    return FileSystems._pipeline_options or RuntimeValueProvider.runtime_options


def open_gcs(uri: str, timeout_s: float) -> BinaryIO:
    """A reader of the object's stored bytes whose retries and requests fit in ``timeout_s`` (see above)."""
    from apache_beam.io.gcp import gcsio
    from google.cloud.storage.fileio import BlobReader
    from google.cloud.storage.retry import DEFAULT_RETRY

    budget = timeout_s / 2
    bucket, name = gcsio.parse_gcs_path(uri)
    client = gcsio.GcsIO(pipeline_options=_beam_options()).client
    return BlobReader(
        client.bucket(bucket).blob(name),
        chunk_size=_GCS_REQUEST_BYTES,
        retry=DEFAULT_RETRY.with_timeout(budget),
        timeout=budget,
        raw_download=True,
    )


def open_source(uri: str, *, timeout_s: float, roots: Sequence[str] | None) -> BinaryIO:
    """Open ``uri`` for reading: local files and gs:// as above, other schemes through Beam."""
    location = storage_location(uri)
    if location == LOCAL:
        return open_local(uri, roots)
    if location.startswith("gs://"):
        return open_gcs(uri, timeout_s)
    return FileSystems.open(
        uri, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    )


Opener = Callable[..., BinaryIO]  # (uri, *, timeout_s, roots) -> a binary handle


# --- what an error means -----------------------------------------------------------------------------


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (RetryError.cause, BeamIOError details, __cause__/__context__), outermost first."""
    seen: set[int] = set()
    found: list[BaseException] = []
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        details = getattr(current, "exception_details", None)  # BeamIOError
        if isinstance(details, dict):
            stack.extend(details.values())
        stack.extend([getattr(current, "cause", None), current.__cause__, current.__context__])
    return found


def is_not_found(exc: BaseException) -> bool:
    """FileNotFoundError locally, google.api_core NotFound on GCS (also when Beam or a retry wraps it)."""
    return any(
        isinstance(c, FileNotFoundError) or any(k.__name__ == "NotFound" for k in type(c).__mro__)
        for c in _causes(exc)
    )


def _root(exc: BaseException) -> BaseException:
    """The error to judge and show: a RetryError's last attempt, a BeamIOError's detail."""
    causes = _causes(exc)
    if type(exc).__name__ in ("RetryError", "BeamIOError") and len(causes) > 1:
        return causes[1]
    return exc


def storage_failure_kind(exc: BaseException) -> str | None:
    """The kind of storage failure ``exc`` is, or None when it is an answer from the storage."""
    root = _root(exc)
    if isinstance(root, OSError) and root.errno in _ANSWER_ERRNOS:
        return None
    code = getattr(root, "code", None)  # google.api_core GoogleAPICallError
    if isinstance(code, int) and 400 <= code < 500 and code not in _FAILURE_STATUSES:
        return None
    return type(root).__name__


def describe(exc: BaseException) -> str:
    """``Type: message`` of the root error, naming the wrapper (a RetryError's own text repeats the root)."""
    root = _root(exc)
    text = f"{type(root).__name__}: {root}"
    if root is exc:
        return text
    return f"{text} ({type(exc).__name__}: {str(exc).partition(', last exception:')[0]})"


# --- the circuit breaker ---------------------------------------------------------------------------


class CircuitBreaker:
    """Fail-fast state of one storage location in this process (see the module docstring for the rule)."""

    def __init__(self, location: str, threshold: int, cooldown_s: float, clock: Callable[[], float]):
        self.location = location
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kind: str | None = None
        self._streak = 0
        self._reason = ""
        self._opened_at: float | None = None
        self._probing = False
        self.stuck = 0  # abandoned reads (past their deadline) still running

    def admit(self, uri: str) -> None:
        """Let a read start, or raise FailingFast. After the cool-down exactly one probe is let through."""
        with self._lock:
            if self._opened_at is not None:
                if self._probing or self._clock() - self._opened_at < self._cooldown_s:
                    raise FailingFast(self._open_message(uri))
            if self.stuck >= self._threshold:
                raise FailingFast(
                    f"source {uri} not read: {self.stuck} earlier reads from {self.location} are still stuck"
                    " past limits.fetch_timeout_s; no new read starts there until one ends"
                    " (limits.storage_errors_before_fail_fast)"
                )
            if self._opened_at is not None:
                self._probing = True

    def _open_message(self, uri: str) -> str:
        reads = f"the last {self._streak} reads" if self._streak > 1 else "the last read"
        return (
            f"source {uri} not read: {reads} from {self.location} failed with {self._reason}; failing fast"
            f" for {self._cooldown_s:g} s (limits.storage_errors_before_fail_fast)"
        )

    def answered(self) -> None:
        """The storage answered (bytes, not found, a refusal of the content): close and reset."""
        with self._lock:
            self._kind, self._streak, self._opened_at, self._probing = None, 0, None, False

    def failed(self, kind: str, reason: str) -> None:
        with self._lock:
            self._streak = self._streak + 1 if kind == self._kind else 1
            self._kind, self._reason = kind, reason
            if self._probing or self._streak >= self._threshold:
                self._opened_at = self._clock()
            self._probing = False

    def abandoned(self) -> None:
        with self._lock:
            self.stuck += 1

    def abandoned_read_ended(self) -> None:
        with self._lock:
            self.stuck -= 1


class Breakers:
    """The circuit breakers of one process, by location (and the limits they were made with)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int, float], CircuitBreaker] = {}

    def get(self, location: str, threshold: int, cooldown_s: float) -> CircuitBreaker:
        key = (location, threshold, cooldown_s)
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = CircuitBreaker(location, threshold, cooldown_s, self._clock)
            return self._by_key[key]

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()


BREAKERS = Breakers()  # per process: shared by every FetchImage instance and bundle thread


# --- reading with a deadline -------------------------------------------------------------------------


class _ReadJob:
    """One read on a daemon thread; the waiter may abandon it (see the module docstring)."""

    def __init__(self, body: Callable[[threading.Event], bytes], breaker: CircuitBreaker):
        self._body = body
        self._breaker = breaker
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self.cancelled = threading.Event()
        self.result: bytes | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._body(self.cancelled)
        except BaseException as exc:  # handed to the waiter, which turns it into the row's error
            self.error = exc
        finally:
            with self._lock:
                self._done.set()
                abandoned = self._abandoned
            if abandoned:
                self.result = self.error = None
                self._breaker.abandoned_read_ended()

    def wait(self, timeout_s: float) -> bool:
        """True when the read finished in time; else it is abandoned (and told to stop at its next chunk)."""
        if self._done.wait(timeout_s):
            return True
        with self._lock:
            if self._done.is_set():
                return True
            self._abandoned = True
            self._breaker.abandoned()
        self.cancelled.set()
        return False


# Filesystems where a read can block indefinitely (a hung server): their reads run on a thread with the
# hard deadline. Local disks are read inline, with the deadline checked between chunks.
_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "davfs", "gpfs"}
)
_MOUNTINFO = "/proc/self/mountinfo"
_MOUNTS_TTL_S = 60.0
_mounts_cache: tuple[float, list[tuple[str, str]]] = (float("-inf"), [])


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type), longest mount point first; re-read at most once a minute."""
    global _mounts_cache
    read_at, mounts = _mounts_cache
    if time.monotonic() - read_at < _MOUNTS_TTL_S:
        return mounts
    mounts = []
    with open(_MOUNTINFO, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if "-" not in fields:
                continue
            point = fields[4].encode("latin-1", "replace").decode("unicode_escape", "replace")  # \040 etc.
            mounts.append((point, fields[fields.index("-") + 1]))
    mounts.sort(key=lambda m: len(m[0]), reverse=True)
    _mounts_cache = (time.monotonic(), mounts)
    return mounts


@functools.lru_cache(maxsize=4096)
def _folder_may_hang(folder: str) -> bool:
    try:
        real = os.path.realpath(folder)
        mounts = _mounts()
    except OSError:  # no /proc (not Linux): every read gets the thread and the hard deadline
        return True
    for point, fstype in mounts:
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return fstype in _NETWORK_FILESYSTEMS or fstype.startswith("fuse")
    return True


def may_hang(path: str) -> bool:
    """Can reading this local path block indefinitely (a network or FUSE mount), as far as we can tell?"""
    return _folder_may_hang(os.path.dirname(os.path.abspath(path)))


class _DaemonThreads:
    """Runs reads on daemon threads, reusing idle ones: starting a thread per read costs about as much as
    reading a small source. A read stuck past its deadline keeps its thread (it is abandoned, see the module
    docstring) and later reads take or start others; at most ``max_idle`` idle threads are kept."""

    def __init__(self, max_idle: int = 16):
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="dimflow-read", daemon=True).start()
        inbox.put(job)

    def _serve(self, inbox: queue.SimpleQueue) -> None:
        while True:
            job = inbox.get()
            job()  # _ReadJob.run catches everything: the thread survives any read
            with self._lock:
                if len(self._idle) >= self._max_idle:
                    return
                self._idle.append(inbox)


READ_THREADS = _DaemonThreads()  # per process


class SourceReader:
    """Reads sources within the limits: bytes, time, roots, and the storage's recent health."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        roots: Sequence[str] | None = None,
        errors_before_fail_fast: int = DEFAULT_ERRORS_BEFORE_FAIL_FAST,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        opener: Opener = open_source,
        breakers: Breakers | None = None,
    ):
        if max_bytes < 1 or timeout_s <= 0 or errors_before_fail_fast < 1 or cooldown_s <= 0:
            raise ValueError(
                "need max_bytes >= 1, timeout_s > 0, errors_before_fail_fast >= 1 and cooldown_s > 0"
            )
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.roots = list(roots) if roots is not None else None
        self.errors_before_fail_fast = errors_before_fail_fast
        self.cooldown_s = cooldown_s
        self._opener = opener
        self._breakers = breakers  # None: the process-wide BREAKERS (kept out of pickles)

    def breaker(self, uri: str) -> CircuitBreaker:
        breakers = self._breakers if self._breakers is not None else BREAKERS
        return breakers.get(storage_location(uri), self.errors_before_fail_fast, self.cooldown_s)

    def read(self, uri: str) -> bytes:
        """The bytes at ``uri`` (at most ``max_bytes``), or SourceError with the row's error.

        Messages: "source not found: URI", "source is N+ bytes, over limits.max_image_bytes=M", "source is
        a named pipe, not a regular file (URI)", "source resolves to a path outside limits.source_roots
        (...)", "source read timed out after T s (limits.fetch_timeout_s) (URI)", "cannot read source URI:
        ...", or a fail-fast "source URI not read: ...".
        """
        breaker = self.breaker(uri)
        breaker.admit(uri)
        outcome: BaseException | None = RuntimeError("read interrupted")
        try:
            data = self._read_with_deadline(uri, breaker)
            outcome = None
            return data
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if isinstance(outcome, StorageError):
                breaker.failed(outcome.kind, outcome.reason)
            elif outcome is None or isinstance(outcome, SourceError):
                breaker.answered()
            else:  # not ours (KeyboardInterrupt, ...): still release a probe
                breaker.failed(type(outcome).__name__, describe(outcome))

    def _read_with_deadline(self, uri: str, breaker: CircuitBreaker) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        job = _ReadJob(lambda cancelled: self._open_and_read(uri, deadline, cancelled), breaker)
        if breaker.location == LOCAL and not may_hang(uri):
            job.run()  # a local disk answers or fails; a thread handoff would cost more than the read
        else:
            READ_THREADS.run(job.run)
        if not job.wait(self.timeout_s):
            raise self._timeout(uri)
        if job.error is None:
            assert job.result is not None
            return job.result
        exc = job.error
        if isinstance(exc, SourceError):
            raise exc
        if is_not_found(exc):
            raise SourceError(f"source not found: {uri}") from exc
        reason = describe(exc)
        kind = storage_failure_kind(exc)
        if kind is None:
            raise SourceError(f"cannot read source {uri}: {reason}") from exc
        raise StorageError(f"cannot read source {uri}: {reason}", kind=kind, reason=reason) from exc

    def _timeout(self, uri: str) -> StorageError:
        return StorageError(
            f"source read timed out after {self.timeout_s:g} s (limits.fetch_timeout_s) ({uri})",
            kind="timeout",
            reason=f"a timeout after {self.timeout_s:g} s (limits.fetch_timeout_s)",
        )

    def _open_and_read(self, uri: str, deadline: float, cancelled: threading.Event) -> bytes:
        """Runs on the read thread: open, then read chunk by chunk until EOF, the limit, or the deadline."""
        limit = self.max_bytes + 1
        parts: list[bytes] = []
        size = 0
        with self._opener(uri, timeout_s=self.timeout_s, roots=self.roots) as handle:
            while size < limit:
                if cancelled.is_set() or time.monotonic() > deadline:
                    raise self._timeout(uri)
                chunk = handle.read(min(_CHUNK, limit - size))
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        if size > self.max_bytes:
            raise SourceError(f"source is {size}+ bytes, over limits.max_image_bytes={self.max_bytes}")
        return b"".join(parts)


def read_bounded(uri: str, max_bytes: int, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """The bytes at ``uri`` with the default limits (one-off reads; the pipeline uses SourceReader)."""
    return SourceReader(max_bytes=max_bytes, timeout_s=timeout_s).read(uri)
