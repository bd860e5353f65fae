# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``extract``: tar archives among the artifact's files are extracted in place (no member lands or
leads outside the release) and removed; other files are kept as pulled."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.archive import extract_tar
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Artifact, InstallKind, Placement

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")


def extract(archive: str, dest: str) -> None:
    """Extract the tar archive ARCHIVE into DEST with the data policy: no member lands or leads outside DEST."""
    extract_tar(archive, dest, inside="the release")


class ExtractKind(InstallKind):
    name = "extract"

    def place(self, job: Placement, artifact: Artifact, pulled: List[Dict[str, Any]], where: str) -> None:
        for item in pulled:
            if item["name"].endswith(ARCHIVE_SUFFIXES):
                extract(item["path"], job.dest(artifact))
                os.unlink(item["path"])
