# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""systemd unit files as data: names, rendering from sections, hardened defaults, tool output parsing.

Nothing here runs a command; ``_systemd/manager.py`` does that. Everything here is unit-tested.
"""

from __future__ import annotations

import os
import re
from typing import Any, Collection, Dict, Iterable, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file, digest_text
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError

UNIT_TYPES = ("service", "socket", "timer", "mount", "automount", "path", "target", "slice", "swap")

# The section that holds a unit type's own settings; [Unit] comes first and [Install] last.
TYPE_SECTIONS = {
    "service": "Service", "socket": "Socket", "timer": "Timer", "mount": "Mount", "automount": "Automount",
    "path": "Path", "slice": "Slice", "swap": "Swap", "target": None,
}

MANAGED_HEADER = "# Managed by sciops.fleet.service_unit; local changes are overwritten on the next run."
HARDENING_COMMENT = "# Hardened defaults of sciops.fleet.service_unit (override or remove each with the module's sections)."

_NAME_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9:_.\\-]+?)(?:@(?P<instance>[A-Za-z0-9:_.\\-]*))?\.(?P<type>[a-z]+)$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_SECTION_RE = re.compile(r"^[A-Za-z][A-Za-z0-9 _.-]*$")
_DROPIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*\.conf$")
_EXPOSURE_RE = re.compile(r"Overall exposure level for (?P<unit>\S+):\s*(?P<score>\d+(?:\.\d+)?)\s+(?P<rating>[A-Z]+)")


class UnitName:
    """A parsed unit name: ``app@.service`` is a template, ``app@current.service`` an instance of it."""

    def __init__(self, name: str) -> None:
        match = _NAME_RE.match(name or "")
        if not match or match.group("type") not in UNIT_TYPES:
            raise UnitError(
                f"name {name!r} is not a systemd unit name; write it as PREFIX.TYPE or PREFIX@.TYPE (a template), "
                f"with TYPE one of {', '.join(UNIT_TYPES)}"
            )
        self.name = name
        self.prefix = match.group("prefix")
        self.instance = match.group("instance")
        self.type = match.group("type")

    @property
    def is_template(self) -> bool:
        """``app@.service``: has an ``@`` and no instance."""
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    def instance_name(self, instance: str) -> str:
        """The unit name of INSTANCE of this template (``current`` -> ``app@current.service``)."""
        if not self.is_template:
            raise UnitError(f"unit {self.name} is not a template (PREFIX@.TYPE); it has no instances")
        if not _INSTANCE_RE.match(instance or ""):
            raise UnitError(
                f"instance {instance!r} of {self.name} is not a valid instance name; use letters, digits and ':_.-' "
                "(escape other characters with systemd-escape)"
            )
        return f"{self.prefix}@{instance}.{self.type}"

    def __str__(self) -> str:
        return self.name


def validate_dropin_name(name: str) -> str:
    """Return the drop-in file name NAME with ``.conf`` added when missing; refuse paths and odd names."""
    if not name.endswith(".conf"):
        name += ".conf"
    if not _DROPIN_RE.match(name):
        raise UnitError(f"dropin {name!r} is not a plain file name such as 50-limits.conf")
    return name


def render_value(section: str, key: str, value: Any) -> str:
    """One directive's value as unit-file text (booleans as yes/no); refuse what would not be one line."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise UnitError(
                f"[{section}] {key}: the value has a line break; give one value per line as a list, "
                "or write the unit with content"
            )
        return value
    raise UnitError(
        f"[{section}] {key}: a value must be a string, number, boolean or a list of them, not {type(value).__name__}"
    )


def _section_lines(section, directives):
    if not _SECTION_RE.match(section):
        raise UnitError(f"section name {section!r} is not valid in a unit file")
    if not isinstance(directives, dict):
        raise UnitError(f"section [{section}] must be a mapping of directive names to values")
    lines = []
    for key, value in directives.items():
        if not _KEY_RE.match(str(key)):
            raise UnitError(f"[{section}] {key!r} is not a valid directive name")
        if value is None:
            continue  # null removes a directive, in particular a hardened default
        if isinstance(value, dict):
            raise UnitError(f"[{section}] {key}: a value must be a string, number, boolean or a list of them, not a mapping")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (list, dict)):
                raise UnitError(f"[{section}] {key}: list items must be strings, numbers or booleans")
            lines.append(f"{key}={render_value(section, key, item)}")
    return lines


def ordered_sections(sections: Mapping[str, Any], unit_type: str) -> List[str]:
    """Section names in unit-file order: [Unit], the type's own section, the others as given, [Install]."""
    own = TYPE_SECTIONS.get(unit_type)
    head = [name for name in ("Unit", own) if name and name in sections]
    tail = [name for name in ("Install",) if name in sections]
    return head + [name for name in sections if name not in head and name not in tail] + tail


def render_sections(sections: Mapping[str, Mapping[str, Any] | None], order: Iterable[str], header: str,
                    hardening_keys: Collection[str] = ()) -> str:
    """INI text in systemd's syntax from SECTIONS (``{section: {directive: value or [values] or None}}``).

    ORDER is the section names in the order to write them; HEADER the comment line at the top. Directives named
    in HARDENING_KEYS (for the [Service] section) are written after the user's own under a comment, so a reader
    sees which settings are the module's defaults.
    """
    out = [header]
    for section in order:
        directives = sections[section] or {}
        out.append("")
        out.append(f"[{section}]")
        if section == "Service" and hardening_keys:
            own = {k: v for k, v in directives.items() if k not in hardening_keys}
            defaults = {k: v for k, v in directives.items() if k in hardening_keys}
            out.extend(_section_lines(section, own))
            default_lines = _section_lines(section, defaults)
            if default_lines:
                out.append(HARDENING_COMMENT)
                out.extend(default_lines)
        else:
            out.extend(_section_lines(section, directives))
    return "\n".join(out) + "\n"


