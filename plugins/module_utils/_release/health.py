# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""A release's health on a node: its checks (command, TCP, HTTP) run with retries, and the verdict recorded
against the release a slot runs."""

from __future__ import annotations

import os
import socket
import string
import subprocess
import time
import urllib.error
from typing import Any, Callable, Dict, List, Mapping

from ansible.module_utils.urls import open_url

from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError, disk_full_names
from ansible_collections.sciops.fleet.plugins.module_utils._release.checks import health_kind
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile_locked
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import SLOTS, append_event, release_summary
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState


def _check_once(check: Dict[str, Any], variables: Mapping[str, str]) -> str:
    kind, target = health_kind(check)
    target = string.Template(target).safe_substitute(variables)
    timeout = check["timeout"]
    if kind == "tcp":
        host, _sep, port = target.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return f"connected to {target}"
    if kind == "http":
        try:
            with open_url(target, timeout=timeout, follow_redirects="safe") as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except urllib.error.URLError as exc:
            raise OSError(f"{target}: {exc.reason}") from None
        if status != check.get("expect_status", 200):
            raise OSError(f"{target} answered HTTP {status}, not {check.get('expect_status', 200)}")
        return f"{target} answered HTTP {status}"
    result = subprocess.run(target, shell=True, capture_output=True, text=True, timeout=timeout, check=False,  # nosec: the release's own check
                            cwd=variables.get("current_dir") if os.path.isdir(variables.get("current_dir", "")) else None)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise OSError(f"'{target}' exited {result.returncode}: {' | '.join(tail)}")
    return f"'{target}' exited 0"


def run_health_checks(release: Dict[str, Any], variables: Mapping[str, str],
                      sleep: Callable[[float], Any] = time.sleep) -> List[Dict[str, Any]]:
    """Run every health check of RELEASE with its retries; a list of {name, ok, detail, attempts}."""
    results = []
    for check in release["health"]:
        attempts = 0
        while True:
            attempts += 1
            try:
                detail = _check_once(check, variables)
                results.append({"name": check["name"], "ok": True, "detail": detail, "attempts": attempts})
                break
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                if attempts > check["retries"]:
                    results.append({"name": check["name"], "ok": False, "detail": str(exc) or type(exc).__name__, "attempts": attempts})
                    break
                sleep(check["delay"])
    return results


def record_health(state: AppState, digest: str, healthy: bool, results: List[Dict[str, Any]], slot: str = "current") -> bool:
    """Mark release DIGEST good or failed in the record; a failed release never counts as good again until re-checked.

    Refuses unless SLOT points to DIGEST's release at the time of recording: a verdict is about the release a slot
    runs, never about one another run switched away. The same verdict again writes nothing (idempotent): only a
    changed verdict is saved and added to the history. Returns whether the record changed; ``state.rebuilt`` says
    where a damaged record was kept when it had to be rebuilt first."""
    if slot not in SLOTS:
        raise NodeError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    with disk_full_names(state, "the health verdict was not recorded; free space there and check again"), state.lock():
        record, repairs = reconcile_locked(state, dry=False)
        name = state.name_for(record, digest)
        if name is None:
            raise NodeError(f"release {digest} of {state.app} is not installed on this node")
        target = state.slot_target(slot)
        if target != name:
            raise NodeError(f"release {digest} ({name}) of {state.app} is not what {slot} points to on this node "
                            f"({target or 'nothing'}): its health is not recorded; another run may have switched "
                            f"{slot} meanwhile, check the release {slot} runs")
        status = "good" if healthy else "failed"
        entry = record["releases"][name]
        slot_entries = [record[s] for s in SLOTS if record.get(s) and record[s].get("name") == name]
        if entry.get("status") == status and all(e.get("status") == status for e in slot_entries):
            return bool(repairs)
        entry["status"] = status
        for slot_entry in slot_entries:
            slot_entry["status"] = status
        event = append_event(record, {"event": "health", "slot": slot, "release": release_summary(record, name),
                                      "result": status, "failed_checks": [r["name"] for r in results if not r["ok"]]})
        entry["checked_at"], entry["checked_seq"] = event["time"], event["seq"]
        state.save(record)
    return True
