# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The rpm spec file of one package, written from a validated package spec and its plan (``_rpm/spec.py``)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping

from ansible_collections.sciops.fleet.plugins.module_utils._rpm.spec import DEP_KINDS, SCRIPT_KINDS, pattern_regex


def evr(package: Mapping[str, Any]) -> str:
    """``[E:]V-R`` of a validated package."""
    epoch = f"{package['epoch']}:" if package["epoch"] is not None else ""
    return f"{epoch}{package['version']}-{package['release']}"


def _attr(spec, tree, path, is_dir):
    """The %attr() of PATH: the last matching attribute rule wins; '-' keeps what the tree has (root-owned)."""
    owner, group, mode = "root", "root", "-"
    for rule in spec["attributes"]:
        if rule["path"] and pattern_regex(rule["path"]).match(path):
            owner = rule["owner"] or owner
            group = rule["group"] or group
            wanted = rule["dir_mode"] if is_dir else rule["mode"]
            mode = wanted or mode
    if mode != "-" and not is_dir and os.path.islink(os.path.join(tree, path)):
        mode = "-"
    return f"%attr({mode},{owner},{group})"


def _scriptlet(package, kind, units):
    """The shell text of scriptlet KIND: the systemd part for the package's units, then the package's own."""
    lines = []
    if units:
        names = " ".join(units)
        systemd = {
            "post": ["if command -v systemctl >/dev/null 2>&1; then",
                     "  systemctl daemon-reload >/dev/null 2>&1 || :",
                     f'  if [ "$1" -eq 1 ]; then systemctl --no-reload preset {names} >/dev/null 2>&1 || :; fi',
                     "fi"],
            "preun": ['if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then',
                      f"  systemctl --no-reload disable --now {names} >/dev/null 2>&1 || :",
                      "fi"],
            "postun": ["if command -v systemctl >/dev/null 2>&1; then",
                       "  systemctl daemon-reload >/dev/null 2>&1 || :",
                       f'  if [ "$1" -ge 1 ]; then systemctl try-restart {names} >/dev/null 2>&1 || :; fi',
                       "fi"],
        }
        lines.extend(systemd.get(kind, []))
    if kind in package["scripts"]:
        lines.append(package["scripts"][kind].rstrip("\n"))
    return "\n".join(lines)


def _wrap(text, width=79):
    out = []
    for paragraph in text.strip().split("\n"):
        line = ""
        for word in paragraph.split():
            if line and len(line) + 1 + len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return "\n".join(out)


def package_changelog(spec: Mapping[str, Any], package: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The changelog entries of PACKAGE: its own; else the spec's when it shares the spec's version; else none
    (a package versioned on its own, such as the dependencies, must not change when the application's log does)."""
    if package["changelog"]:
        return package["changelog"]
    return spec["changelog"] if package["version"] == spec["version"] else []


def _changelog(spec, package, source_date_epoch):
    entries = package_changelog(spec, package) or [
        {"date": time.strftime("%Y-%m-%d", time.gmtime(source_date_epoch)),
         "author": spec["packager"] or "sciops.fleet <root@localhost>",
         "text": f"Build {package['version']}-{package['release']}"}]
    lines = ["%changelog"]
    for entry in sorted(entries, key=lambda e: e["date"], reverse=True):
        day = time.strftime("%a %b %d %Y", time.strptime(entry["date"], "%Y-%m-%d"))
        lines.append(f"* {day} {entry['author']} - {package['version']}-{package['release']}")
        for text_line in entry["text"].strip().splitlines():
            text_line = text_line.strip().replace("%", "%%")
            lines.append(text_line if text_line.startswith("-") else f"- {text_line}")
        lines.append("")
    return lines


def _escape(text):
    return str(text).replace("%", "%%")


def render_spec(spec: Mapping[str, Any], plan: Mapping[str, Any], tree: str, package: Mapping[str, Any],
                source_date_epoch: int, install_command: str) -> str:
    """The rpm spec file text of PACKAGE (one of SPEC's, split by PLAN); INSTALL_COMMAND fills %{buildroot}.

    Each package gets a spec of its own, so that its header (source RPM name, changelog, build time) depends on
    nothing but its own fields and files: a new application build leaves the dependency package's bytes alone.
    """
    siblings = {p["name"]: p for p in spec["packages"]}
    entry = plan[package["name"]]
    lines = [
        "# Written by sciops.fleet.rpm_build; do not edit, change the package spec instead.",
        f"Name: {package['name']}",
        f"Version: {package['version']}",
        f"Release: {package['release']}",
    ]
    if package["epoch"] is not None:
        lines.append(f"Epoch: {package['epoch']}")
    lines += [f"Summary: {_escape(package['summary'])}", f"License: {_escape(spec['license'])}"]
    for tag, key in (("Group", "group"), ("URL", "url"), ("Vendor", "vendor"), ("Packager", "packager")):
        if spec[key]:
            lines.append(f"{tag}: {_escape(spec[key])}")
    if spec["arch"] == "noarch":
        lines.append("BuildArch: noarch")
    if spec["relocatable"]:
        lines.append(f"Prefix: {spec['prefix']}")
    lines.append(f"AutoReqProv: {'yes' if package['auto_requires'] else 'no'}")
    for kind, tag in zip(DEP_KINDS, ("Requires", "Provides", "Conflicts", "Obsoletes")):
        for dep in package[kind]:
            if kind == "requires" and dep in siblings and dep != package["name"]:
                dep = f"{dep} = {evr(siblings[dep])}"
            lines.append(f"{tag}: {dep}")
    lines += ["", "%description", _escape(_wrap(package["description"]))]
    lines += ["", "%prep", "", "%build", "", "%install", install_command]
    for path in package["dirs"]:
        lines.append(f"mkdir -p '%{{buildroot}}/{path}'")
    for path in package["ghost"]:
        lines.append(f"mkdir -p \"$(dirname '%{{buildroot}}/{path}')\" && touch '%{{buildroot}}/{path}'")
    for kind in SCRIPT_KINDS:
        text = _scriptlet(package, kind, entry["units"])
        if text:
            lines += ["", f"%{kind}", _escape(text)]
    config = [pattern_regex(p) for p in package["config"]]
    doc = [pattern_regex(p) for p in package["doc"]]
    lines += ["", "%files"]
    for path in entry["dirs"]:
        lines.append(f"{_attr(spec, tree, path, True)} %dir /{path}")
    for path in entry["files"]:
        flags = ""
        if any(r.match(path) for r in config):
            flags += "%config(noreplace) "
        if any(r.match(path) for r in doc):
            flags += "%doc "
        lines.append(f"{_attr(spec, tree, path, False)} {flags}/{path}")
    for path in package["ghost"]:
        lines.append(f"{_attr(spec, tree, path, False)} %ghost /{path}")
    lines += [""] + _changelog(spec, package, source_date_epoch)
    return "\n".join(lines) + "\n"
