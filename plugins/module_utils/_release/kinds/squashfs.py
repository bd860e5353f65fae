# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``squashfs``: a squashfs image kept as a file in the release, for the service to mount itself
(an nspawn machine, a uenv tool); the node mounts nothing."""

from __future__ import annotations

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import InstallKind


class SquashfsKind(InstallKind):
    name = "squashfs"
