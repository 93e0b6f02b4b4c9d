"""Reading sources: non-regular files, symlink escapes, deadlines, fail-fast on failing storage, and the
whole run with such rows. Every payload is made here, in tmp_path."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from google.api_core import exceptions as gexc
from PIL import Image

from pipeline import cli
from pipeline.run import read_provenance
from tests.fakes.gcs import emulator_env, write_fake_credentials
from transforms import sources
from transforms.images import FetchImage
from transforms.records import STAGE_FETCH, EditRecord, Failure, ManifestRow, RowRef
from transforms.sources import (
    Breakers,
    FailingFast,
    SourceError,
    SourceReader,
    StorageError,
    storage_failure_kind,
    storage_location,
)

SECRET = b"TOPSECRET-credential-9f3Kq-do-not-leak\nroot:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture(autouse=True)
def fresh_breakers():
    """FetchImage uses the process-wide breakers: start and end every test with none."""
    sources.BREAKERS.clear()
    yield
    sources.BREAKERS.clear()


def png(color=(10, 120, 200), size=(6, 5)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def record(row_id: str, source: str | None) -> EditRecord:
    return EditRecord(ManifestRow(row_id, "x", source, None, None, RowRef("/m.jsonl", 1)))


def fetch(fn: FetchImage, source: str, row_id: str = "r") -> EditRecord | Failure:
    (out,) = list(fn.process(record(row_id, source)))
    return out.value if hasattr(out, "tag") else out


def fetch_error(fn: FetchImage, source: str) -> str:
    out = fetch(fn, source)
    assert isinstance(out, Failure) and out.stage == STAGE_FETCH, out
    return out.error


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


# --- non-regular files ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        ("fifo", "named pipe"),
        ("fifo-link", "named pipe"),
        ("socket", "socket"),
        ("dev-zero", "character device"),
        ("dev-zero-link", "character device"),
        ("directory", "directory"),
    ],
)
def test_non_regular_sources_are_refused_without_blocking(tmp_path, make, kind):
    path = tmp_path / f"{make}.png"
    keep = None
    if make == "fifo":
        os.mkfifo(path)
    elif make == "fifo-link":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    elif make == "socket":
        keep = unix_socket(path)
    elif make == "dev-zero":
        path = Path("/dev/zero")
    elif make == "dev-zero-link":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    try:
        fn = FetchImage(max_image_bytes=1000, max_pixels=100, fetch_timeout_s=30, source_roots=None)
        error = fetch_error(fn, str(path))
    finally:
        if keep is not None:
            keep.close()
    assert error == f"source is a {kind}, not a regular file ({path})"
    # the storage answered: nothing toward fail-fast
    assert fetch(fn, str(path)).error == error


@pytest.mark.timeout(60)
def test_fifo_swapped_in_after_the_stat_is_caught_by_fstat_without_blocking(tmp_path, monkeypatch):
    """The pre-open stat is skipped (as if the path were a file then): the O_NONBLOCK open returns at
    once and the fstat of the fd refuses the FIFO."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    checks = []
    real = sources._refuse_non_regular

    def first_check_passes(mode: int, uri: str) -> None:
        checks.append(mode)
        if len(checks) > 1:
            real(mode, uri)

    monkeypatch.setattr(sources, "_refuse_non_regular", first_check_passes)
    with pytest.raises(SourceError, match=r"source is a named pipe, not a regular file"):
        SourceReader(max_bytes=100, timeout_s=30).read(str(fifo))
    assert len(checks) == 2


# --- symlinks and source_roots ----------------------------------------------------------------------


