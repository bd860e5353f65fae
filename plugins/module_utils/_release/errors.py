# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What goes wrong when a node changes its releases, and how a full disk is named."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Iterator, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class NodeError(FleetError):
    """A release could not be installed, switched, checked or retired on this node: the message says which
    application and release, and what to do."""


class RecordDamaged(NodeError):
    """The application's record on this node cannot be read as a record (bad JSON or the wrong shape)."""


def _free_bytes(path: str) -> Optional[int]:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        info = os.statvfs(path or "/")
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


@contextlib.contextmanager
def disk_full_names(state: Any, consequence: str) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) into an error that names the directory that filled up and what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        places = [(state.releases_dir, "the releases directory"), (state.facts_dir, "the facts directory (the record)")]
        if state.cache_dir:
            places.append((state.cache_dir, "the download cache"))
        named = [p for p in places if exc.filename and os.path.abspath(str(exc.filename)).startswith(p[0].rstrip("/") + "/")]
        if not named:  # a write has no file name: the fullest file system is the one
            free = [(_free_bytes(p[0]), p) for p in places]
            free = [f for f in free if f[0] is not None]
            named = [min(free, key=lambda f: f[0])[1]] if free else places
        directory, label = named[0]
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        raise NodeError(f"{what} in {directory} ({label} of {state.app}): {consequence}") from None
