# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Durable file system primitives: temp files, atomic replace with fsync, directory locks; reading a JSON or YAML
document."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from typing import Any, Iterator, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import DocumentError

# New files get the same permissions open() would give them (0666 minus the umask);
# tempfile.mkstemp would create them 0600, which a renamed-into-place file must not keep.
_NEW_FILE_MODE = 0o666


def fsync_file(path: str, flags: int = 0) -> None:
    """fsync the file at PATH: its data is on disk when this returns."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync directory PATH so a rename or link inside it survives a crash."""
    fsync_file(path, getattr(os, "O_DIRECTORY", 0))


def create_temp(directory: str, prefix: str = ".tmp-") -> Tuple[int, str]:
    """Create and open a new file in DIRECTORY; return ``(fd, path)``. The caller owns both."""
    while True:
        path = os.path.join(directory, f"{prefix}{os.urandom(6).hex()}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _NEW_FILE_MODE)
        except FileExistsError:
            continue
        return fd, path


def commit_file(fd: int, tmp_path: str, final_path: str, mode: int | None = None) -> None:
    """fsync FD (open on TMP_PATH), apply MODE, rename it to FINAL_PATH and fsync the directory.

    FD is closed in every case; TMP_PATH is removed when the commit fails.
    """
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp_path, final_path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        remove_quietly(tmp_path)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))


def atomic_write(path: str, data: bytes, mode: int | None = None) -> None:
    """Write DATA (bytes) to PATH atomically and durably: readers see the old or the new content."""
    fd, tmp = create_temp(os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.tmp-")
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    commit_file(fd, tmp, path, mode)


def remove_quietly(path: str) -> None:
    """Remove file PATH if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def link_unsupported(exc: OSError) -> bool:
    """True when EXC (from os.link) says a hard link is impossible here: other file system, no link support."""
    return exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


@contextlib.contextmanager
def locked(path: str, shared: bool = False) -> Iterator[None]:
    """Hold an flock on PATH (a directory or an existing file) for the duration of the block.

    Locking the directory rather than a file in it works even though the files are replaced by rename.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_document(path: str) -> Any:
    """The data of the JSON or YAML file at PATH (JSON needs nothing beyond the standard library, YAML needs PyYAML).
    Raises OSError when PATH cannot be read and DocumentError when it cannot be parsed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise DocumentError("is not JSON, and reading YAML needs PyYAML on this host", needs_yaml=True) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(f"is not valid YAML: {exc}") from None
