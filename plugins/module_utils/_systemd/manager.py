# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Talking to systemd on a node: systemctl, journalctl and systemd-analyze, and what a start means.

``Systemd`` wraps the commands; ``start_and_check`` is the one place that starts, restarts or reloads a unit
and turns a failure into an error that carries the unit's state and the last lines of its journal.
``RestartRecord`` remembers what a unit was last started with, so that a restart happens only on a change.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import parse_exposure, parse_show, text_digest

# The environment every systemd tool runs with: no pager, no colours, parseable messages.
TOOL_ENV = {"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C"}

STATE_PROPERTIES = ("LoadState", "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus",
                    "NeedDaemonReload", "InvocationID", "MainPID")

ENABLED_STATES = ("enabled", "enabled-runtime", "alias", "generated", "transient")


class Systemd:
    """The systemd commands a module needs. RUN is ``run(argv, env) -> (rc, stdout, stderr)``."""

    def __init__(self, run: Callable[[List[str], Dict[str, str]], Tuple[int, str, str]], systemctl: str = "systemctl",
                 journalctl: str = "journalctl", analyze: str = "systemd-analyze") -> None:
        self._run = run
        self.systemctl = systemctl
        self.journalctl = journalctl
        self.analyze = analyze

    def run(self, argv: Iterable[str], env: Mapping[str, str] | None = None) -> Tuple[int, str, str]:
        merged = dict(TOOL_ENV)
        merged.update(env or {})
        return self._run(list(argv), merged)

    def ctl(self, *args: str, check: bool = True) -> Tuple[int, str, str]:
        rc, out, err = self.run([self.systemctl, *args])
        if check and rc != 0:
            raise UnitError(f"systemctl {' '.join(args)} failed (exit {rc}): {(err or out).strip()}",
                            command=[self.systemctl, *args])
        return rc, out, err

    def daemon_reload(self) -> None:
        self.ctl("daemon-reload")

    def show(self, unit: str, properties: Iterable[str] = STATE_PROPERTIES) -> Dict[str, str]:
        args = ["show", "--no-pager"]
        for prop in properties:
            args += ["-p", prop]
        _rc, out, _err = self.ctl(*args, "--", unit, check=False)
        return parse_show(out)

    def is_active(self, unit: str) -> str:
        _rc, out, _err = self.ctl("is-active", "--", unit, check=False)
        return out.strip() or "unknown"

    def is_enabled(self, unit: str) -> str:
        _rc, out, _err = self.ctl("is-enabled", "--", unit, check=False)
        return out.strip().splitlines()[-1] if out.strip() else "not-found"

    def instances(self, prefix: str, unit_type: str) -> List[str]:
        """The instances of template PREFIX@.UNIT_TYPE that systemd knows of (loaded, running or failed)."""
        _rc, out, _err = self.ctl("list-units", "--all", "--plain", "--no-legend", "--no-pager", "--",
                                  f"{prefix}@*.{unit_type}", check=False)
        return sorted({line.split()[0] for line in out.splitlines() if line.split()
                       and line.split()[0].startswith(f"{prefix}@")})

    def cat(self, unit: str) -> str:
        rc, out, _err = self.ctl("cat", "--no-pager", "--", unit, check=False)
        return out if rc == 0 else ""

    def journal(self, unit: str, lines: int) -> List[str]:
        # Messages a dying process wrote may still be on their way to journald; ask it to catch up first.
        self.run([self.journalctl, "--sync"])
        _rc, out, err = self.run([self.journalctl, "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"])
        return [line for line in (out or err).splitlines() if line.strip()]

    def verify(self, targets: Iterable[str], search_dir: str) -> Tuple[int, str]:
        """``systemd-analyze verify`` of TARGETS (paths or unit names) with SEARCH_DIR first on the unit path."""
        rc, out, err = self.run([self.analyze, "verify", "--man=no", *targets],
                                env={"SYSTEMD_UNIT_PATH": f"{search_dir}:"})
        return rc, "\n".join(part for part in (out, err) if part)

    def security(self, unit: str) -> Tuple[float | None, str | None]:
        """``(score, rating)`` of ``systemd-analyze security UNIT``, ``(None, None)`` when systemd cannot tell."""
        if not self.analyze:
            return None, None
        rc, out, _err = self.run([self.analyze, "security", "--no-pager", unit])
        if rc != 0 and "Overall exposure" not in out:
            return None, None
        return parse_exposure(out)


