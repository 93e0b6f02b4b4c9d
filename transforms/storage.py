"""Write whole objects so that readers (and reruns after a crash) never see a partial one."""

from __future__ import annotations

import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Object stores publish an object only once its upload completes: the final name is safe to write.
ATOMIC_UPLOAD_SCHEMES = ("gs://", "s3://", "azfs://")


def write_atomic(uri: str, data: bytes, mime: str) -> None:
    """Write ``data`` at ``uri``: straight to object stores, else via a hidden temp name and a rename
    (atomic on POSIX; an existing file is replaced)."""
    if uri.startswith(ATOMIC_UPLOAD_SCHEMES):
        _write(uri, data, mime)
        return
    folder, name = FileSystems.split(uri)
    temp = FileSystems.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        _write(temp, data, mime)
        FileSystems.rename([temp], [uri])
    except BaseException:
        try:
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
        except Exception:  # the original error matters more than a leftover temp file
            pass
        raise


def _write(uri: str, data: bytes, mime: str) -> None:
    with FileSystems.create(uri, mime_type=mime, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
