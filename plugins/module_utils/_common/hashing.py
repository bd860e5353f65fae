# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The one place that hashes: files, bytes, text, streams and directory listings, as ``algorithm:hex`` digests."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, BinaryIO, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

# The digest algorithms OCI allows, with the length of their hex encoding.
DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
CHUNK_SIZE = 1024 * 1024


def new_hasher(digest_or_algorithm: str = "sha256") -> Any:
    """A hashlib object for the algorithm of a digest (or an algorithm name)."""
    algorithm = digest_or_algorithm.split(":", 1)[0]
    if algorithm not in DIGEST_ALGORITHMS:
        raise FleetError(f"unsupported digest algorithm {algorithm!r} in {digest_or_algorithm!r}; use one of "
                         f"{', '.join(DIGEST_ALGORITHMS)}")
    return hashlib.new(algorithm)


def format_digest(hasher: Any) -> str:
    """``algorithm:hex`` of a finished hashlib object."""
    return f"{hasher.name}:{hasher.hexdigest()}"


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest of DATA."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return format_digest(hasher)


def digest_text(text: str, algorithm: str = "sha256") -> str:
    """The digest of TEXT encoded as UTF-8."""
    return digest_bytes(text.encode("utf-8"), algorithm)


def digest_stream(handle: BinaryIO, algorithm: str = "sha256", chunk_size: int = CHUNK_SIZE) -> Tuple[str, int]:
    """``(digest, size)`` of what is left to read from HANDLE, read in chunks."""
    hasher = new_hasher(algorithm)
    size = 0
    for chunk in iter(lambda: handle.read(chunk_size), b""):
        hasher.update(chunk)
        size += len(chunk)
    return format_digest(hasher), size


def digest_file(path: str, algorithm: str = "sha256", chunk_size: int = CHUNK_SIZE) -> Tuple[str, int]:
    """``(digest, size)`` of the file at PATH, read in chunks."""
    with open(path, "rb") as handle:
        return digest_stream(handle, algorithm, chunk_size)


def tree_digest(root: str) -> str:
    """A digest of a directory tree's listing: every entry's path, type, mode, owner, size, mtime and link target.

    Cheaper than hashing every byte of an OS tree, and it changes whenever a file is replaced, added or removed.
    """
    hasher = new_hasher()
    for current, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(current, name)
            info = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            line = (f"{os.path.relpath(path, root)}\0{info.st_mode:o}\0{info.st_uid}\0{info.st_gid}\0{info.st_size}\0"
                    f"{info.st_mtime_ns}\0{target}\n")
            hasher.update(line.encode("utf-8", "surrogateescape"))
    return "tree:" + format_digest(hasher)
