# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The package spec of rpm_build: validation (one message per wrong field) and the split of a staged tree into
its packages. ``_rpm/specfile.py`` writes the rpm spec file from both.

The staged tree is laid out as the packages install it (``opt/qserv/bin/qserv`` is installed as
``/opt/qserv/bin/qserv``). ``docs/rpm.md`` documents every field; in short::

    name: qserv
    version: 1.4.0~rc1          # an RPM version: no '-'; pre-releases with '~'
    release: "3"                # default 1
    epoch: 1                    # optional
    arch: x86_64                # default: the build host's; or noarch
    summary: ...                # required
    license: GPL-3.0-or-later   # required
    url, vendor, description
    packager, group             # default: the newest changelog author; Applications/System
    prefix: /opt/qserv          # the packages' own directory; its directories are owned
    relocatable: false          # Prefix: the prefix, so rpm --relocate can move it
    auto_requires: false        # library requires/provides found by rpm (elfdeps)
    changelog: [{date: 2024-05-01, author: "Name <mail>", text: "..."}]
    attributes: [{path: "opt/qserv/var/**", owner: qserv, group: qserv, mode: "0640", dir_mode: "0750"}]
    packages:
      - name: qserv             # the application
        files: ["opt/qserv/bin/**", "opt/qserv/etc/**", "usr/lib/systemd/system/qserv.service"]
        requires: [qserv-deps]  # a sibling: pinned to the sibling's exact epoch:version-release
        config: ["opt/qserv/etc/*.conf"]   # %config(noreplace)
        doc: [], ghost: [], dirs: []
        scripts: {pre: ..., post: ..., preun: ..., postun: ..., posttrans: ...}
        systemd: true           # scriptlets for the units it ships
      - name: qserv-deps        # its dependencies, under the same prefix
        version: "2024.1"       # a package may override version, release, epoch, summary, description
        files: ["opt/qserv/lib/**"]
        exclude: ["opt/qserv/lib/libqserv*"]
        owns_shared_dirs: true  # owns directories holding files of several packages
        changelog: [...]        # its own; a package with its own version does not take the spec's
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import InvalidDocumentError

from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import Checker
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.version import RpmVersionError, check_release, check_version

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_ARCH_RE = re.compile(r"^[a-z0-9_]{1,20}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
_DEP_RE = re.compile(r"^[A-Za-z0-9_.+/()-][A-Za-z0-9_.+/():-]*(?: (?:<|>|<=|>=|=) [A-Za-z0-9_.+~^:-]+)?$")
_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
# What rpm would read as a glob or a macro, or what breaks a %files line.
_BAD_PATH_CHARS = re.compile(r"[\s%\"\\*?\[\]{}\x00-\x1f]")

TOP_KEYS = ("name", "version", "release", "epoch", "arch", "summary", "description", "license", "url", "vendor",
            "packager", "group", "prefix", "relocatable", "auto_requires", "changelog", "attributes", "packages")
PACKAGE_KEYS = ("name", "version", "release", "epoch", "summary", "description", "files", "exclude", "requires",
                "provides", "conflicts", "obsoletes", "config", "doc", "ghost", "dirs", "scripts", "systemd",
                "owns_shared_dirs", "auto_requires", "changelog")
DEP_KINDS = ("requires", "provides", "conflicts", "obsoletes")
SCRIPT_KINDS = ("pre", "post", "preun", "postun", "posttrans")
ATTRIBUTE_KEYS = ("path", "owner", "group", "mode", "dir_mode")
CHANGELOG_KEYS = ("date", "author", "text")
UNIT_DIRS = ("usr/lib/systemd/system/", "lib/systemd/system/")
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".target")
# Directories that belong to the operating system (its filesystem package); a package never owns them.
SYSTEM_DIRS = frozenset("""
bin boot etc etc/default etc/profile.d etc/sysconfig etc/systemd etc/systemd/system etc/logrotate.d etc/cron.d
lib lib64 opt run sbin srv usr usr/bin usr/include usr/lib usr/lib64 usr/libexec usr/sbin usr/share
usr/share/doc usr/share/licenses usr/share/man usr/share/man/man1 usr/share/man/man5 usr/share/man/man8
usr/share/info usr/local usr/local/bin usr/local/lib usr/local/share usr/lib/systemd usr/lib/systemd/system
lib/systemd lib/systemd/system usr/lib/tmpfiles.d usr/lib/sysusers.d var var/lib var/log var/cache var/spool
var/tmp tmp
""".split())