class RestartRecord:
    """What a unit instance was last started with: the digest of its unit text and of its watched files.

    Kept as a small JSON file per unit in STATE_DIR. Several callers may watch different files of one unit;
    each compares and updates only the files it names.
    """

    def __init__(self, state_dir: str, unit: str) -> None:
        self.path = os.path.join(state_dir, unit + ".json")
        self.state_dir = state_dir
        try:
            with open(self.path, encoding="utf-8") as handle:
                self.data = json.load(handle)
        except (FileNotFoundError, ValueError):
            self.data = {}

    @property
    def exists(self) -> bool:
        return bool(self.data)

    def unit_changed(self, unit_digest: str) -> bool:
        return self.data.get("unit") != unit_digest

    def changed_files(self, files: Mapping[str, str]) -> List[str]:
        """The paths of FILES (``{path: digest}``) whose digest differs from the record."""
        recorded = self.data.get("files") or {}
        return sorted(path for path, digest in files.items() if recorded.get(path) != digest)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.data = {}

    def save(self, unit_digest: str, files: Mapping[str, str], invocation: str | None = None) -> None:
        data = dict(self.data)
        data["unit"] = unit_digest
        data["files"] = dict(data.get("files") or {}, **files)
        data["invocation"] = invocation
        data["time"] = int(time.time())
        os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
        atomic_write(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)
        self.data = data


def unit_digest(systemd: Systemd, unit: str) -> str:
    """The digest of the unit's effective text (its file and every drop-in, as ``systemctl cat`` shows it)."""
    return text_digest(systemd.cat(unit))


def failure(systemd: Systemd, unit: str, action: str, journal_lines: int, props: Mapping[str, str] | None = None,
            detail: str | None = None) -> UnitError:
    """A UnitError for UNIT that did not ACTION: its state and the last lines of its journal."""
    props = props or systemd.show(unit)
    journal = systemd.journal(unit, journal_lines) if journal_lines else []
    state = (f"ActiveState={props.get('ActiveState', '?')} SubState={props.get('SubState', '?')} "
             f"Result={props.get('Result', '?')}")
    if props.get("ExecMainStatus") not in (None, "", "0"):
        state += f" ExecMainStatus={props['ExecMainStatus']}"
    message = f"{unit} did not {action}: {state}"
    if detail:
        message += f"; {detail}"
    if journal:
        message += f"; last {len(journal)} journal lines:\n" + "\n".join(journal)
    return UnitError(message, unit=unit, active_state=props.get("ActiveState"), sub_state=props.get("SubState"),
                     unit_result=props.get("Result"), exec_main_status=props.get("ExecMainStatus"), journal=journal)


def start_and_check(systemd: Systemd, unit: str, verb: str, settle: float, journal_lines: int) -> Dict[str, str]:
    """Run ``systemctl VERB UNIT``, then watch it for SETTLE seconds; raise with state and journal on failure.

    A unit has failed when systemctl fails, or when during SETTLE it enters ``failed`` or waits to be restarted
    after a crash (``auto-restart``). A oneshot service that ran and exited successfully has not failed.
    """
    action = {"start": "start", "restart": "restart", "reload-or-restart": "reload"}.get(verb, verb)
    rc, out, err = systemd.ctl(verb, "--", unit, check=False)
    if rc != 0:
        raise failure(systemd, unit, action, journal_lines, detail=f"systemctl {verb}: {(err or out).strip()}")
    deadline = time.monotonic() + max(settle, 0)
    while True:
        props = systemd.show(unit)
        if props.get("ActiveState") == "failed" or props.get("SubState") == "auto-restart":
            raise failure(systemd, unit, action, journal_lines, props=props)
        if time.monotonic() >= deadline:
            return props
        time.sleep(0.2)


def security_report(systemd: Systemd, unit: str) -> Dict[str, Any]:
    """``{"exposure": float, "exposure_rating": str}`` for a service unit, or Nones when systemd cannot tell."""
    score, rating = systemd.security(unit)
    return {"exposure": score, "exposure_rating": rating}
