# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The record of an application on a node, as data: its shape, its own order (sequence numbers), its entries.

The record is JSON in ``<facts_dir>/sciops_fleet_<app>.fact``: the current and oldstable release, every installed
release with its status (installed, good, failed), and a history of switches, health results and repairs.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest

SLOTS = ("current", "oldstable")
STATUSES = ("installed", "good", "failed")
HISTORY_LIMIT = 100
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}

Record = Dict[str, Any]


def now() -> str:
    """UTC time as ISO 8601, for the record."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def empty_record(app: str) -> Record:
    return {"application": app, "releases": {}, "history": [], "current": None, "oldstable": None, "seq": 0}


def record_shape_problem(record: Any) -> Optional[str]:
    """What makes RECORD (parsed JSON) not a record, or None. Checks every field the modules read."""
    if not isinstance(record, dict):
        return f"it is {_json_type(record)}, not an object"
    expected = {"application": str, "releases": dict, "history": list, "seq": int}
    for key, kind in expected.items():
        if key in record and (not isinstance(record[key], kind) or isinstance(record[key], bool)):
            return f"{key} is {_json_type(record[key])}, not {_JSON_TYPES[kind]}"
    for name, entry in (record.get("releases") or {}).items():
        where = f"releases.{name}"
        if not isinstance(entry, dict):
            return f"{where} is {_json_type(entry)}, not an object"
        if not isinstance(entry.get("digest"), str) or not is_digest(entry["digest"]):
            return f"{where}.digest is {entry.get('digest')!r}, not a release id"
        if entry.get("status") not in STATUSES:
            return f"{where}.status is {entry.get('status')!r}, not one of {', '.join(STATUSES)}"
        for key in ("version", "protocol", "role", "installed_at", "last_active", "checked_at"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                return f"{where}.{key} is {_json_type(entry[key])}, not a string"
        for key in ("installed_seq", "last_active_seq", "checked_seq"):
            if entry.get(key) is not None and (not isinstance(entry[key], int) or isinstance(entry[key], bool)):
                return f"{where}.{key} is {_json_type(entry[key])}, not a number"
        packages = entry.get("packages", [])
        if not isinstance(packages, list) or not all(
                isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("name", "evr", "arch", "file")) for p in packages):
            return f"{where}.packages is not a list of packages (name, evr, arch, file)"
    for index, event in enumerate(record.get("history") or []):
        if not isinstance(event, dict):
            return f"history[{index}] is {_json_type(event)}, not an object"
        for key in ("from", "to", "release"):
            if event.get(key) is not None and not isinstance(event[key], dict):
                return f"history[{index}].{key} is {_json_type(event[key])}, not an object"
    for slot in SLOTS:
        value = record.get(slot)
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            return f"{slot} is {_json_type(value)}, not null or an object naming a release"
    return None


def number_legacy_record(record: Record) -> None:
    """Give a record written without sequence numbers its order: history events are numbered as they stand, and a
    release's last_active_seq is the number of the last switch to it. Releases never switched to come first."""
    last = {}
    for index, event in enumerate(record["history"], 1):
        event.setdefault("seq", index)
        if event.get("event") == "switch" and event.get("to"):
            last[event["to"].get("name")] = event["seq"]
    for name, entry in record["releases"].items():
        entry.setdefault("installed_seq", 0)
        if name in last:
            entry.setdefault("last_active_seq", last[name])
    record["seq"] = max([e.get("seq", 0) for e in record["history"]] + [0])


def next_seq(record: Record) -> int:
    """The next number of the record's own order: every change gets one; times are for people to read."""
    record["seq"] = record.get("seq", 0) + 1
    return record["seq"]


def append_event(record: Record, event: Dict[str, Any]) -> Dict[str, Any]:
    """Add EVENT to the record's history with the next number and the time."""
    event["seq"] = next_seq(record)
    event.setdefault("time", now())
    record["history"].append(event)
    return event


def recency(entry: Dict[str, Any]) -> Tuple[int, str]:
    """How recently a release was in use, by the record's order (legacy entries fall back to their times)."""
    return (max(entry.get("last_active_seq") or 0, entry.get("installed_seq") or 0),
            entry.get("last_active") or entry.get("installed_at") or "")


def release_summary(record: Record, name: Optional[str]) -> Dict[str, Any]:
    """What the record says of release NAME, for slots and history: name, digest, version, protocol."""
    entry = record["releases"].get(name) or {}
    return {"name": name, "digest": entry.get("digest"), "version": entry.get("version"), "protocol": entry.get("protocol")}


def release_entry(release: Dict[str, Any], seq: int) -> Dict[str, Any]:
    """A new record entry for RELEASE (validated, with its digest), installed as change SEQ."""
    return {"digest": release["digest"], "version": release["version"], "protocol": release["protocol"],
            "role": release["role"], "installed_at": now(), "installed_seq": seq, "status": "installed"}
