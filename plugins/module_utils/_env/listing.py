# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The listing of a tree: every entry, sorted, with the sha256 of every file."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from typing import Dict, List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError

# (relative path, kind: "file", "dir" or "link", mode, size, sha256 hex of a file or target of a link)
Entry = Tuple[str, str, int, int, str]

_DIGESTS: Dict[Tuple[int, int, int, int], str] = {}


def _file_sha256(path: str, info: os.stat_result) -> str:
    """sha256 hex of a file, remembered by its identity: a file hard-linked into the build tree is read once."""
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)  # not ctime: linking changes it
    if key not in _DIGESTS:
        _DIGESTS[key] = digest_file(path)[0].split(":", 1)[1]
    return _DIGESTS[key]


def tree_entries(root: str) -> List[Entry]:
    """Every entry below ROOT, sorted: ``(relative path, kind, mode, size, sha256 or link target)``.

    Files are hashed on a few threads (hashlib lets go of the interpreter lock), each file once per build."""
    entries: List[Entry] = []
    files = []
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + names):
            path = os.path.join(base, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entries.append((relative, "link", mode, 0, os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append((relative, "dir", mode, 0, ""))
            elif stat.S_ISREG(info.st_mode):
                files.append((relative, path, mode, info))
            else:
                raise EnvBuildError(f"{path} is a device, socket or fifo; an environment image holds files, "
                                    "directories and links only; remove it from the tree")
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda item: _file_sha256(item[1], item[3]), files))
    for (relative, _path, mode, info), digest in zip(files, digests):
        entries.append((relative, "file", mode, info.st_size, digest))
    return sorted(entries)
