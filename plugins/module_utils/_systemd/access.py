# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""A grant: what a group may do to which units and nspawn machines without root, and its text as a polkit rule
or a sudoers drop-in.

What a grant may name is the point of this file. A verb is allowed only when it acts on one unit (or machine)
and cannot turn into root: enabling units (polkit's ``manage-unit-files``, which systemd never checks per unit),
``daemon-reload``, ``edit``, ``set-property``, ``link``, ``mask`` and the like are refused, and so are unit
patterns that do not name a concrete unit or template (``*``, ``*.service``, ``ssh*``).
"""

from __future__ import annotations

import grp
import json
import re
from typing import Any, List, Mapping, Sequence

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import AccessError, UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import UNIT_TYPES, UnitName

# The verbs a grant may name, and the verbs systemd passes to polkit for each (``action.lookup("verb")``, as
# systemd 252 sends them): a restart grant covers ``systemctl try-restart``, and restart with reload covers
# ``reload-or-restart`` and ``try-reload-or-restart``. ``status`` needs no grant: every user may read a unit's state.
UNIT_VERBS = ("start", "stop", "restart", "reload", "kill", "reset-failed", "status")
_POLKIT_UNIT_VERBS = {
    "start": ("start",),
    "stop": ("stop",),
    "restart": ("restart", "try-restart"),
    "reload": ("reload",),
    "kill": ("kill",),
    "reset-failed": ("reset-failed",),
    "status": (),
}
_BOTH_RELOAD_AND_RESTART = ("reload-or-restart", "reload-or-try-restart")

# machinectl verbs. ``start`` starts systemd-nspawn@NAME.service through systemd; ``stop`` (machinectl poweroff)
# and ``reboot`` are signals machined sends, for which it asks polkit about the verb ``kill`` without the signal.
MACHINE_VERBS = ("start", "stop", "reboot", "terminate", "status")
_MACHINE_UNIT_VERBS = {"start": ("start",), "stop": ("stop",)}
_MACHINE_MACHINED_VERBS = {"stop": ("kill", "terminate"), "reboot": ("kill",), "terminate": ("terminate",)}
_MACHINECTL_ARGV = {"start": ("start",), "stop": ("poweroff", "stop"), "reboot": ("reboot",), "terminate": ("terminate",)}

# Why each verb that is not granted is refused; any other word is refused as unknown.
REFUSED_VERBS = {
    "enable": "enabling or disabling a unit is polkit's manage-unit-files, which systemd checks for all unit files "
              "at once, never per unit: whoever may enable one unit may install and enable any, which is root",
    "disable": "see enable: manage-unit-files is never per unit",
    "reenable": "see enable: manage-unit-files is never per unit",
    "preset": "see enable: manage-unit-files is never per unit",
    "link": "linking a unit file makes any file a unit, which is root",
    "mask": "masking is manage-unit-files, never per unit",
    "unmask": "unmasking is manage-unit-files, never per unit",
    "revert": "reverting unit files is manage-unit-files, never per unit",
    "edit": "editing a unit means writing its file: the unit's command then runs as root",
    "daemon-reload": "daemon-reload is not per unit and reloads every unit file",
    "daemon-reexec": "daemon-reexec is not per unit",
    "set-property": "set-property changes a unit's resource and sandbox settings",
    "set-environment": "the manager's environment reaches every unit started afterwards",
    "import-environment": "the manager's environment reaches every unit started afterwards",
    "isolate": "isolate stops every unit the target does not pull in",
    "clean": "clean removes a unit's state, cache and log directories",
    "freeze": "freeze and thaw act through the unit's cgroup, which is not part of this grant",
    "thaw": "freeze and thaw act through the unit's cgroup, which is not part of this grant",
    "shell": "machinectl shell is a root shell in the machine",
    "login": "machinectl login is a root login in the machine",
    "bind": "machinectl bind mounts host paths into the machine",
    "copy-to": "machinectl copy-to writes host files into the machine as root",
    "copy-from": "machinectl copy-from reads files out of the machine as root",
    "run0": "run0 runs a command as root",
}

# Units whose start or stop acts on the whole node, never granted even when named.
REFUSED_UNITS = ("poweroff.target", "reboot.target", "halt.target", "kexec.target", "rescue.target",
                 "emergency.target", "ctrl-alt-del.target", "exit.target", "shutdown.target", "final.target",
                 "rescue.service", "emergency.service", "default.target", "multi-user.target", "graphical.target",
                 "sysinit.target", "basic.target", "polkit.service", "dbus.service", "dbus.socket")

GRANT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Debian's NAME_REGEX for users and groups; anything else would need escaping in sudoers.
_GROUP_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_INSTANCE_PART_RE = re.compile(r"^[A-Za-z0-9:_.\\-]*$")

POLKIT_MANAGE_UNITS = "org.freedesktop.systemd1.manage-units"
POLKIT_MANAGE_MACHINES = "org.freedesktop.machine1.manage-machines"
MANAGED_MARK = "sciops.fleet service_access"


class UnitPattern:
    """A unit a grant names: an exact unit (``app@current.service``, ``backup.timer``) or template instances
    (``app@*.service``, ``app@worker-*.service``: one ``*``, only in the instance part)."""

    def __init__(self, text: str) -> None:
        self.text = text
        if text.count("*") == 0:
            try:
                unit = UnitName(text)
            except UnitError as exc:  # its message says what a unit name looks like
                raise AccessError(f"units: {exc}") from None
            if unit.is_template:
                raise AccessError(f"units: {text} is a template, which nothing runs; name its instances "
                                  f"({unit.prefix}@current.{unit.type}) or all of them ({unit.prefix}@*.{unit.type})")
            if text in REFUSED_UNITS:
                raise AccessError(f"units: {text} is not granted: starting or stopping it acts on the whole node")
            self.prefix, self.suffix = text, ""
            return
        head, sep, tail = text.partition("@")
        star = tail.find("*")
        dot = tail.rfind(".")
        if not sep or not head or text.count("*") != 1 or "*" in head or star < 0 or dot < star:
            raise AccessError(
                f"units: {text!r} is too broad: a pattern may only stand for the instances of one template, with one "
                "'*' in the instance part after a concrete prefix, such as 'qserv@*.service' or "
                "'qserv@worker-*.service'; '*', '*.service' or 'ssh*' would grant units nobody named")
        unit_type = tail[dot + 1:]
        if unit_type not in UNIT_TYPES:
            raise AccessError(f"units: {text!r} does not end in a unit type ({', '.join(UNIT_TYPES)})")
        instance_head, instance_tail = tail[:star], tail[star + 1:dot]
        try:
            UnitName(f"{head}@.{unit_type}")
        except UnitError as exc:  # its message says what a unit name looks like
            raise AccessError(f"units: {exc}") from None
        if not (_INSTANCE_PART_RE.match(instance_head) and _INSTANCE_PART_RE.match(instance_tail)):
            raise AccessError(f"units: {text!r} has characters that are not allowed in an instance name")
        self.prefix = f"{head}@{instance_head}"
        self.suffix = f"{instance_tail}.{unit_type}"

    @property
    def is_pattern(self) -> bool:
        return bool(self.suffix)

    def matches(self, unit: str) -> bool:
        """Whether UNIT is this exact unit or one of the instances the pattern stands for."""
        if not self.is_pattern:
            return unit == self.prefix
        return (len(unit) > len(self.prefix) + len(self.suffix) and unit.startswith(self.prefix)
                and unit.endswith(self.suffix) and "@" not in unit[len(self.prefix):])

    def expand(self, instances: Sequence[str]) -> List[str]:
        """The units of INSTANCES (``current`` -> ``app@current.service``) this pattern stands for."""
        head, _sep, tail = self.text.partition("@")
        unit_type = tail[tail.rfind(".") + 1:]
        units = [f"{head}@{instance}.{unit_type}" for instance in instances]
        return [unit for unit in units if self.matches(unit) and UnitName(unit).is_instance]


def check_grant_name(name: str) -> str:
    """NAME, or AccessError: it names the rule and sudoers files."""
    if not GRANT_NAME_RE.match(name):
        raise AccessError(f"name {name!r}: use lower-case letters, digits, '-' and '_' (at most 64); it names "
                          "the rule and sudoers files, and sudo ignores files in sudoers.d whose name has a dot")
    return name


class Grant:
    """One validated grant. Build it with ``Grant.from_params``; nothing is written for a grant that fails."""

    def __init__(self, name: str, group: str, units: List[UnitPattern], verbs: List[str], machines: List[str],
                 machine_verbs: List[str], instances: List[str]) -> None:
        self.name = name
        self.group = group
        self.units = units
        self.verbs = verbs
        self.machines = machines
        self.machine_verbs = machine_verbs
        self.instances = instances

    @classmethod
    def from_params(cls, params: Mapping[str, Any], check_group: bool = True) -> Grant:
        """Validate the module's parameters; raise AccessError saying what was refused and why."""
        name = check_grant_name(params.get("name") or "")
        group = params.get("group") or ""
        if not _GROUP_RE.match(group):
            raise AccessError(f"group {group!r} is not a group name (lower-case letters, digits, '_' and '-')")
        if group == "root":
            raise AccessError("group root needs no grant")
        if check_group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise AccessError(f"group {group} does not exist on this node; create it first "
                                  "(ansible.builtin.group)") from None
        verbs = _checked_verbs(params.get("verbs") or [], UNIT_VERBS, "verbs")
        machine_verbs = _checked_verbs(params.get("machine_verbs") or [], MACHINE_VERBS, "machine_verbs")
        units = [UnitPattern(text) for text in _unique(params.get("units") or [])]
        machines = _unique(params.get("machines") or [])
        for machine in machines:
            if not _MACHINE_RE.match(machine):
                raise AccessError(f"machines: {machine!r} is not a machine name (letters, digits, '_' and '-'); "
                                  "patterns are not allowed for machines")
        instances = _unique(params.get("instances") or [])
        for instance in instances:
            if not instance or "*" in instance or not _INSTANCE_PART_RE.match(instance):
                raise AccessError(f"instances: {instance!r} is not an instance name")
        if units and not [verb for verb in verbs if _POLKIT_UNIT_VERBS[verb]]:
            raise AccessError("verbs: name at least one of start, stop, restart, reload, kill, reset-failed for the "
                              "units (status needs no grant: every user may read a unit's state)")
        if verbs and not units:
            raise AccessError("units: the verbs need units to act on")
        if machines and not [verb for verb in machine_verbs if verb != "status"]:
            raise AccessError("machine_verbs: name at least one of start, stop, reboot, terminate for the machines "
                              "(status needs no grant)")
        if machine_verbs and not machines:
            raise AccessError("machines: the machine verbs need machines to act on")
        if not units and not machines:
            raise AccessError("a grant names units with verbs, machines with machine_verbs, or both")
        return cls(name, group, units, verbs, machines, machine_verbs, instances)

    def polkit_unit_verbs(self) -> List[str]:
        """The verbs systemd passes to polkit that this grant allows on its units."""
        granted: List[str] = []
        for verb in self.verbs:
            granted += _POLKIT_UNIT_VERBS[verb]
        if "reload" in self.verbs and "restart" in self.verbs:
            granted += _BOTH_RELOAD_AND_RESTART
        return _unique(granted)

    def sudo_units(self) -> List[str]:
        """The exact units a sudoers drop-in names: exact units, and patterns expanded through ``instances``.

        sudo's ``*`` also matches spaces, slashes and further arguments, so a pattern is never written as one."""
        units: List[str] = []
        for pattern in self.units:
            if not pattern.is_pattern:
                units.append(pattern.text)
                continue
            expanded = pattern.expand(self.instances)
            if not expanded:
                raise AccessError(
                    f"units: {pattern.text} is a pattern, and sudoers cannot hold one safely (sudo's '*' also "
                    "matches spaces and further arguments, so 'systemctl restart app@*.service' would allow "
                    "'systemctl restart app@x.service ssh.service'); give the instances it stands for in "
                    "'instances' (such as [current, oldstable]), or use polkit")
            units += expanded
        return _unique(units)


def _checked_verbs(verbs: Sequence[str], allowed: Sequence[str], option: str) -> List[str]:
    for verb in verbs:
        if verb in allowed:
            continue
        why = REFUSED_VERBS.get(verb)
        if why:
            raise AccessError(f"{option}: {verb!r} is refused: {why}. Allowed: {', '.join(allowed)}")
        raise AccessError(f"{option}: {verb!r} is not a verb this module grants. Allowed: {', '.join(allowed)}")
    return _unique(verbs)


def _unique(items: Sequence[str]) -> List[str]:
    seen: List[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _js(value: Any) -> str:
    """A JavaScript literal (JSON is one; unit and group names hold no line separators)."""
    return json.dumps(value, sort_keys=True)


def polkit_rule_text(grant: Grant) -> str:
    """The polkit rule (JavaScript, ES5 for polkit's duktape engine) for GRANT.

    It answers YES only for the grant's group, actions, units, machines and verbs, and NOT_HANDLED otherwise, so
    it never denies what another rule allows."""
    exact = [pattern.text for pattern in grant.units if not pattern.is_pattern]
    patterns = [[pattern.prefix, pattern.suffix] for pattern in grant.units if pattern.is_pattern]
    unit_verbs = grant.polkit_unit_verbs()
    machine_units: List[str] = []
    machine_unit_verbs: List[str] = []
    machined_verbs: List[str] = []
    for verb in grant.machine_verbs:
        machine_unit_verbs += _MACHINE_UNIT_VERBS.get(verb, ())
        machined_verbs += _MACHINE_MACHINED_VERBS.get(verb, ())
    if machine_unit_verbs:
        machine_units = [f"systemd-nspawn@{machine}.service" for machine in grant.machines]
    lines = [
        f"// Written by {MANAGED_MARK} (grant {grant.name}); changes here are overwritten.",
        f"// Group {grant.group} may: {describe(grant)}.",
        "polkit.addRule(function(action, subject) {",
        f"    if (!subject.isInGroup({_js(grant.group)})) {{",
        "        return polkit.Result.NOT_HANDLED;",
        "    }",
        "    var verb = action.lookup(\"verb\");",
    ]
    if unit_verbs or machine_unit_verbs:
        lines += [
            f"    if (action.id == {_js(POLKIT_MANAGE_UNITS)}) {{",
            "        var unit = action.lookup(\"unit\");",
            "        if (unit === undefined || verb === undefined) {",
            "            return polkit.Result.NOT_HANDLED;",
            "        }",
        ]
        if unit_verbs:
            lines += [
                f"        var exact = {_js(exact)};",
                f"        var patterns = {_js(patterns)};",
                "        var named = exact.indexOf(unit) >= 0;",
                "        for (var i = 0; i < patterns.length && !named; i++) {",
                "            var prefix = patterns[i][0], suffix = patterns[i][1];",
                "            var middle = unit.substring(prefix.length, unit.length - suffix.length);",
                "            named = unit.length > prefix.length + suffix.length && unit.indexOf(prefix) == 0 &&",
                "                unit.substring(unit.length - suffix.length) == suffix && middle.indexOf(\"@\") < 0;",
                "        }",
                f"        if (named && {_js(unit_verbs)}.indexOf(verb) >= 0) {{",
                "            return polkit.Result.YES;",
                "        }",
            ]
        if machine_unit_verbs:
            lines += [
                f"        if ({_js(machine_units)}.indexOf(unit) >= 0 && {_js(_unique(machine_unit_verbs))}.indexOf(verb) >= 0) {{",
                "            return polkit.Result.YES;",
                "        }",
            ]
        lines.append("    }")
    if machined_verbs:
        lines += [
            f"    if (action.id == {_js(POLKIT_MANAGE_MACHINES)}) {{",
            "        var machine = action.lookup(\"machine\");",
            f"        if ({_js(grant.machines)}.indexOf(machine) >= 0 && {_js(_unique(machined_verbs))}.indexOf(verb) >= 0) {{",
            "            return polkit.Result.YES;",
            "        }",
            "    }",
        ]
    lines += [
        "    return polkit.Result.NOT_HANDLED;",
        "});",
    ]
    return "\n".join(lines) + "\n"


def _sudo_arg(text: str) -> str:
    """TEXT as one sudoers command argument: the characters sudoers gives a meaning escaped."""
    return re.sub(r"([\\,:=*?\[\]!#\"'\s])", r"\\\1", text)


def sudoers_text(grant: Grant, systemctl: str, machinectl: str) -> str:
    """The sudoers drop-in for GRANT: one exact command line per unit and verb, no wildcard, no shell.

    sudo matches a command given with arguments only when the arguments are exactly these, so
    ``sudo systemctl restart app@current.service extra`` does not match."""
    commands: List[str] = []
    units = grant.sudo_units() if grant.units else []
    for verb in grant.verbs:
        if verb == "status":
            continue
        for unit in units:
            commands.append(f"{systemctl} {verb} {_sudo_arg(unit)}")
    for verb in grant.machine_verbs:
        for word in _MACHINECTL_ARGV.get(verb, ()):
            for machine in grant.machines:
                commands.append(f"{machinectl} {word} {_sudo_arg(machine)}")
    lines = [f"# Written by {MANAGED_MARK} (grant {grant.name}); changes here are overwritten.",
             f"# Group {grant.group} may: {describe(grant)}."]
    lines += [f"%{grant.group} ALL=(root) NOPASSWD: {command}" for command in commands]
    return "\n".join(lines) + "\n"


def describe(grant: Grant) -> str:
    """One line saying what GRANT allows, for the files' header and the module's result."""
    parts = []
    if grant.units:
        parts.append(f"{', '.join(v for v in grant.verbs if v != 'status')} "
                     f"{', '.join(pattern.text for pattern in grant.units)}")
    if grant.machines:
        parts.append(f"machinectl {', '.join(v for v in grant.machine_verbs if v != 'status')} "
                     f"{', '.join(grant.machines)}")
    return "; ".join(parts)