def render_unit(sections: Mapping[str, Mapping[str, Any] | None], unit_type: str,
                hardening_keys: Collection[str] = ()) -> str:
    """Unit-file text from SECTIONS, with the managed-file header; see ``render_sections``."""
    return render_sections(sections, ordered_sections(sections, unit_type), MANAGED_HEADER, hardening_keys)


def hardened_defaults(unit: UnitName) -> Dict[str, Any]:
    """The [Service] directives a service gets unless the user overrides (or with null removes) them.

    They aim at systemd's "OK" exposure band for a network service that writes only to its own state, cache
    and log directories. Template instances get a directory per instance (``app/current``).
    """
    directory = f"{unit.prefix}/%i" if unit.is_template or unit.is_instance else unit.prefix
    return {
        "DynamicUser": True,
        "StateDirectory": directory,
        "CacheDirectory": directory,
        "LogsDirectory": directory,
        "UMask": "0077",
        "NoNewPrivileges": True,
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "PrivateUsers": True,
        "DevicePolicy": "closed",
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectKernelLogs": True,
        "ProtectControlGroups": True,
        "ProtectClock": True,
        "ProtectHostname": True,
        "ProtectProc": "invisible",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": True,
        "RestrictRealtime": True,
        "RestrictSUIDSGID": True,
        "LockPersonality": True,
        "MemoryDenyWriteExecute": True,
        "SystemCallArchitectures": "native",
        "SystemCallFilter": ["@system-service", "~@privileged"],
        "SystemCallErrorNumber": "EPERM",
    }


def apply_hardening(sections: Mapping[str, Any], unit: UnitName) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
    """SECTIONS with the hardened defaults merged into [Service]; returns ``(sections, default_keys)``.

    The user's directives win, ``null`` removes a default, and a given ``User=`` replaces ``DynamicUser=``.
    DEFAULT_KEYS are the directives whose value is the module's default (for the comment in the file).
    """
    service = dict(sections.get("Service") or {})
    defaults = hardened_defaults(unit)
    if service.get("User") not in (None, "") and "DynamicUser" not in service:
        defaults.pop("DynamicUser")
    merged = dict(service)
    default_keys = []
    for key, value in defaults.items():
        if key not in service:
            merged[key] = value
            default_keys.append(key)
    result = dict(sections)
    result["Service"] = merged
    return result, tuple(default_keys)


def expand_instance(path: str, instance: str | None) -> str:
    """PATH with ``%i`` replaced by INSTANCE (``/etc/app/%i.conf`` -> ``/etc/app/current.conf``); ``%%`` is ``%``."""
    if instance is None:
        return path.replace("%%", "%")
    return re.sub(r"%[%i]", lambda m: "%" if m.group(0) == "%%" else instance, path)


def text_digest(text: str) -> str:
    return digest_text(text)


def path_digest(path: str) -> str:
    """What a watched path is compared by: a file by content, a directory by where it resolves to, else absent.

    A directory (or a link to one, such as a release's ``current`` link) counts as changed when it resolves
    elsewhere, so switching ``current`` to another release restarts the services that watch it.
    """
    try:
        if os.path.isdir(path):
            return "dir:" + os.path.realpath(path)
        return digest_file(path)[0]
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise UnitError(f"restart_on_change: cannot read {path}: {exc.strerror}") from None


_IGNORED_RE = re.compile(r"\bignor(?:ing|ed)\b", re.IGNORECASE)


def verify_problems(output: str, candidate_paths: Iterable[str], returncode: int, strict: bool = True) -> List[str]:
    """The lines of ``systemd-analyze verify`` OUTPUT that make the candidate unacceptable.

    Any non-zero exit refuses the unit with all of systemd's lines. In strict mode, a line systemd reports for
    one of CANDIDATE_PATHS saying it ignores something (``PATH:LINE: Unknown key ..., ignoring``) refuses it too:
    systemd would run the unit without that line, which is not the unit the user wrote. Other lines about the
    candidate are warnings (see ``verify_warnings``).
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if returncode != 0:
        return lines or [f"systemd-analyze verify exited {returncode}"]
    if not strict:
        return []
    prefixes = tuple(f"{path}:" for path in candidate_paths)
    return [line for line in lines if line.startswith(prefixes) and _IGNORED_RE.search(line)]


def verify_warnings(output: str, candidate_paths: Iterable[str]) -> List[str]:
    """What systemd says about the candidate that does not refuse it (``Special user nobody configured, ...``)."""
    prefixes = tuple(f"{path}:" for path in candidate_paths)
    return [line.strip() for line in output.splitlines()
            if line.strip().startswith(prefixes) and not _IGNORED_RE.search(line)]


def parse_exposure(output: str) -> Tuple[float | None, str | None]:
    """``(score, rating)`` from ``systemd-analyze security UNIT`` output, or ``(None, None)``."""
    match = None
    for match in _EXPOSURE_RE.finditer(output):
        pass
    if not match:
        return None, None
    return float(match.group("score")), match.group("rating")


def parse_show(output: str) -> Dict[str, str]:
    """``systemctl show -p A -p B UNIT`` output as a dict."""
    props = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key] = value
    return props
