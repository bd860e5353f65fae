# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The one way a module fails on a FleetError: its message, its type, what it failed on, and its details."""

from __future__ import annotations

from typing import Any


def fail_from(module: Any, exc: BaseException, **result: Any) -> None:
    """Fail MODULE with EXC's message (it names the registry, reference, file or unit), its type, the reference it
    failed on where one is known, the error's details (such as ``problems`` or a unit's journal) and RESULT."""
    details = {"error_type": type(exc).__name__}
    reference = getattr(exc, "reference", None)
    if reference:
        details["failed_reference"] = str(reference)
    details.update(getattr(exc, "details", None) or {})
    details.update(result)
    module.fail_json(msg=str(exc), **details)
