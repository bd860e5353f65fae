# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The errors of units and machines."""

from __future__ import annotations

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError


class UnitError(FleetError):
    """A unit could not be written, verified, enabled or started; ``str()`` is the user-facing message.

    ``details`` holds what the module adds to its failure result (unit state, journal lines, systemd's output).
    """


class MachineError(UnitError):
    """A machine could not be installed, configured or run; ``str()`` is the user-facing message."""


class MountError(UnitError):
    """An image could not be mounted: its mount unit was refused, or systemd could not start it (its journal is in
    the message)."""


class AccessError(FleetError):
    """A grant was refused (a verb or unit that would amount to root, a pattern too broad) or could not be written;
    ``str()`` says what and why. Nothing is written when it is raised before the files are."""
