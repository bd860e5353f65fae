# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The service_unit module's work: write a verified unit, then bring its instances to the wanted state.

The order matters and is the point of the module: the candidate text is verified by systemd in a scratch
directory before it replaces the installed file, so a unit systemd would refuse or half-ignore never
reaches the unit directory, and the running service keeps its previous definition.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Sequence

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._common.node_layout import (
    LEGACY_UNITS_STATE_DIR,
    UNITS_STATE_DIR,
    migrate_state_files,
    state_dir_to_read,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import (
    ENABLED_STATES,
    RestartRecord,
    Systemd,
    security_report,
    start_and_check,
    unit_digest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import (
    MANAGED_HEADER,
    UnitName,
    apply_hardening,
    expand_instance,
    path_digest,
    render_unit,
    validate_dropin_name,
    verify_problems,
    verify_warnings,
)

# Documented in plugins/modules/service_unit.py; validate-modules checks the two agree.
ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "dropin": {"type": "str"},
    "sections": {"type": "dict"},
    "content": {"type": "str"},
    "hardening": {"type": "bool", "default": True},
    "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
    "mode": {"type": "raw", "default": "0644"},
    "verify": {"type": "str", "default": "strict", "choices": ["strict", "errors", "none"]},
    "instances": {"type": "list", "elements": "str", "default": []},
    "enabled": {"type": "bool"},
    "state": {"type": "str", "choices": ["started", "stopped", "restarted", "reloaded", "absent"]},
    "restart_on_change": {"type": "list", "elements": "path", "default": []},
    "settle": {"type": "float", "default": 2.0},
    "journal_lines": {"type": "int", "default": 20},
    "security_report": {"type": "bool", "default": True},
    "state_dir": {"type": "path", "default": UNITS_STATE_DIR},
}
MUTUALLY_EXCLUSIVE = [("sections", "content")]


def parse_mode(mode: int | str) -> int:
    """A file mode given as ``"0644"``, ``"644"`` or an int."""
    if isinstance(mode, int):
        return mode
    try:
        return int(str(mode), 8)
    except ValueError:
        raise UnitError(f"mode {mode!r} is not an octal file mode such as 0644") from None


def desired_text(params: Mapping[str, Any], unit: UnitName, dropin: str | None) -> str | None:
    """The text the unit file (or drop-in) should hold, or None when the module only manages state."""
    if params.get("content") is not None:
        text = params["content"]
        return text if text.endswith("\n") else text + "\n"
    sections = params.get("sections")
    if sections is None:
        return None
    default_keys = ()
    if unit.type == "service" and params.get("hardening") and not dropin:
        sections, default_keys = apply_hardening(sections, unit)
    return render_unit(sections, unit.type, default_keys)


def unit_names(unit: UnitName, instances: Sequence[str]) -> List[str]:
    """The units the state and enablement apply to: the instances of a template, else the unit itself."""
    if unit.is_template:
        return [unit.instance_name(instance) for instance in instances]
    if instances:
        raise UnitError(f"instances are for template units (PREFIX@.TYPE); {unit.name} is not one")
    return [unit.name]


def is_restart_record(file_name: str, data: Any) -> bool:
    """Whether FILE_NAME holding DATA is a restart record (``<unit>.json``: the unit's digest and watched files)."""
    try:
        UnitName(file_name[:-len(".json")])
    except UnitError:
        return False
    return isinstance(data, dict) and "unit" in data and isinstance(data.get("files"), dict)


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return "(not UTF-8 text)\n"


def verify_candidate(systemd: Systemd, unit: UnitName, dropin: str | None, text: str, units: Sequence[str],
                     unit_dir: str, strict: bool, warn: Callable[[str], None]) -> List[str]:
    """Verify TEXT as the unit (or drop-in) in a scratch directory; raise UnitError with systemd's words if refused.

    The scratch directory comes first on systemd's unit path, so a drop-in is verified together with the unit
    it changes and a template through the instances that will run. Returns what systemd printed.
    """
    scratch = tempfile.mkdtemp(prefix="sciops-unit-verify-")
    try:
        if dropin:
            os.makedirs(os.path.join(scratch, unit.name + ".d"))
            candidate = os.path.join(scratch, unit.name + ".d", dropin)
        else:
            candidate = os.path.join(scratch, unit.name)
        with open(candidate, "w", encoding="utf-8") as handle:
            handle.write(text)
        if unit.is_template:
            # A template is verified as each instance that will run (so %i in paths resolves); with no
            # instance named, systemd verifies it as an instance of its own choosing.
            targets = units or ([unit.instance_name("verify")] if dropin else [candidate])
        else:
            targets = [unit.name] if dropin else [candidate]
        returncode, output = systemd.verify(targets, scratch)
        final = os.path.join(unit_dir, os.path.relpath(candidate, scratch))
        output = output.replace(candidate, final).replace(scratch + os.sep, unit_dir.rstrip(os.sep) + os.sep)
        problems = verify_problems(output, [final], returncode, strict=strict)
        if problems:
            raise UnitError(
                f"{final} was refused by systemd-analyze verify and not installed; the installed unit is unchanged:\n"
                + "\n".join(problems),
                verify_output=output.splitlines(),
            )
        for line in verify_warnings(output, [final]):
            warn(f"systemd-analyze verify: {line}")
        return [line for line in output.splitlines() if line.strip()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class ServiceUnit:
    """One run of the service_unit module against SYSTEMD (a ``_systemd.manager.Systemd``)."""

    def __init__(self, systemd: Systemd, params: Mapping[str, Any], check_mode: bool = False, diff: bool = False,
                 warn: Callable[[str], None] | None = None) -> None:
        self.systemd = systemd
        self.params = params
        self.check_mode = check_mode
        self.want_diff = diff
        self.warn = warn or (lambda message: None)
        self.unit = UnitName(params["name"])
        if self.unit.is_instance:
            raise UnitError(
                f"name {self.unit.name} is an instance; name the template ({self.unit.prefix}@.{self.unit.type}) "
                "and list the instance in instances"
            )
        self.dropin = validate_dropin_name(params["dropin"]) if params.get("dropin") else None
        self.absent = params.get("state") == "absent"
        if self.absent and (params.get("sections") is not None or params.get("content") is not None
                            or params.get("enabled") is not None):
            raise UnitError(f"state=absent removes {self.unit.name}; give it without sections, content and enabled")
        self.units = unit_names(self.unit, params.get("instances") or [])
        if self.absent and self.unit.is_template and not self.units:
            self.units = systemd.instances(self.unit.prefix, self.unit.type)  # every instance systemd knows of
        if self.unit.is_template and not self.units and (params.get("state") or params.get("enabled") is not None):
            raise UnitError(f"{self.unit.name} is a template: name the instances to enable or start in instances")
        unit_dir = params["unit_dir"]
        if self.dropin:
            self.path = os.path.join(unit_dir, self.unit.name + ".d", self.dropin)
        else:
            self.path = os.path.join(unit_dir, self.unit.name)
        self.result = {
            "changed": False, "name": self.unit.name, "unit_file": self.path, "units": list(self.units),
            "written": False, "daemon_reloaded": False, "verify_output": [], "enabled_changed": [],
            "started": [], "restarted": [], "reloaded": [], "stopped": [], "restart_reasons": {},
            "exposure": None, "exposure_rating": None, "removed": False,
        }

    def run(self) -> Dict[str, Any]:
        try:
            return self._run()
        except UnitError as exc:
            # What was already done stays done (a verified unit that then failed to start stays installed).
            exc.details.setdefault("changed", bool(self.result["written"] and not self.check_mode))
            for key in ("unit_file", "written", "started", "restarted", "reloaded", "stopped", "enabled_changed"):
                exc.details.setdefault(key, self.result[key])
            raise

    def _record_dir(self, unit: str) -> str:
        """Where UNIT's restart record is read from: in check mode on a node not yet migrated, the old place."""
        if self.check_mode and self.params["state_dir"] == UNITS_STATE_DIR:
            return state_dir_to_read(LEGACY_UNITS_STATE_DIR, UNITS_STATE_DIR, unit + ".json", is_restart_record)
        return self.params["state_dir"]

    def _run(self):
        if self.params["state_dir"] == UNITS_STATE_DIR and not self.check_mode:
            migrate_state_files(LEGACY_UNITS_STATE_DIR, UNITS_STATE_DIR, is_restart_record)
        if self.absent:
            return self._remove()
        written = self._write_unit()
        self._daemon_reload(written)
        if self.params.get("enabled") is not None:
            for unit in self.units:
                self._enable(unit, self.params["enabled"])
        state = self.params.get("state")
        if state:
            for unit in self.units:
                self._converge(unit, state, written)
        if (self.unit.type == "service" and self.params.get("security_report") and self.units
                and not self.check_mode and self.systemd.show(self.units[0]).get("LoadState") == "loaded"):
            self.result.update(security_report(self.systemd, self.units[0]))
        self.result["changed"] = bool(
            written or self.result["daemon_reloaded"] or self.result["enabled_changed"] or self.result["started"] or self.result["restarted"]
            or self.result["reloaded"] or self.result["stopped"]
        )
        return self.result

    def _remove(self):
        """state=absent: stop and disable the unit (or the template's instances), then remove its file (or the
        drop-in), reload systemd and forget what the instances were started with."""
        for unit in self.units:
            self._converge(unit, "stopped", False)
            if not self.dropin:
                self._enable(unit, False)
        before = read_text(self.path)
        if before is not None:
            if self.want_diff:
                self.result["diff"] = {"before": before, "after": "", "before_header": self.path,
                                       "after_header": "(absent)"}
            if not self.check_mode:
                os.unlink(self.path)
                fsync_dir(os.path.dirname(self.path))
                if self.dropin:
                    with contextlib.suppress(OSError):  # the drop-in directory goes when it is empty
                        os.rmdir(os.path.dirname(self.path))
                self.systemd.daemon_reload()
                for unit in self.units:
                    self.systemd.ctl("reset-failed", "--", unit, check=False)
            self.result["removed"] = self.result["daemon_reloaded"] = True
        if not self.check_mode:
            for unit in self.units:
                RestartRecord(self.params["state_dir"], unit).remove()
        self.result["changed"] = bool(self.result["removed"] or self.result["stopped"] or self.result["enabled_changed"])
        return self.result

    def _write_unit(self):
        text = desired_text(self.params, self.unit, self.dropin)
        if text is None:
            # A unit that does not exist is already stopped and disabled: only asking for more needs its file.
            if self.params.get("state") in (None, "stopped") and not self.params.get("enabled"):
                return False
            for unit in self.units:
                if self.systemd.show(unit).get("LoadState") == "not-found":
                    raise UnitError(f"{unit} does not exist; give sections or content to write {self.path}")
            return False
        before = read_text(self.path)
        mode = parse_mode(self.params["mode"])
        mode_differs = before is not None and (os.stat(self.path).st_mode & 0o7777) != mode
        if before == text and not mode_differs:
            return False
        if before != text and self.params["verify"] != "none":
            self.result["verify_output"] = verify_candidate(
                self.systemd, self.unit, self.dropin, text, self.units, self.params["unit_dir"],
                strict=self.params["verify"] == "strict", warn=self.warn,
            )
        if self.want_diff:
            self.result["diff"] = {
                "before": before or "", "after": text,
                "before_header": self.path if before is not None else "(absent)", "after_header": self.path,
            }
        if (before is not None and self.params.get("sections") is not None and not self.dropin
                and not before.startswith(MANAGED_HEADER)):
            self.warn(f"{self.path} was not written by sciops.fleet.service_unit; it is replaced")
        if not self.check_mode:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            atomic_write(self.path, text.encode("utf-8"), mode=mode)
        self.result["written"] = True
        return True

    def _daemon_reload(self, written):
        stale = False
        if not written and (self.params.get("state") or self.params.get("enabled") is not None):
            stale = any(self.systemd.show(unit, ("NeedDaemonReload",)).get("NeedDaemonReload") == "yes"
                        for unit in self.units)
        if written or stale:
            if not self.check_mode:
                self.systemd.daemon_reload()
            self.result["daemon_reloaded"] = True

    def _enable(self, unit, want):
        current = self.systemd.is_enabled(unit)
        if want:
            if current in ENABLED_STATES:
                return
            if current == "static":
                raise UnitError(f"{unit} has no [Install] section, so it cannot be enabled; add one "
                                "(for example WantedBy=multi-user.target) or leave enabled unset")
            if current == "masked":
                raise UnitError(f"{unit} is masked; unmask it before enabling it")
        elif current not in ENABLED_STATES + ("linked", "linked-runtime"):
            return
        if not self.check_mode:
            self.systemd.ctl("enable" if want else "disable", "--", unit)
        self.result["enabled_changed"].append(unit)

    def _watched(self, unit):
        instance = UnitName(unit).instance if self.unit.is_template else None
        return {expand_instance(path, instance): path_digest(expand_instance(path, instance))
                for path in self.params.get("restart_on_change") or []}

    def _converge(self, unit, state, written):
        active = self.systemd.is_active(unit)
        running = active in ("active", "activating", "reloading")
        if state == "stopped":
            if running:
                if not self.check_mode:
                    self.systemd.ctl("stop", "--", unit)
                self.result["stopped"].append(unit)
            return
        record = RestartRecord(self._record_dir(unit), unit)
        files = self._watched(unit)
        if self.check_mode and written:
            digest, unit_changed = None, True
        else:
            digest = unit_digest(self.systemd, unit)
            unit_changed = record.unit_changed(digest)
        changed_files = record.changed_files(files)
        if not running:
            verb, bucket, reason = "start", "started", f"was {active}"
        elif state == "restarted":
            verb, bucket, reason = "restart", "restarted", "state is restarted"
        elif not record.exists:
            verb, bucket, reason = "restart", "restarted", "no record of what it was started with"
        elif unit_changed:
            verb, bucket, reason = "restart", "restarted", "the unit changed"
        elif changed_files:
            reason = "changed: " + ", ".join(changed_files)
            verb, bucket = ("reload-or-restart", "reloaded") if state == "reloaded" else ("restart", "restarted")
        else:
            return
        self.result[bucket].append(unit)
        self.result["restart_reasons"][unit] = reason
        if self.check_mode:
            return
        props = start_and_check(self.systemd, unit, verb, self.params["settle"], self.params["journal_lines"])
        record.save(digest, files, invocation=props.get("InvocationID"))
