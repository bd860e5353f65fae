# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What a node says about an application: its slots, since when, health, drift of current, and what its install
kinds report; and which application already runs a given release."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.files import drift
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import SLOTS, record_shape_problem, release_summary
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import DEFAULT_FACTS_DIR, DEFAULT_STATE_ROOT, AppState


def application_status(state: AppState) -> Dict[str, Any]:
    """What this node says about the application: slots, since when, protocol, drift of current."""
    record = state.load()
    status: Dict[str, Any] = {"application": state.app, "installed": sorted(
        ({"name": n, "version": e.get("version"), "status": e.get("status")} for n, e in record["releases"].items()),
        key=lambda r: r["name"])}
    for slot in SLOTS:
        name = state.slot_target(slot)
        entry = dict(release_summary(record, name), status=record["releases"].get(name, {}).get("status")) if name else None
        if entry:
            switches = [h for h in record["history"] if h.get("event") == "switch" and h.get("slot") == slot
                        and (h.get("to") or {}).get("name") == name]
            entry["since"] = switches[-1]["time"] if switches else None
            entry["working"] = state.is_installed(name)
        status[slot] = entry
    current = status["current"]
    status["drift"] = drift(state, current["name"]) if current and current["working"] else None
    status.update(kinds.report(state, record, current["name"] if current else None))
    return status


def running_release(digest: str, state_root: str = DEFAULT_STATE_ROOT,
                    facts_dir: str = DEFAULT_FACTS_DIR) -> Optional[Dict[str, Any]]:
    """What this node already runs as release DIGEST: ``{application, version, oldstable}`` when some application's
    ``current`` points to it, installed and recorded healthy; else None. Reads only local files."""
    try:
        names = sorted(n for n in os.listdir(facts_dir) if n.startswith("sciops_fleet_") and n.endswith(".fact"))
    except OSError:
        return None
    for file_name in names:
        try:
            with open(os.path.join(facts_dir, file_name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if record_shape_problem(record):
            continue
        current = record.get("current")
        if not isinstance(current, dict) or current.get("digest") != digest or not record.get("application"):
            continue
        try:
            state = AppState(record["application"], state_root, facts_dir)
        except NodeError:
            continue
        name = state.slot_target("current")
        entry = (record.get("releases") or {}).get(name) or {}
        if name and state.is_installed(name) and entry.get("digest") == digest and entry.get("status") == "good" \
                and kinds.converged(state):
            oldstable = state.slot_target("oldstable")
            return {"application": state.app, "version": entry.get("version"),
                    "oldstable": release_summary(record, oldstable) if oldstable else None}
    return None
