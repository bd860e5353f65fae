# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``files``: the artifact's files are kept as they were pulled (binaries, configs, data)."""

from __future__ import annotations

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import InstallKind


class FilesKind(InstallKind):
    name = "files"
