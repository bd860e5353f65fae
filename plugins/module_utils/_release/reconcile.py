# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Making an application's record agree with what is on the node's disk, after a kill at any point, a record
that could not be saved, or a damaged record."""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError, RecordDamaged, disk_full_names
from ansible_collections.sciops.fleet.plugins.module_utils._release.files import verify_release_dir
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import (
    SLOTS,
    Record,
    append_event,
    empty_record,
    next_seq,
    release_entry,
    release_summary,
)
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState


_APPLICATION_RE = re.compile(rb'"application"\s*:\s*"([^"\\]*)"')


def _refuse_another_applications_record(state: AppState) -> None:
    """A damaged record is rebuilt only as its own application's: two names that differ only in '.', '-' and '_'
    share one record file, and one must never take the other's."""
    try:
        with open(state.fact_path, "rb") as handle:
            found = _APPLICATION_RE.search(handle.read())
    except OSError:
        return
    if found and found.group(1).decode("utf-8", "replace") != state.app:
        raise NodeError(f"the record {state.fact_path} is damaged and belongs to application "
                        f"{found.group(1).decode('utf-8', 'replace')}, not {state.app}: the two names share one record; "
                        f"repair it through {found.group(1).decode('utf-8', 'replace')}, and publish {state.app} under a "
                        "name that differs in more than '.', '-' and '_'")


def reconcile(state: AppState, check_mode: bool = False) -> Tuple[Record, List[str]]:
    """Make the record agree with what is on disk, under the lock; ``(record, repairs)``.

    A damaged record (or a missing one while release directories exist) is rebuilt from the disk, the damaged file
    kept beside it as ``<fact>.damaged-<UTC time>`` (``state.rebuilt`` says where). A complete release directory the
    record does not know (an install killed after its rename, a record that could not be saved) is adopted; an
    incomplete one, and staging trees of interrupted installs, are removed; entries whose directory is gone are
    dropped; a slot the record names wrongly (a switch killed before its record was saved) is recorded as it is,
    with a repaired switch in the history. REPAIRS lists what was done, for the module's warnings. CHECK_MODE
    computes the same without writing anything."""
    if check_mode:
        return reconcile_locked(state, dry=True)
    with disk_full_names(state, "the repaired record was not saved; free space there and run the same step again"):
        with state.lock():
            return reconcile_locked(state, dry=False)


def reconcile_locked(state: AppState, dry: bool) -> Tuple[Record, List[str]]:
    """reconcile() with the lock held (or DRY: nothing written)."""
    repairs = []
    on_disk = state.release_dirs()
    try:
        record = state.load()
        damaged = None
    except RecordDamaged as exc:
        damaged = str(exc)
        _refuse_another_applications_record(state)
    if damaged or (not state.exists() and on_disk):
        reason = damaged.split(";", maxsplit=1)[0] if damaged else "the record was missing"
        record = empty_record(state.app)
        kept = None
        if damaged:
            kept = f"{state.fact_path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            if not dry:
                os.replace(state.fact_path, kept)
                fsync_dir(state.facts_dir)
            repairs.append(f"{reason}: rebuilt from the release directories; the damaged record is kept as {kept}")
        else:
            repairs.append(f"the record {state.fact_path} was missing: rebuilt from the release directories")
        if not dry:
            state.rebuilt = kept or state.fact_path
        append_event(record, {"event": "rebuild", "result": "rebuilt", "kept": kept, "reason": reason})
    if not dry:
        for entry_name in os.listdir(state.releases_dir) if os.path.isdir(state.releases_dir) else []:
            if entry_name.endswith(".staging"):  # an interrupted install; the lock is ours, so no install is running
                shutil.rmtree(os.path.join(state.releases_dir, entry_name), ignore_errors=True)
    held = {slot: state.slot_target(slot) for slot in SLOTS}
    for name in on_disk:
        if name in record["releases"] and state.is_installed(name):
            continue
        release, why = verify_release_dir(state, name)
        known = record["releases"].get(name)
        if release and (not known or known.get("digest") == release["digest"]):
            if not known:
                record["releases"][name] = release_entry(release, next_seq(record))
                if not dry:
                    record["releases"][name].update(kinds.adopt(state, name, release))
                append_event(record, {"event": "adopt", "release": release_summary(record, name), "result": "adopted"})
                repairs.append(f"release {name} was installed but not recorded: adopted (its files verify)")
        elif name in held.values():
            repairs.append(f"release {name} is in a slot but does not verify ({why}); kept, see its drift in status")
        else:
            if not dry:
                kinds.deactivate(state.release_path(name))
                shutil.rmtree(state.release_path(name), ignore_errors=True)
            record["releases"].pop(name, None)
            repairs.append(f"release {name} was incomplete ({why}): removed, install it again")
    for name in list(record["releases"]):
        if name not in on_disk:
            record["releases"].pop(name)
            repairs.append(f"release {name} was recorded but its directory is gone: dropped from the record")
    for slot in SLOTS:
        name = held[slot] if held[slot] in record["releases"] else None
        recorded = (record.get(slot) or {}).get("name")
        if recorded == name and (name is None or record[slot].get("digest") == record["releases"][name]["digest"]):
            continue
        before = record.get(slot)
        record[slot] = dict(release_summary(record, name), status=record["releases"][name]["status"]) if name else None
        if name:
            record["releases"][name]["last_active_seq"] = record.get("seq", 0) + 1
        append_event(record, {"event": "switch", "slot": slot, "reason": "repaired: the link had moved but the record had not",
                              "from": before, "to": release_summary(record, name) if name else None,
                              "result": "switched", "repaired": True})
        repairs.append(f"{slot} points to {name or 'nothing'} but the record said {recorded or 'nothing'}: "
                       "recorded as it is (not health-checked)")
    if repairs and not dry:
        state.save(record)
    return record, repairs