@pytest.fixture
def rooted(tmp_path):
    """root/ (the allowed folder) and outside/ next to it, with an image and a secret text outside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "real.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png((200, 0, 0)))
    (outside / "secret.txt").write_bytes(SECRET)
    return root, outside


def test_symlink_to_a_file_outside_the_roots_is_refused(rooted):
    root, outside = rooted
    (root / "escape.png").symlink_to(outside / "secret.png")
    fn = FetchImage(max_image_bytes=10_000, max_pixels=100, source_roots=[str(root)])
    error = fetch_error(fn, str(root / "escape.png"))
    assert error.startswith("source resolves to a path outside limits.source_roots")
    assert str(outside / "secret.png") in error


def test_symlinked_directory_inside_a_root_pointing_outside_is_refused(rooted):
    root, outside = rooted
    (root / "linked").symlink_to(outside, target_is_directory=True)
    fn = FetchImage(max_image_bytes=10_000, max_pixels=100, source_roots=[str(root)])
    error = fetch_error(fn, str(root / "linked" / "secret.png"))
    assert "outside limits.source_roots" in error


def test_symlink_to_a_text_file_outside_leaks_none_of_its_bytes(rooted):
    root, outside = rooted
    (root / "passwd.png").symlink_to(outside / "secret.txt")
    opened = []

    def spying_opener(uri, **kwargs):
        handle = sources.open_source(uri, **kwargs)
        opened.append(uri)  # reached only when the open (and the roots check) passed
        return handle

    reader = SourceReader(max_bytes=10_000, roots=[str(root)], opener=spying_opener)
    fn = FetchImage(max_image_bytes=10_000, max_pixels=100, reader=reader)
    error = fetch_error(fn, str(root / "passwd.png"))
    assert "outside limits.source_roots" in error and opened == []
    # without roots the same file is read, and still nothing of it reaches the error
    unrooted = FetchImage(max_image_bytes=10_000, max_pixels=100)
    error = fetch_error(unrooted, str(root / "passwd.png"))
    assert error.startswith("source is not a recognized image format (no PNG/JPEG/GIF/BMP/TIFF/WebP")
    for piece in (b"TOPSECRET", b"credential", b"9f3Kq", b"root:x", b"/bin/bash"):
        assert piece.decode() not in error


def test_symlinks_that_stay_inside_the_roots_are_read(rooted, tmp_path):
    root, outside = rooted
    (root / "inner.png").symlink_to(root / "sub" / "real.png")
    (root / "subdir").symlink_to(root / "sub", target_is_directory=True)
    fn = FetchImage(max_image_bytes=10_000, max_pixels=100, source_roots=[str(root)])
    for source in (root / "inner.png", root / "subdir" / "real.png", root / "sub" / "real.png"):
        out = fetch(fn, str(source))
        assert isinstance(out, EditRecord), source
        assert (out.source_sha256, out.source_size) == (hashlib.sha256(png()).hexdigest(), len(png()))
    # a root given through a symlink is compared by its real path too
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    via_alias = FetchImage(max_image_bytes=10_000, max_pixels=100, source_roots=[str(alias)])
    assert isinstance(fetch(via_alias, str(alias / "inner.png")), EditRecord)
    assert "outside limits.source_roots" in fetch_error(via_alias, str(outside / "secret.png"))


# --- deadlines ---------------------------------------------------------------------------------------


class SlowHandle(io.RawIOBase):
    """Trickles one byte per read, ``delay_s`` apart; counts its reads."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        time.sleep(self.delay_s)
        return b"x"


class StuckHandle(io.RawIOBase):
    """A read that does not return until ``release`` is set (a dead mount, a hung connection)."""

    def __init__(self, release: threading.Event):
        self.release = release

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.release.wait(60)
        return b""


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.timeout(60)
def test_a_slow_read_times_out_and_its_thread_stops_at_the_next_chunk():
    handle = SlowHandle(0.2)
    breakers = Breakers()
    reader = SourceReader(max_bytes=10_000, timeout_s=1, opener=lambda uri, **kw: handle, breakers=breakers)
    with pytest.raises(StorageError) as info:
        reader.read("/data/slow.png")
    assert str(info.value) == "source read timed out after 1 s (limits.fetch_timeout_s) (/data/slow.png)"
    assert info.value.kind == "timeout"
    breaker = reader.breaker("/data/slow.png")
    assert wait_for(lambda: handle.closed and breaker.stuck == 0)  # abandoned thread ended, handle closed
    reads = handle.reads
    time.sleep(0.5)
    assert handle.reads == reads  # nothing reads on


