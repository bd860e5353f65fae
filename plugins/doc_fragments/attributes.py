# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attribute documentation shared by the collection's modules."""

from __future__ import annotations


class ModuleDocFragment:
    """Standard attributes; each module adds its own C(support) values and details."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return the changed status prediction without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
  idempotent:
    description:
      - When run twice in a row with the same arguments outside check mode, the second run reports no change.
"""

    READ_ONLY = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Can run in C(check_mode); the module changes nothing in any mode.
  diff_mode:
    support: N/A
    description: The module changes nothing, so there is no diff.
  idempotent:
    support: full
    description: The module changes nothing.
"""
