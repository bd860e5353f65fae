# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The shape of a health check, shared by a release's ``health`` and an install kind's own checks (a machine's):
exactly one of ``command``, ``tcp``, ``http``, with ``timeout``, ``retries``, ``delay``, ``expect_status`` and a
``name``. Running them is ``_release.health``'s job."""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import Checker

HEALTH_KINDS = ("command", "tcp", "http")
HEALTH_KEYS = HEALTH_KINDS + ("timeout", "retries", "delay", "expect_status", "name")


def validate_check(check: Checker, item: Mapping[str, Any], field: str, port_variable: bool = False) -> Optional[Dict[str, Any]]:
    """The canonical form of the health check ITEM (at FIELD), or None with its problems added to CHECK. With
    PORT_VARIABLE a ``tcp`` check's port may be a variable (``${port}``) the caller substitutes."""
    check.keys(item, HEALTH_KEYS, field)
    kinds = [k for k in HEALTH_KINDS if k in item]
    if len(kinds) != 1:
        check.add(field, f"must have exactly one of {', '.join(HEALTH_KINDS)}")
        return None
    kind = kinds[0]
    target = check.string(item, kind, f"{field}.{kind}")
    if kind == "tcp" and target and not re.match(r"^.+:[0-9]{1,5}$", target) and \
            not (port_variable and re.match(r"^.+:\$\{[A-Za-z_][A-Za-z0-9_]*\}$", target)):
        check.add(f"{field}.tcp", f"{target!r} must be HOST:PORT")
    if kind == "http" and target and not re.match(r"^https?://", target):
        check.add(f"{field}.http", f"{target!r} must be an http:// or https:// URL")
    label = check.string(item, "name", f"{field}.name", required=False)
    entry = {kind: target, "name": label or f"{kind} {target}",
             "timeout": check.number(item, "timeout", f"{field}.timeout", 0.1, integer=False) or 10,
             "retries": check.number(item, "retries", f"{field}.retries") or 0,
             "delay": check.number(item, "delay", f"{field}.delay", 0, integer=False) or 1}
    if kind == "http":
        entry["expect_status"] = check.number(item, "expect_status", f"{field}.expect_status", 100) or 200
    return entry


def health_kind(check: Mapping[str, Any]) -> tuple:
    """``(kind, target)`` of a validated health check."""
    for kind in HEALTH_KINDS:
        if kind in check:
            return kind, check[kind]
    raise ValueError("not a health check")