@pytest.mark.timeout(60)
def test_stuck_reads_are_bounded_per_location(monkeypatch):
    """Abandoned reads stuck in one call hold their location: with K of them alive no read starts there
    (even between successes, which reset the breaker's streak)."""
    monkeypatch.setattr(sources, "may_hang", lambda path: path.startswith("/m/"))  # /m: a hung NFS mount
    release = threading.Event()
    calls = []

    def opener(uri, **kwargs):
        calls.append(uri)
        return StuckHandle(release) if "stuck" in uri else io.BytesIO(b"fine")

    reader = SourceReader(
        max_bytes=100, timeout_s=0.3, errors_before_fail_fast=2, opener=opener, breakers=Breakers()
    )
    try:
        for name in ("stuck-1", "ok-1", "stuck-2"):
            if name.startswith("stuck"):
                with pytest.raises(StorageError, match="timed out after 0.3 s"):
                    reader.read(f"/m/{name}")
            else:
                assert reader.read(f"/m/{name}") == b"fine"
        breaker = reader.breaker("/m/x")
        assert breaker.stuck == 2
        with pytest.raises(FailingFast, match=r"2 earlier reads from local are still stuck"):
            reader.read("/m/ok-3")
        assert "/m/ok-3" not in calls
    finally:
        release.set()
    assert wait_for(lambda: breaker.stuck == 0)
    assert reader.read("/m/ok-4") == b"fine"


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:50 / /mnt/catalog rw,relatime - nfs4 filer:/export rw
41 27 0:51 / /mnt/bucket rw,relatime - fuse.gcsfuse bucket rw
42 40 8:2 / /mnt/catalog/local\\040disk rw,relatime - xfs /dev/sdb1 rw
"""


@pytest.mark.parametrize(
    ("path", "hangs"),
    [
        ("/data/a.png", False),  # the ext4 root
        ("/mnt/catalog/a.png", True),  # NFS
        ("/mnt/catalog/deep/er/a.png", True),
        ("/mnt/bucket/a.png", True),  # FUSE
        ("/mnt/catalog/local disk/a.png", False),  # a local disk mounted below the NFS mount
        ("/mnt/catalogue/a.png", False),  # a sibling whose name starts the same
    ],
)
def test_reads_that_may_hang_are_told_from_the_mount_table(tmp_path, monkeypatch, path, hangs):
    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    monkeypatch.setattr(sources, "_MOUNTINFO", str(tmp_path / "mountinfo"))
    monkeypatch.setattr(sources, "_mounts_cache", (float("-inf"), []))
    sources._folder_may_hang.cache_clear()
    try:
        assert sources.may_hang(path) is hangs
    finally:
        sources._folder_may_hang.cache_clear()


def test_without_a_mount_table_every_read_gets_the_deadline_thread(monkeypatch):
    monkeypatch.setattr(sources, "_MOUNTINFO", "/nonexistent/mountinfo")
    monkeypatch.setattr(sources, "_mounts_cache", (float("-inf"), []))
    sources._folder_may_hang.cache_clear()
    try:
        assert sources.may_hang("/data/a.png") is True
    finally:
        sources._folder_may_hang.cache_clear()


# --- the circuit breaker -----------------------------------------------------------------------------


class FakeStorage:
    """An opener whose answers are scripted per URI substring; counts the reads that reached it."""

    def __init__(self):
        self.calls: list[str] = []
        self.failure: BaseException | None = ConnectionError("connection refused by the fake")

    def __call__(self, uri, **kwargs):
        self.calls.append(uri)
        if "missing" in uri:
            raise gexc.NotFound("no such object")
        if self.failure is not None:
            raise self.failure
        return io.BytesIO(png())


def test_circuit_breaker_fails_fast_then_probes_after_the_cooldown():
    now = [1000.0]
    storage = FakeStorage()
    reader = SourceReader(
        max_bytes=10_000,
        errors_before_fail_fast=3,
        cooldown_s=30,
        opener=storage,
        breakers=Breakers(clock=lambda: now[0]),
    )
    fn = FetchImage(max_image_bytes=10_000, max_pixels=100, reader=reader)
    errors = [fetch_error(fn, f"gs://bad/{i}.png") for i in range(6)]
    for i, error in enumerate(errors[:3]):
        assert (
            error == f"cannot read source gs://bad/{i}.png: ConnectionError: connection refused by the fake"
        )
    for i, error in enumerate(errors[3:], start=3):
        assert error == (
            f"source gs://bad/{i}.png not read: the last 3 reads from gs://bad failed with ConnectionError:"
            " connection refused by the fake; failing fast for 30 s (limits.storage_errors_before_fail_fast)"
        )
    assert len(storage.calls) == 3  # the fail-fast rows never reached the storage
    assert isinstance(fetch(fn, "gs://other/ok.png"), Failure)  # another bucket: its own breaker
    assert len(storage.calls) == 4

    now[0] += 29.9
    assert "not read:" in fetch_error(fn, "gs://bad/still-cooling.png")
    now[0] += 0.2
    assert fetch_error(fn, "gs://bad/probe-1.png").startswith("cannot read source gs://bad/probe-1.png")
    assert len(storage.calls) == 5  # one probe went through, failed: open again
    assert "not read: the last 4 reads from gs://bad" in fetch_error(fn, "gs://bad/after-probe.png")
    assert len(storage.calls) == 5

    now[0] += 30
    storage.failure = None
    assert isinstance(fetch(fn, "gs://bad/probe-2.png"), EditRecord)  # the probe succeeds: closed
    assert all(isinstance(fetch(fn, f"gs://bad/again-{i}.png"), EditRecord) for i in range(3))
    assert len(storage.calls) == 9


def test_only_one_probe_at_a_time():
    now = [0.0]
    breaker = Breakers(clock=lambda: now[0]).get("gs://b", 1, 10)
    breaker.failed("ConnectionError", "ConnectionError: refused")
    with pytest.raises(FailingFast):
        breaker.admit("gs://b/1")
    now[0] = 10
    breaker.admit("gs://b/probe")  # the probe
    with pytest.raises(FailingFast, match="not read: the last read from gs://b failed with ConnectionError"):
        breaker.admit("gs://b/while-probing")
    breaker.answered()
    breaker.admit("gs://b/closed")


@pytest.mark.parametrize(
    "answer",
    [gexc.NotFound("gone"), FileNotFoundError(2, "No such file"), "too-big", "not-an-image"],
    ids=["gcs-not-found", "local-not-found", "too-big", "not-an-image"],
)
def test_answers_from_the_storage_reset_the_streak(answer):
    storage = FakeStorage()

    def opener(uri, **kwargs):
        if "answer" not in uri:
            return storage(uri, **kwargs)
        storage.calls.append(uri)
        if isinstance(answer, BaseException):
            raise answer
        return io.BytesIO(b"x" * 200 if answer == "too-big" else b"plain text, no image")

    reader = SourceReader(max_bytes=100, errors_before_fail_fast=3, opener=opener, breakers=Breakers())
    fn = FetchImage(max_image_bytes=100, max_pixels=100, reader=reader)
    for uri in ("gs://b/1", "gs://b/2", "gs://b/answer", "gs://b/3", "gs://b/4"):
        assert "not read:" not in fetch_error(fn, uri)
    assert len(storage.calls) == 5
    assert fetch_error(fn, "gs://b/5").startswith("cannot read source gs://b/5")  # 3rd in a row: opens
    assert "not read: the last 3 reads from gs://b" in fetch_error(fn, "gs://b/6")
    assert len(storage.calls) == 6


def test_errors_of_different_kinds_do_not_add_up():
    storage = FakeStorage()
    reader = SourceReader(max_bytes=10_000, errors_before_fail_fast=2, opener=storage, breakers=Breakers())
    kinds = [
        ConnectionError("a"),
        gexc.ServiceUnavailable("b"),
        ConnectionError("c"),
        gexc.Forbidden("d"),
    ]
    for failure in kinds:
        storage.failure = failure
        with pytest.raises(StorageError):
            reader.read("gs://b/x")
    storage.failure = gexc.Forbidden("denied")
    with pytest.raises(StorageError):
        reader.read("gs://b/y")  # second Forbidden in a row: opens
    with pytest.raises(FailingFast, match=r"the last 2 reads from gs://b failed with Forbidden"):
        reader.read("gs://b/z")


def test_local_permission_errors_fail_their_row_only():
    storage = FakeStorage()
    reader = SourceReader(max_bytes=10_000, errors_before_fail_fast=2, opener=storage, breakers=Breakers())
    storage.failure = PermissionError(13, "Permission denied")
    for name in ("a", "b", "c"):
        with pytest.raises(SourceError, match="Permission denied") as caught:
            reader.read(f"/data/{name}.png")
        assert not isinstance(caught.value, (StorageError, FailingFast))


@pytest.mark.timeout(60)
def test_timeouts_count_toward_fail_fast():
    release = threading.Event()
    calls = []

    def opener(uri, **kwargs):
        calls.append(uri)
        return StuckHandle(release)

    reader = SourceReader(
        max_bytes=100, timeout_s=0.2, errors_before_fail_fast=2, opener=opener, breakers=Breakers()
    )
    try:
        for i in range(2):
            with pytest.raises(StorageError, match="timed out"):
                reader.read(f"s3://slow/{i}")
        with pytest.raises(
            FailingFast,
            match=r"the last 2 reads from s3://slow failed with a timeout after 0.2 s \(limits.fetch_timeout_s\)",
        ):
            reader.read("s3://slow/2")
        assert len(calls) == 2
    finally:
        release.set()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FileNotFoundError(2, "x"), None),
        (NotADirectoryError(20, "x"), None),
        (PermissionError(13, "x"), None),  # one local file's permissions: not the storage's health
        (OSError(5, "I/O error"), "OSError"),
        (TimeoutError("x"), "TimeoutError"),
        (gexc.NotFound("x"), None),
        (gexc.BadRequest("x"), None),
        (gexc.Forbidden("x"), "Forbidden"),
        (gexc.Unauthorized("x"), "Unauthorized"),
        (gexc.TooManyRequests("x"), "TooManyRequests"),
        (gexc.ServiceUnavailable("x"), "ServiceUnavailable"),
        (gexc.RetryError("Timeout of 2.0s exceeded", cause=ConnectionError("refused")), "ConnectionError"),
    ],
)
def test_what_counts_as_a_storage_failure(error, kind):
    assert storage_failure_kind(error) == kind


def test_storage_locations():
    assert storage_location("gs://bucket/a/b.png") == "gs://bucket"
    assert storage_location("S3://Bucket/x") == "s3://Bucket"
    assert storage_location("hdfs://namenode:8020/x") == "hdfs://namenode:8020"
    assert storage_location("/data/x.png") == "local"


# --- gs:// against storage that is not there -----------------------------------------------------------


@pytest.mark.timeout(240)
def test_unreachable_gcs_fails_fast(tmp_path, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: connections are refused
    for name, value in emulator_env(f"http://127.0.0.1:{port}", write_fake_credentials(tmp_path)).items():
        monkeypatch.setenv(name, value)
    attempts = []
    real_open = sources.open_gcs

    def counting_open(uri, timeout_s):
        attempts.append(uri)
        return real_open(uri, timeout_s)

    monkeypatch.setattr(sources, "open_gcs", counting_open)
    fn = FetchImage(
        max_image_bytes=10_000,
        max_pixels=100,
        fetch_timeout_s=4,
        storage_errors_before_fail_fast=3,
        storage_cooldown_s=5,
    )
    errors = [fetch_error(fn, f"gs://unreachable-bucket/img-{i}.png") for i in range(12)]
    assert len(attempts) == 3
    for i, error in enumerate(errors[:3]):
        assert error.startswith(f"cannot read source gs://unreachable-bucket/img-{i}.png: ConnectionError:")
        assert "Connection refused" in error
    for error in errors[3:]:
        assert "not read: the last 3 reads from gs://unreachable-bucket failed with ConnectionError:" in error
        assert "failing fast for 5 s (limits.storage_errors_before_fail_fast)" in error
    time.sleep(5.2)  # the cool-down passes: one probe reaches the storage, fails, and it opens again
    assert fetch_error(fn, "gs://unreachable-bucket/probe.png").startswith("cannot read source gs://")
    assert "not read:" in fetch_error(fn, "gs://unreachable-bucket/after.png")
    assert len(attempts) == 4


# --- the whole run -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_with_hostile_sources_finishes_with_one_row_each(tmp_path):
    job = tmp_path / "job"
    images, outside = job / "images", tmp_path / "outside"
    images.mkdir(parents=True)
    outside.mkdir()
    (images / "good.png").write_bytes(png(size=(16, 12)))
    os.mkfifo(images / "pipe.png")
    (outside / "secret.png").write_bytes(png((255, 0, 0)))
    (images / "escape.png").symlink_to(outside / "secret.png")
    (images / "zero.png").symlink_to("/dev/zero")
    (images / "folder.png").mkdir()
    sock = unix_socket(images / "socket.png")
    rows = {
        "good": "images/good.png",
        "fifo": "images/pipe.png",
        "escape": "images/escape.png",
        "dev-zero": "images/zero.png",
        "folder": "images/folder.png",
        "socket": "images/socket.png",
    }
    manifest = "".join(
        json.dumps({"id": row_id, "instruction": "make it blue", "source": source}) + "\n"
        for row_id, source in rows.items()
    )
    (job / "manifest.jsonl").write_text(manifest)
    spec = {
        "name": "hostile-sources",
        "manifest": "manifest.jsonl",
        "output": "out",
        "designer": {"kind": "none"},
        "painter": {"checkpoint": "tiny", "steps": 1, "resolution": 32},
        "limits": {"source_roots": ["images"], "fetch_timeout_s": 20},
    }
    spec_path = job / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    console = io.StringIO()
    try:
        with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
            code = cli.main(["run", str(spec_path), "--no-progress"])
    finally:
        sock.close()
    assert code == cli.EXIT_OK, console.getvalue()[-3000:]
    table = read_provenance(str(job / "out")).to_pylist()
    assert sorted(r["id"] for r in table) == sorted(rows)  # exactly one row per manifest row
    by_id = {r["id"]: r for r in table}
    assert by_id["good"]["status"] == "ok", by_id["good"]["error"]
    expected = {
        "fifo": "source is a named pipe, not a regular file",
        "escape": "source resolves to a path outside limits.source_roots",
        "dev-zero": "source is a character device, not a regular file",
        "folder": "source is a directory, not a regular file",
        "socket": "source is a socket, not a regular file",
    }
    for row_id, fragment in expected.items():
        row = by_id[row_id]
        assert (row["status"], row["error_stage"]) == ("failed", "fetch"), (row_id, row["error"])
        assert fragment in row["error"] and rows[row_id].split("/")[1] in row["error"], row["error"]
