"""Write whole objects below an output root, so that readers (and reruns after a crash) never see a partial
one, and nothing lands outside the output.

Object stores (gs://, s3://, azfs://) publish an object only once its upload completes and have no links,
so the bytes go straight to the final name. A local output is walked from its root one folder at a time
with ``O_NOFOLLOW`` (a folder or file planted as a symlink inside the output tree is refused, never
followed); the bytes go to a hidden temp name created with ``O_EXCL`` in the final folder and are renamed
into place (atomic on POSIX). The root itself may be a symlink: that is the operator's choice, not a plant.
"""

from __future__ import annotations

import os
import stat
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# Object stores publish an object only once its upload completes: the final name is safe to write.
ATOMIC_UPLOAD_SCHEMES = ("gs://", "s3://", "azfs://")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeOutputError(OSError):
    """A path inside the output tree is a symlink (or not a folder where one is needed): not written."""


def is_remote(uri: str) -> bool:
    return "://" in uri


def write_atomic(uri: str, data: bytes, mime: str, *, root: str) -> None:
    """Write ``data`` at ``uri``, which must lie below the output ``root``; an existing file is replaced.

    Raises ``UnsafeOutputError`` when the path climbs out of ``root`` or meets a symlink below it.
    """
    if is_remote(uri):
        _check_below(uri, root)
        if uri.startswith(ATOMIC_UPLOAD_SCHEMES):
            _write(uri, data, mime)
        else:
            _write_and_rename(uri, data, mime)
        return
    folder_fd, name = open_output_folder(root, uri)
    temp = f".{name}.tmp-{uuid.uuid4().hex}"
    try:
        _refuse_link(folder_fd, name, uri)
        fd = os.open(temp, _NEW_FILE_FLAGS, 0o666, dir_fd=folder_fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as handle:
                handle.write(data)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=folder_fd)
        except OSError:  # never created, or already renamed; the original error matters more
            pass
        raise
    finally:
        os.close(folder_fd)


def _write(uri: str, data: bytes, mime: str) -> None:
    with FileSystems.create(uri, mime_type=mime, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def _write_and_rename(uri: str, data: bytes, mime: str) -> None:
    """Other remote filesystems: a hidden temp name in the same folder, then a rename."""
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


def _check_below(uri: str, root: str) -> None:
    prefix = root.rstrip("/") + "/"
    if not uri.startswith(prefix) or "/../" in f"/{uri[len(prefix) :]}/":
        raise UnsafeOutputError(f"{uri} is not below the output {root}")


def _relative_parts(root: str, path: str) -> list[str]:
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    parts = relative.split(os.sep)
    if relative == "." or parts[0] == ".." or os.path.isabs(relative):
        raise UnsafeOutputError(f"{path} is not below the output {root}")
    return parts


def open_output_folder(root: str, path: str) -> tuple[int, str]:
    """(fd of the folder that will hold ``path``, the file's name), creating folders below ``root`` as
    needed and refusing any that is a symlink. The caller closes the fd."""
    *folders, name = _relative_parts(root, path)
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, folder in enumerate(folders):
            try:
                os.mkdir(folder, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(folder, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file where a folder belongs
                where = os.path.join(root, *folders[: index + 1])
                raise UnsafeOutputError(
                    f"refusing to write {path}: {where} is a symlink or not a folder "
                    "(nothing is written through links inside the output)"
                ) from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _refuse_link(folder_fd: int, name: str, path: str) -> None:
    try:
        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeOutputError(
            f"refusing to write {path}: it is a symlink (nothing is written through links)"
        )
    if stat.S_ISDIR(info.st_mode):
        raise UnsafeOutputError(f"refusing to write {path}: a folder has that name")


def check_output_folders(root: str, relative_folders: list[str]) -> None:
    """Refuse a local output whose own folders (``provenance``, ``run=...`` ...) exist as symlinks or files.

    Beam's file sinks write below these folders with plain ``open``; checking them before a run starts keeps
    a planted link from sending a table outside the output.
    """
    if is_remote(root):
        return
    for relative in relative_folders:
        path = root
        for part in relative.split("/"):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):  # not there yet (the write check says more)
                break
            if not stat.S_ISDIR(info.st_mode):
                kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a folder"
                raise UnsafeOutputError(f"output folder {path} is {kind}; refusing to write through it")
