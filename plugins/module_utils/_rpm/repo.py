# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""RPM repositories on the build host: the packages a directory holds and what its createrepo_c metadata lists.

Every tool runs through RUN, ``run(argv, env=None) -> (rc, stdout, stderr)``, as in ``_rpm/build.py``.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.build import RpmBuildError


def repo_state(path: str) -> str | None:
    """What a repository's metadata says: the repomd.xml bytes' digest, or None when there is none."""
    repomd = os.path.join(path, "repodata", "repomd.xml")
    return digest_file(repomd)[0] if os.path.isfile(repomd) else None


def list_packages(path: str) -> Dict[str, Tuple[int, int]]:
    """RPM files below PATH (relative, sorted) and their sizes and modification times, as createrepo_c sees them."""
    found = {}
    for base, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in ("repodata", ".repodata") and not d.startswith("."))
        for name in names:
            if name.endswith(".rpm") and not name.startswith("."):
                full = os.path.join(base, name)
                info = os.stat(full)
                found[os.path.relpath(full, path)] = (info.st_size, int(info.st_mtime))
    return dict(sorted(found.items()))


def primary_packages(run: Callable[..., Tuple[int, str, str]], path: str) -> List[str]:
    """The packages repository metadata at PATH lists, as relative locations, read back with createrepo_c's own
    output (repodata/*primary.xml*)."""
    import glob  # pylint: disable=import-outside-toplevel
    import gzip  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel
    matches = sorted(glob.glob(os.path.join(path, "repodata", "*primary.xml*")))
    locations = []
    for match in matches:
        if match.endswith(".gz"):
            with gzip.open(match, "rt", encoding="utf-8") as handle:
                text = handle.read()
        elif match.endswith(".zst"):
            rc, text, err = run(["zstd", "-dc", match])
            if rc != 0:
                raise RpmBuildError(f"cannot read {match}: {err.strip()}")
        elif match.endswith(".xml"):
            with open(match, encoding="utf-8") as handle:
                text = handle.read()
        else:
            continue
        locations += re.findall(r'<location href="([^"]+)"', text)
    return sorted(set(locations))
