"""gs:// without a cloud: ``gcp-storage-emulator`` on loopback, wired for google-cloud-storage and Beam.

Both clients (google-cloud-storage directly, and Beam's ``GCSFileSystem``, which in Beam 2.77 builds a
``google.cloud.storage.Client`` per operation) honour ``STORAGE_EMULATOR_HOST``. Beam also asks
``google.auth.default()`` for credentials, with 4 retries and exponential backoff: without usable
credentials each process stalls ~26 s before going anonymous. So the environment carries a fake
``authorized_user`` credentials file whose access token expires in 2099: it loads from disk and is never
refreshed, so nothing leaves the machine.

The environment a process needs (``gcs_emulator`` yields exactly this dict; it also sets it in
``os.environ`` for the duration unless ``patch_environ=False``)::

    STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT
    NO_GCE_CHECK=true                      # never probe the GCE metadata server
    GOOGLE_CLOUD_PROJECT=test-project
    GOOGLE_APPLICATION_CREDENTIALS=<tmp_dir>/fake-adc.json   # authorized_user, token expiry 2099

Subprocesses (the CLI, Beam's multi-process workers with ``direct_num_workers``/``multi_processing``)
inherit ``os.environ`` at spawn, so set the env before starting them. Beam caches the resolved
credentials per process (``apache_beam.internal.gcp.auth._Credentials``) but re-reads
``STORAGE_EMULATOR_HOST`` whenever it builds a client, so the host must be in the env of every process
that touches gs://, before and during its first gs:// call.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_BUCKET = "dimflow-test"
PROJECT = "test-project"
STARTUP_TIMEOUT_S = 20.0

_FAKE_ADC = {
    "type": "authorized_user",
    "client_id": "dimflow-test.apps.googleusercontent.com",
    "client_secret": "not-a-secret",
    "refresh_token": "not-a-refresh-token",
    "token": "not-a-token",
    "expiry": "2099-01-01T00:00:00Z",
}


def emulator_env(endpoint: str, credentials_path: str | os.PathLike) -> dict[str, str]:
    """The variables that point google-cloud-storage and Beam at ``endpoint`` without a credentials stall."""
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "NO_GCE_CHECK": "true",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials_path),
    }


def write_fake_credentials(directory: str | os.PathLike) -> Path:
    """Write the fake ``authorized_user`` ADC file (token valid until 2099, so never refreshed)."""
    path = Path(directory) / "fake-adc.json"
    path.write_text(json.dumps(_FAKE_ADC))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(endpoint: str, deadline: float, process: subprocess.Popen | None = None) -> None:
    """Poll the emulator's health endpoint until it answers or ``deadline`` passes (then raise)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(
        f"gcp-storage-emulator at {endpoint} did not answer within {STARTUP_TIMEOUT_S}s: {last}"
    )


@contextmanager
def _thread_server(tmp_dir: Path, bucket: str) -> Iterator[str]:
    """The emulator's own handler and storage, served from a daemon thread of this process."""
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    quiet = logging.getLogger("gcp_storage_emulator")  # it warns on every download; keep test logs readable
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    storage = Storage(use_memory_fs=True, data_dir=str(tmp_dir))
    create_bucket(bucket, storage)
    # Bind here (port 0) so a bind error raises now, not inside the thread; single-threaded like upstream.
    httpd = http.server.HTTPServer(("127.0.0.1", 0), functools.partial(RequestHandler, storage))
    thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
        _wait_healthy(endpoint, time.monotonic() + STARTUP_TIMEOUT_S)
        yield endpoint
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
        quiet.setLevel(level)


@contextmanager
def _process_server(tmp_dir: Path, bucket: str) -> Iterator[str]:
    """``python -m gcp_storage_emulator start`` in a child process (survives GIL-heavy test code)."""
    port = _free_port()
    log = open(tmp_dir / "gcs-emulator.log", "wb")  # closed in the finally below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            bucket,
            "--quiet",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_dir,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_healthy(endpoint, time.monotonic() + STARTUP_TIMEOUT_S, process)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@contextmanager
def gcs_emulator(
    tmp_dir: str | os.PathLike,
    *,
    bucket: str = DEFAULT_BUCKET,
    mode: str = "thread",
    patch_environ: bool = True,
) -> Iterator[dict[str, str]]:
    """Run an in-memory GCS emulator on 127.0.0.1 and yield the env that points clients at it.

    ``bucket`` exists from the start. ``mode="thread"`` serves from this process (fast, the default);
    ``mode="process"`` runs it as a child process. With ``patch_environ`` the env is set in
    ``os.environ`` for the duration and the previous values are restored on exit.
    """
    if mode not in ("thread", "process"):
        raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    credentials = write_fake_credentials(tmp)
    server = _thread_server if mode == "thread" else _process_server
    with server(tmp, bucket) as endpoint:
        env = emulator_env(endpoint, credentials)
        saved = {name: os.environ.get(name) for name in env}
        if patch_environ:
            os.environ.update(env)
        try:
            yield env
        finally:
            if patch_environ:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


def _client(endpoint: str | None = None):
    """A google-cloud-storage client for the emulator (anonymous: the emulator checks no auth)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
    if not endpoint:
        raise RuntimeError("no emulator endpoint: pass endpoint= or run inside gcs_emulator()")
    return storage.Client(
        project=PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


def upload(bucket: str, name: str, data: bytes, *, endpoint: str | None = None) -> str:
    """Put ``data`` at ``gs://bucket/name`` on the emulator; returns that URI."""
    _client(endpoint).bucket(bucket).blob(name).upload_from_string(data)
    return f"gs://{bucket}/{name}"


def download(bucket: str, name: str, *, endpoint: str | None = None) -> bytes:
    """The bytes at ``gs://bucket/name`` on the emulator."""
    return _client(endpoint).bucket(bucket).blob(name).download_as_bytes()


def list_names(bucket: str, prefix: str = "", *, endpoint: str | None = None) -> list[str]:
    """Object names in ``bucket`` under ``prefix``, sorted."""
    return sorted(blob.name for blob in _client(endpoint).list_blobs(bucket, prefix=prefix))