class SpecError(InvalidDocumentError):
    """The package spec or the tree is not valid; the message lists every problem, one per field."""

    def __init__(self, problems: Iterable[str]) -> None:
        super().__init__("rpm_build spec", problems)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a path pattern relative to the tree: ``*`` within a name, ``**`` across directories.

    A pattern also matches everything below what it names, so ``opt/qserv/lib`` takes the whole directory.
    """
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(parts) + "(?:/.*)?$")


def _tree_path(check, value, field):
    """A relative path inside the tree (no leading '/', no '..'), or None after noting the problem."""
    if not isinstance(value, str) or not value.strip("/"):
        check.add(field, "must be a non-empty path relative to the tree")
        return None
    parts = value.split("/")
    if value.startswith("/") or ".." in parts:
        check.add(field, f"{value!r} is outside the tree; write a path relative to the tree, without a leading "
                         "'/' or '..' (e.g. opt/qserv/bin/*)")
        return None
    return value.rstrip("/")


def validate_spec(data: Any, host_arch: str = "x86_64") -> Dict[str, Any]:
    """Validate a package spec (a dict); return its normal form or raise SpecError listing every problem."""
    check = Checker()
    if not isinstance(data, dict):
        raise SpecError([f"spec must be a mapping of fields, not {type(data).__name__}"])
    check.keys(data, TOP_KEYS, "spec")
    spec = {}
    spec["name"] = check.string(data, "name", "spec.name", _NAME_RE,
                                " (letters, digits, '.', '_', '+', '-'; start with a letter or digit)")
    spec["summary"] = check.string(data, "summary", "spec.summary")
    spec["license"] = check.string(data, "license", "spec.license")
    for key in ("description", "url", "vendor", "packager", "group"):
        spec[key] = check.string(data, key, f"spec.{key}", required=False)
    spec["group"] = spec["group"] or "Applications/System"
    spec["version"] = _version(check, data, "spec", required=True)
    spec["release"] = _release(check, data, "spec") or "1"
    spec["epoch"] = check.number(data, "epoch", "spec.epoch")
    arch = check.string(data, "arch", "spec.arch", _ARCH_RE, " (e.g. x86_64, aarch64, noarch)", required=False)
    spec["arch"] = arch or host_arch
    prefix = data.get("prefix")
    spec["prefix"] = None
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or ".." in prefix.split("/") or prefix.strip("/") == "":
            check.add("spec.prefix", f"{prefix!r} must be an absolute directory other than /, e.g. /opt/qserv")
        else:
            spec["prefix"] = "/" + prefix.strip("/")
    spec["relocatable"] = _flag(check, data, "relocatable", "spec.relocatable", False)
    if spec["relocatable"] and not spec["prefix"]:
        check.add("spec.relocatable", "needs spec.prefix: the directory rpm --relocate may move")
    spec["auto_requires"] = _flag(check, data, "auto_requires", "spec.auto_requires", False)
    spec["changelog"] = _changelog_entries(check, data, "spec")
    if not spec["packager"] and spec["changelog"] and not check.problems:
        spec["packager"] = max(spec["changelog"], key=lambda e: e["date"])["author"]
    spec["attributes"] = []
    for index, item in check.mapping_list(data, "attributes", "spec.attributes"):
        field = f"spec.attributes[{index}]"
        check.keys(item, ATTRIBUTE_KEYS, field)
        entry = {"path": _tree_path(check, item.get("path"), f"{field}.path")}
        for key in ("owner", "group"):
            entry[key] = check.string(item, key, f"{field}.{key}", _USER_RE, " (a user or group name)", required=False)
        for key in ("mode", "dir_mode"):
            value = item.get(key)
            if value is None:
                entry[key] = None
            elif isinstance(value, str) and _MODE_RE.match(value):
                entry[key] = "%04o" % int(value, 8)
            else:
                check.add(f"{field}.{key}", f"{value!r} must be an octal mode written as a string, e.g. '0640'")
                entry[key] = None
        spec["attributes"].append(entry)

    raw_packages = data.get("packages")
    if raw_packages is None and spec["name"]:
        raw_packages = [{"name": spec["name"], "files": ["**"]}]
    packages, names = [], set()
    for index, item in check.mapping_list({"packages": raw_packages}, "packages", "spec.packages", required=True):
        field = f"spec.packages[{index}]"
        check.keys(item, PACKAGE_KEYS, field)
        package = {"name": check.string(item, "name", f"{field}.name", _NAME_RE,
                                        " (letters, digits, '.', '_', '+', '-')")}
        if package["name"] in names:
            check.add(f"{field}.name", f"{package['name']!r} is used by another package; names must be unique")
        names.add(package["name"])
        package["version"] = _version(check, item, field) or spec["version"]
        package["release"] = _release(check, item, field) or spec["release"]
        package["epoch"] = check.number(item, "epoch", f"{field}.epoch")
        if package["epoch"] is None:
            package["epoch"] = spec["epoch"]
        package["summary"] = check.string(item, "summary", f"{field}.summary", required=False) or spec["summary"]
        package["description"] = (check.string(item, "description", f"{field}.description", required=False)
                                  or spec["description"] or package["summary"])
        files = check.string_list(item, "files", f"{field}.files")
        if not files:
            check.add(f"{field}.files", "is required: patterns of the tree's paths this package holds, e.g. opt/qserv/bin/**")
        for key in ("files", "exclude", "config", "doc", "ghost", "dirs"):
            values = files if key == "files" else check.string_list(item, key, f"{field}.{key}")
            package[key] = [p for p in (_tree_path(check, v, f"{field}.{key}[{i}]") for i, v in enumerate(values)) if p]
        for key in ("ghost", "dirs"):
            for i, value in enumerate(package[key]):
                if _BAD_PATH_CHARS.search(value):
                    check.add(f"{field}.{key}[{i}]", f"{value!r} must be a plain path (no patterns, spaces or '%')")
        for kind in DEP_KINDS:
            deps = check.string_list(item, kind, f"{field}.{kind}")
            for i, dep in enumerate(deps):
                if not _DEP_RE.match(dep):
                    check.add(f"{field}.{kind}[{i}]", f"{dep!r} is not a dependency; write NAME or NAME OP VERSION "
                                                      "with OP one of < > <= >= = (e.g. 'libfoo >= 1.2')")
            package[kind] = deps
        scripts = item.get("scripts") or {}
        if not isinstance(scripts, dict):
            check.add(f"{field}.scripts", "must be a mapping of scriptlet to shell text")
            scripts = {}
        check.keys(scripts, SCRIPT_KINDS, f"{field}.scripts")
        package["scripts"] = {}
        for kind in SCRIPT_KINDS:
            text = check.string(scripts, kind, f"{field}.scripts.{kind}", required=False)
            if text is not None:
                package["scripts"][kind] = text
        package["systemd"] = _flag(check, item, "systemd", f"{field}.systemd", True)
        package["owns_shared_dirs"] = _flag(check, item, "owns_shared_dirs", f"{field}.owns_shared_dirs", False)
        package["auto_requires"] = _flag(check, item, "auto_requires", f"{field}.auto_requires", spec["auto_requires"])
        package["changelog"] = _changelog_entries(check, item, field)
        packages.append(package)
    owners = [p["name"] for p in packages if p["owns_shared_dirs"]]
    if len(owners) > 1:
        check.add("spec.packages", f"only one package may own the shared directories; {', '.join(owners)} all set owns_shared_dirs")
    elif packages and not owners:
        packages[0]["owns_shared_dirs"] = True
    spec["packages"] = packages
    if check.problems:
        raise SpecError(check.problems)
    return spec


def _changelog_entries(check, data, where):
    entries = []
    for index, item in check.mapping_list(data, "changelog", f"{where}.changelog"):
        field = f"{where}.changelog[{index}]"
        check.keys(item, CHANGELOG_KEYS, field)
        date = check.string(item, "date", f"{field}.date", _DATE_RE, " (write YYYY-MM-DD)")
        if date:
            try:
                time.strptime(date, "%Y-%m-%d")
            except ValueError:
                check.add(f"{field}.date", f"{date!r} is not a calendar date")
                date = None
        entries.append({"date": date, "author": check.string(item, "author", f"{field}.author"),
                        "text": check.string(item, "text", f"{field}.text")})
    return entries


def _flag(check, data, key, field, default):
    value = data.get(key, default)
    if not isinstance(value, bool):
        check.add(field, f"must be true or false, not {value!r}")
        return default
    return value


def _version(check, data, field, required=False):
    value = data.get("version")
    if value is None:
        if required:
            check.add(f"{field}.version", "is required: the RPM version, e.g. 1.4.0 or 1.4.0~rc1")
        return None
    try:
        return check_version(value, f"{field}.version")
    except RpmVersionError as exc:
        check.problems.append(str(exc))
        return None


def _release(check, data, field):
    value = data.get("release")
    if value is None:
        return None
    try:
        return check_release(value, f"{field}.release")
    except RpmVersionError as exc:
        check.problems.append(str(exc))
        return None


def scan_tree(tree: str) -> Tuple[List[str], List[str]]:
    """``(files, dirs)`` of TREE as sorted relative paths: files include symbolic links (also to directories)."""
    files, dirs = [], []
    for base, subdirs, names in os.walk(tree):
        for name in list(subdirs):
            if os.path.islink(os.path.join(base, name)):
                subdirs.remove(name)
                names.append(name)
        for name in subdirs:
            dirs.append(os.path.relpath(os.path.join(base, name), tree))
        for name in names:
            files.append(os.path.relpath(os.path.join(base, name), tree))
    return sorted(files), sorted(dirs)


def plan_packages(spec: Mapping[str, Any], tree: str) -> Dict[str, Dict[str, Any]]:
    """Split TREE among SPEC's packages: per package its files and the directories it owns, with attributes.

    Raises SpecError naming every file in two packages, in none, or not allowed in a %files list.
    """
    if not os.path.isdir(tree):
        raise SpecError([f"tree: {tree} is not a directory; stage the files to package there first"])
    files, dirs = scan_tree(tree)
    problems = []
    matchers = []
    for package in spec["packages"]:
        matchers.append(([pattern_regex(p) for p in package["files"]], [pattern_regex(p) for p in package["exclude"]]))
    owner = {}
    for path in files:
        if _BAD_PATH_CHARS.search(path):
            problems.append(f"tree: {path!r} has a space, '%', quote, backslash or glob character, which a %files list "
                            "cannot hold; rename it in the staged tree")
            continue
        takers = [p["name"] for p, (inc, exc) in zip(spec["packages"], matchers)
                  if any(r.match(path) for r in inc) and not any(r.match(path) for r in exc)]
        if len(takers) > 1:
            problems.append(f"tree: {path} is in two packages ({', '.join(takers)}); narrow their files or add an "
                            "exclude pattern, a file can belong to one package only")
        elif not takers:
            problems.append(f"tree: {path} is in no package; add a pattern to a package's files, or remove it from the tree")
        else:
            owner[path] = takers[0]
    if len(problems) > 12:
        problems = problems[:12] + [f"... and {len(problems) - 12} more"]
    plan = {p["name"]: {"package": p, "files": [], "dirs": [], "units": []} for p in spec["packages"]}
    for path, name in owner.items():
        plan[name]["files"].append(path)
    for package in spec["packages"]:
        entry = plan[package["name"]]
        for key in ("config", "doc"):
            for pattern in package[key]:
                regex = pattern_regex(pattern)
                if not any(regex.match(f) for f in entry["files"]):
                    problems.append(f"spec.packages[{spec['packages'].index(package)}].{key}: {pattern!r} matches no "
                                    f"file of package {package['name']}")
        for path in package["ghost"]:
            if path in owner and owner[path] != package["name"]:
                problems.append(f"spec ghost {path} of {package['name']} is a file of {owner[path]}")
        if package["systemd"]:
            entry["units"] = sorted(os.path.basename(f) for f in entry["files"]
                                    if f.startswith(UNIT_DIRS) and f.endswith(UNIT_SUFFIXES) and "/" not in f.split("systemd/system/", 1)[1])
    # Directories: below the prefix, or not the system's, each owned by one package.
    prefix = (spec["prefix"] or "").strip("/")
    shared_owner = next(p["name"] for p in spec["packages"] if p["owns_shared_dirs"])
    explicit = {d: p["name"] for p in spec["packages"] for d in p["dirs"]}
    for directory in dirs + sorted(set(explicit) - set(dirs)):
        if directory in explicit:
            plan[explicit[directory]]["dirs"].append(directory)
            continue
        under_prefix = prefix and (directory == prefix or directory.startswith(prefix + "/"))
        if not under_prefix and (directory in SYSTEM_DIRS or (prefix and prefix.startswith(directory + "/"))):
            continue
        holders = {n for f, n in owner.items() if f.startswith(directory + "/")}
        plan[holders.pop() if len(holders) == 1 else shared_owner]["dirs"].append(directory)
    if spec["relocatable"]:
        for name, entry in plan.items():
            outside = [f for f in entry["files"] + entry["dirs"] + plan[name]["package"]["ghost"]
                       if not (f == prefix or f.startswith(prefix + "/"))]
            if outside:
                problems.append(f"spec.relocatable: package {name} has paths outside the prefix {spec['prefix']} "
                                f"({', '.join(outside[:3])}); a relocatable package holds only paths below its prefix")
    if problems:
        raise SpecError(problems)
    for entry in plan.values():
        entry["dirs"].sort()
    return plan
