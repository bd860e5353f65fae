# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``unpack``: an environment image unpacked into the release (a node that cannot mount, or a tree
to change), linked at its ``mount_point``."""

from __future__ import annotations

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.image import ImageKind


class UnpackKind(ImageKind):
    name = "unpack"
