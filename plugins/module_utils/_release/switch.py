# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Moving a node's slots: which release a name means, switching ``current`` (and ``oldstable`` in lockstep),
retiring ``oldstable``, and pruning releases no slot holds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError, disk_full_names
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import RELEASE_FILE
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import (
    SLOTS,
    Record,
    append_event,
    recency,
    release_summary,
)
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise NodeError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")


def choose_release(state: AppState, record: Record, text: str) -> str:
    """The release id TEXT means on this node: an id, ``previous`` (what current was before its last switch,
    still installed and not failed), or a version installed here."""
    if is_digest(text):
        return text
    if text == "previous":
        current = (record.get("current") or {}).get("digest")
        switches = [e for e in record["history"] if e.get("event") == "switch" and e.get("slot") == "current"]
        for event in sorted(switches, key=lambda e: e.get("seq") or 0, reverse=True):  # the record's order, not times
            if not event.get("from"):
                continue
            digest = event["from"].get("digest")
            name = state.name_for(record, digest)
            if digest != current and name and state.is_installed(name) and record["releases"][name].get("status") != "failed":
                return digest
        raise NodeError(f"{state.app} has no previous release on this node to go back to (none installed that did not fail)")
    matches = [entry["digest"] for name, entry in record["releases"].items()
               if entry.get("version") == text and state.is_installed(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(sorted({e.get("version") for e in record["releases"].values()})) or "none"
        raise NodeError(f"{state.app} {text} is not installed on this node (installed: {known}); roll it out instead")
    raise NodeError(f"{state.app} {text} is installed more than once on this node; name it by release id")


def release_services(state: AppState, name: str) -> List[str]:
    """The services release NAME declares (from its release.json)."""
    try:
        with open(os.path.join(state.release_path(name), RELEASE_FILE), encoding="utf-8") as handle:
            return list(json.load(handle).get("services") or [])
    except (OSError, ValueError):
        return []


def switch_release(state: AppState, digest: str, slot: str = "current", keep: int = 3, protect: Iterable[str] = (),
                   reason: str = "rollout", check_mode: bool = False, keep_oldstable: bool = False,
                   rpm_downgrade: bool = False, rpm_nodeps: bool = False) -> Dict[str, Any]:
    """Point SLOT at the installed release DIGEST, record it, and prune old releases.

    With KEEP_OLDSTABLE, switching ``current`` to a release of another protocol first points ``oldstable`` at
    the release current left, so that a server keeps answering clients of the old protocol (lockstep).

    Keeps the KEEP most recently used releases that did not fail, and never removes what a slot points
    to or what PROTECT names (digests). Returns a dict: changed, from, to, pruned, services, oldstable
    (what oldstable points to afterwards), oldstable_moved, and oldstable_from (what it pointed to before),
    packages (what the install kinds change outside the release when switching current: the RPM plan).

    What the install kinds change outside the release (the RPM packages, ``rpm -U``) is done before ``current``
    moves, for ``current`` only.
    """
    _check_slot(slot)
    record, repairs = reconcile(state, check_mode)
    name = state.name_for(record, digest)
    if name is None or not state.is_installed(name):
        raise NodeError(f"release {digest} of {state.app} is not installed on this node; install it first (sciops.fleet.release_install)")
    before = state.slot_target(slot)
    pending = {slot: name}
    old_oldstable = state.slot_target("oldstable")
    if (keep_oldstable and slot == "current" and before and before != name and before != old_oldstable
            and state.is_installed(before)
            and (record["releases"].get(before) or {}).get("protocol") != (record["releases"].get(name) or {}).get("protocol")):
        pending["oldstable"] = before
    outcome = {"changed": before != name or bool(repairs), "from": release_summary(record, before) if before else None,
               "to": release_summary(record, name), "pruned": [], "services": release_services(state, name),
               "oldstable_from": None, "oldstable_moved": "oldstable" in pending,
               "repairs": repairs, "record_rebuilt": state.rebuilt}
    if "oldstable" in pending:
        outcome["oldstable_from"] = release_summary(record, old_oldstable) if old_oldstable else None
    after_oldstable = pending.get("oldstable", name if slot == "oldstable" else old_oldstable)
    outcome["oldstable"] = release_summary(record, after_oldstable) if after_oldstable else None
    plans = kinds.switch_plan(state, record, name, before) if slot == "current" else {}
    outcome["packages"] = [step for plan in plans.values() for step in plan]
    if outcome["packages"]:
        options = {"rpm_downgrade": rpm_downgrade, "rpm_nodeps": rpm_nodeps}
        outcome["changed"] = kinds.apply_switch(plans, options, check_mode) or outcome["changed"]
    if check_mode:
        outcome["pruned"] = _prune_plan(state, record, keep, protect, pending)
        outcome["changed"] = outcome["changed"] or bool(outcome["pruned"])
        return _converge(state, {s: pending.get(s, state.slot_target(s)) for s in SLOTS}, outcome, check_mode)
    with disk_full_names(state, "nothing was switched; free space there and switch again"), state.lock():
        record = state.load()
        moved = False
        for target_slot in sorted(pending, key=lambda s: s != "oldstable"):  # oldstable first: a server never lacks either
            target, previous = pending[target_slot], state.slot_target(target_slot)
            if previous == target:
                continue
            state.set_slot(target_slot, target)
            moved = True
            record[target_slot] = release_summary(record, target)
            event = append_event(record, {"event": "switch", "slot": target_slot,
                                          "reason": reason if target_slot == slot else f"{reason} (lockstep)",
                                          "from": release_summary(record, previous) if previous else None,
                                          "to": release_summary(record, target), "result": "switched"})
            record["releases"][target]["last_active"] = event["time"]
            record["releases"][target]["last_active_seq"] = event["seq"]
        _prune(state, record, keep, protect, pending, outcome)
        if moved or outcome["pruned"]:
            state.save(record)
    return _converge(state, None, outcome, check_mode)


def retire_slot(state: AppState, slot: str = "oldstable", keep: int = 3, protect: Iterable[str] = (),
                reason: str = "retire", check_mode: bool = False) -> Dict[str, Any]:
    """Empty SLOT (never ``current``), record it, and prune its release when KEEP allows.

    Returns a dict: changed, from (what the slot pointed to), pruned."""
    if slot == "current":
        raise NodeError("current is never emptied; switch it to another release instead")
    _check_slot(slot)
    record, repairs = reconcile(state, check_mode)
    before = state.slot_target(slot)
    outcome = {"changed": before is not None or bool(repairs), "from": release_summary(record, before) if before else None,
               "pruned": [], "repairs": repairs, "record_rebuilt": state.rebuilt}
    if check_mode or before is None:
        return _converge(state, {s: None if s == slot else state.slot_target(s) for s in SLOTS} if check_mode else None,
                         outcome, check_mode)
    with disk_full_names(state, "oldstable was not retired; free space there and retire again"), state.lock():
        record = state.load()
        state.clear_slot(slot)
        record[slot] = None
        append_event(record, {"event": "retire", "slot": slot, "reason": reason,
                              "from": outcome["from"], "to": None, "result": "retired"})
        _prune(state, record, keep, protect, {}, outcome)
        state.save(record)
    return _converge(state, None, outcome, check_mode)


def _converge(state: AppState, planned: Optional[Mapping[str, Optional[str]]], outcome: Dict[str, Any],
              check_mode: bool) -> Dict[str, Any]:
    """What runs outside the releases follows the slots: in CHECK_MODE the PLANNED ones, else those on disk, read
    under the application's lock and followed before it is given up, so that two switches at once cannot leave a
    machine running what a slot no longer points to. After the record is saved: a kill before this is made good by
    the next switch, which converges again. OUTCOME gains the kinds' fields and says changed when they changed
    anything."""
    if check_mode:
        fields = kinds.converge(state, dict(planned or {}), check_mode)
    else:
        with state.lock():
            fields = kinds.converge(state, {slot: state.slot_target(slot) for slot in SLOTS}, check_mode)
    outcome.update(fields)
    outcome["changed"] = outcome["changed"] or any(step.get("action") != "unchanged" for steps in fields.values()
                                                   if isinstance(steps, list) for step in steps)
    return outcome


def _prune(state: AppState, record: Record, keep: int, protect: Iterable[str], pending: Mapping[str, str],
           outcome: Dict[str, Any]) -> None:
    """Remove what _prune_plan names (under the lock), noting it in OUTCOME."""
    for victim in _prune_plan(state, record, keep, protect, pending):
        kinds.deactivate(state.release_path(victim))
        # Renamed out of the way first: a kill during the removal leaves a tree reconcile() removes, never a recorded
        # release with files missing.
        doomed = os.path.join(state.releases_dir, f".{victim}.staging")
        shutil.rmtree(doomed, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.rename(state.release_path(victim), doomed)
            fsync_dir(state.releases_dir)
        shutil.rmtree(doomed, ignore_errors=True)
        record["releases"].pop(victim, None)
        outcome["pruned"].append(victim)
    if outcome["pruned"]:
        fsync_dir(state.releases_dir)
        outcome["changed"] = True


def _prune_plan(state: AppState, record: Record, keep: int, protect: Iterable[str], pending: Mapping[str, str]) -> List[str]:
    """Release names to remove: beyond the KEEP newest releases that did not fail, and every failed one,
    never one a slot (or PENDING slot change) points to, nor one whose digest is in PROTECT."""
    held = {state.slot_target(slot) for slot in SLOTS} | set(pending.values())
    held |= {name for name, entry in record["releases"].items() if entry.get("digest") in set(protect or ())}
    candidates = [(name, entry) for name, entry in record["releases"].items() if name not in held]
    failed = [name for name, entry in candidates if entry.get("status") == "failed"]
    # Newest first by the record's own order, never by clocks: a node whose clock is wrong keeps the right releases.
    usable = sorted((c for c in candidates if c[1].get("status") != "failed"), key=lambda c: recency(c[1]), reverse=True)
    room = max(keep - len([h for h in held if h in record["releases"] and record["releases"][h].get("status") != "failed"]), 0)
    return sorted(failed + [name for name, _entry in usable[room:]])
