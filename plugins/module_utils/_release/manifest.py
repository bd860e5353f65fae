# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The release manifest: schema, validation with one clear message per wrong field, canonical form.

A release names an application, its version and protocol version, the artifacts it consists of by digest
and how each is installed, the configuration rendered from templates, the services to restart, what a node
needs to run it, and how to tell that it is healthy. It is stored as an OCI artifact holding its canonical
JSON (``release.json``, what nodes read with the standard library) and the YAML it was written in; the
digest of that artifact's manifest is the release id on every node.

Schema version 1 (``docs/releases.md`` documents every field)::

    schema_version: 1
    application: qserv
    version: 1.4.0            # 1.4.0~rc1 sorts before 1.4.0
    protocol: "7"             # clients and servers of different protocols cannot talk
    role: server              # optional; free text (server, client, worker, ...)
    artifacts:
      - name: bin
        reference: registry.example.org/build/qserv-bin@sha256:...
        install: files        # files | extract | squashfs | mount | unpack | rpm
        mount_point: /opt/envs/qserv   # mount and unpack: a link to current/<name> on the node
    configs:
      - source: bin/qserv.conf.in
        dest: etc/qserv.conf
        vars: {port: 7000}
    services: [qserv@current.service]
    requires: {arch: [x86_64], os_family: [debian], disk_mb: 500, memory_mb: 256,
               commands: [tar], kernel: [squashfs]}
    health:
      - {tcp: "${address}:7000", timeout: 5}       # ${address}: the node's address
      - {http: "http://127.0.0.1:7000/health", expect_status: 200, timeout: 5}
      - {command: "/opt/qserv/bin/qserv --check", timeout: 10}
      retries/delay per check
"""

from __future__ import annotations

import json
import posixpath
import re

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import InvalidDocumentError
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import NAME_RE, VERSION_RE, Checker, not_a_string

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import MAX_MANIFEST_SIZE
from ansible_collections.sciops.fleet.plugins.module_utils._release.checks import validate_check
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import KINDS

SCHEMA_VERSION = 1
RELEASE_ARTIFACT_TYPE = "application/vnd.sciops.fleet.release.v1+json"
RELEASE_FILE = "release.json"
# The install kinds (one file each in kinds/); those that take a mount_point are environment images.
INSTALL_KINDS = tuple(KINDS)
IMAGE_KINDS = tuple(name for name, kind in KINDS.items() if kind.takes_mount_point)

_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = ("schema_version", "application", "version", "protocol", "role", "description", "artifacts", "configs",
             "services", "requires", "health")
# Artifact fields of one install kind's own (a machine's settings), checked by that kind.
_KIND_FIELDS = tuple(sorted({field for kind in KINDS.values() for field in kind.fields}))
_ARTIFACT_KEYS = ("name", "reference", "digest", "install", "description", "mount_point") + _KIND_FIELDS
_CONFIG_KEYS = ("source", "dest", "vars", "mode")
_REQUIRES_KEYS = ("arch", "os_family", "disk_mb", "memory_mb", "commands", "kernel")

# A mount point is a link the node creates: never in or under these (the top-level links of a usr-merged system,
# /bin, /lib, /lib64, /sbin, ..., are among them; /var holds the state root, /var/lib/sciops-fleet).
SYSTEM_DIRECTORIES = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found",
                      "/media", "/mnt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var")
# ... except below these, which the system leaves to the site: a site may allow them in mount_point_prefixes.
SITE_DIRECTORIES = ("/usr/local", "/srv")
# Where release_publish lets mount points be, unless the site gives its own list: a mount point lies below one.
DEFAULT_MOUNT_POINT_PREFIXES = ("/opt", "/user-environment", "/apps")
# The largest release.json a node reads (the nodes' limit for manifests and small blobs).
MAX_RELEASE_SIZE = MAX_MANIFEST_SIZE


class ReleaseError(InvalidDocumentError):
    """A release manifest is not valid; the message lists every problem, one per field."""

    def __init__(self, source, problems):
        super().__init__(f"release manifest {source}", problems)


def _relative_path(value):
    parts = value.split("/")
    return bool(value) and not value.startswith("/") and ".." not in parts and "\0" not in value


def _reserved(top):
    """Whether TOP, a name at the top of a release directory, is one the node keeps its records under."""
    return top == RELEASE_FILE or top.startswith(".")


def _below(path, directory):
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _clean_absolute(path):
    """PATH without a trailing '/' when it is absolute and plain (no '..', '.', '//'), else None."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        return None
    path = path.rstrip("/") or "/"
    return path if posixpath.normpath(path) == path else None


def system_directory(path):
    """The system directory PATH (absolute, clean) is, or lies in; None when it is outside them or in a site directory."""
    if path == "/":
        return "/"
    if any(_below(path, site) for site in SITE_DIRECTORIES):
        return None
    return next((system for system in SYSTEM_DIRECTORIES if _below(path, system)), None)


def check_mount_point_prefixes(prefixes, option="mount_point_prefixes"):
    """The clean PREFIXES, or raise OciError naming each one that is not an absolute path outside the system
    directories (those below /usr/local and /srv are allowed)."""
    clean, problems = [], []
    for prefix in prefixes:
        path = _clean_absolute(prefix)
        system = path and system_directory(path)
        if path is None:
            problems.append(f"{prefix!r} must be an absolute path without '..', '.' or '//', e.g. /opt")
        elif system or path in SITE_DIRECTORIES:
            system = system or path
            problems.append(f"{prefix!r} is {'in ' if system != path else ''}the system directory {system}; "
                            f"name a directory of the site's own, e.g. /opt, /user-environment, /usr/local/envs")
        else:
            clean.append(path)
    if problems:
        raise OciError(f"{option}: " + "; ".join(problems))
    return clean


def mount_point_problem(mount_point, prefixes=None):
    """Why MOUNT_POINT (clean, absolute) may not be a mount point, or None. It may never be a system directory, in
    one, or a top-level directory; with PREFIXES (release_publish's allow-list) it must also lie below one of them."""
    system = system_directory(mount_point)
    if system:
        return (f"{mount_point!r} is {'in ' if system != mount_point else ''}the system directory {system}, which a "
                "release may never replace; choose a path of its own such as /opt/envs/<application>")
    if mount_point.count("/") < 2 or mount_point in SITE_DIRECTORIES:
        return (f"{mount_point!r} is a top-level directory, which a release may never replace; "
                "choose a path below it such as /opt/envs/<application>")
    if prefixes is not None and not any(mount_point.startswith(prefix + "/") for prefix in prefixes):
        return (f"{mount_point!r} is not below an allowed mount point prefix ({', '.join(prefixes)}); choose a path "
                "below one of them, or add the site's prefix to release_publish's mount_point_prefixes")
    return None


def validate_release(data, source="(given)", mount_point_prefixes=None):
    """Validate a parsed release manifest; return its canonical dict or raise ReleaseError listing every problem.

    The canonical dict is itself a valid manifest (defaults filled in, artifact digests spelled out), so a node
    validates what it reads with the same rules. MOUNT_POINT_PREFIXES (clean, see check_mount_point_prefixes) is the
    site's allow-list for mount points, which release_publish applies; a node, which does not know it, applies the
    rest of the mount point rule (never a system directory).
    """
    check = Checker()
    if not isinstance(data, dict):
        raise ReleaseError(source, [f"the document must be a mapping of fields, not {type(data).__name__}"])
    check.keys(data, _TOP_KEYS, "")
    schema = data.get("schema_version")
    if schema != SCHEMA_VERSION:
        check.add("schema_version", f"must be {SCHEMA_VERSION} (this collection reads schema version {SCHEMA_VERSION}), not {schema!r}")
    release = {"schema_version": SCHEMA_VERSION}
    release["application"] = check.string(data, "application", "application", NAME_RE,
                                          " (lower-case letters, digits, '.', '_', '-'; at most 63)")
    release["version"] = check.string(data, "version", "version", VERSION_RE,
                                      " (start with a digit; letters, digits, '.', '+', '~', '_', '-'; e.g. 1.4.0 or 1.4.0~rc1)")
    release["protocol"] = check.string(data, "protocol", "protocol", re.compile(r"^[0-9A-Za-z._-]{1,32}$"),
                                       " (a short protocol or ABI version such as 7 or 2024.1)")
    release["role"] = check.string(data, "role", "role", NAME_RE, " (e.g. server, client)", required=False) or "default"
    if data.get("description") is not None:
        release["description"] = check.string(data, "description", "description") or ""

    artifacts, names = [], set()
    for index, item in check.mapping_list(data, "artifacts", "artifacts", required=True):
        field = f"artifacts[{index}]"
        check.keys(item, _ARTIFACT_KEYS, field)
        name = check.string(item, "name", f"{field}.name", NAME_RE, " (lower-case letters, digits, '.', '_', '-')")
        if name in names:
            check.add(f"{field}.name", f"{name!r} is used by another artifact; names must be unique")
        if name and _reserved(name):
            check.add(f"{field}.name", f"{name!r} is reserved for the release's own record; choose another name")
        names.add(name)
        reference = check.string(item, "reference", f"{field}.reference")
        digest = None
        if reference:
            try:
                parsed = parse_reference(reference)
                digest = parsed.digest
                if not digest:
                    check.add(f"{field}.reference", f"{reference!r} names no digest; write REGISTRY/REPOSITORY@sha256:... "
                              "so that every node installs the same bytes")
            except OciError as exc:
                check.add(f"{field}.reference", str(exc))
        if item.get("digest") is not None and item.get("digest") != digest:
            check.add(f"{field}.digest", f"{item.get('digest')!r} differs from the digest in the reference; give the digest once, in the reference")
        install = item.get("install", "files")
        if install not in INSTALL_KINDS:
            check.add(f"{field}.install", f"{install!r} is not one of {', '.join(INSTALL_KINDS)}")
        entry = {"name": name, "reference": reference, "digest": digest, "install": install}
        mount_point = item.get("mount_point")
        if mount_point is not None:
            if install not in IMAGE_KINDS:
                check.add(f"{field}.mount_point", f"only an environment image has a mount point; set install to "
                          f"{' or '.join(IMAGE_KINDS)}, or remove mount_point")
            elif _clean_absolute(mount_point) is None:
                check.add(f"{field}.mount_point", f"{mount_point!r} must be an absolute path of its own, without '..', "
                          "'.' or '//', such as the image's mount (meta/env.json), e.g. /opt/envs/qserv")
            elif mount_point_problem(_clean_absolute(mount_point), mount_point_prefixes):
                check.add(f"{field}.mount_point", mount_point_problem(_clean_absolute(mount_point), mount_point_prefixes))
            else:
                # Only when given: releases written without it keep their canonical form, hence their id.
                entry["mount_point"] = _clean_absolute(mount_point)
        kind = KINDS.get(install)
        for key in _KIND_FIELDS:
            if item.get(key) is not None and (kind is None or key not in kind.fields):
                check.add(f"{field}.{key}", f"belongs to install kinds {', '.join(n for n, k in KINDS.items() if key in k.fields)}, "
                          f"not {install!r}; set install accordingly, or remove {key}")
        if kind is not None:
            release["artifacts"] = artifacts
            entry.update(kind.validate(check, item, field, release))
        artifacts.append(entry)
    release["artifacts"] = artifacts

    configs, dests = [], set()
    for index, item in check.mapping_list(data, "configs", "configs"):
        field = f"configs[{index}]"
        check.keys(item, _CONFIG_KEYS, field)
        entry = {}
        for key in ("source", "dest"):
            value = check.string(item, key, f"{field}.{key}")
            if value is not None and not _relative_path(value):
                check.add(f"{field}.{key}", f"{value!r} must be a relative path inside the release, without '..'")
            elif key == "dest" and value is not None and _reserved(value.split("/")[0]):
                check.add(f"{field}.dest", f"{value!r} would overwrite the node's own records of the release ({RELEASE_FILE} "
                                           "and names starting with '.' at its top are reserved); write it below an "
                                           "artifact's directory or under another name")
            entry[key] = value
        if entry.get("source") and entry["source"].split("/")[0] not in names:
            check.add(f"{field}.source", f"{entry['source']!r} must start with the name of an artifact ({', '.join(sorted(n for n in names if n))})")
        if entry.get("dest") in dests:
            check.add(f"{field}.dest", f"{entry['dest']!r} is written by another config")
        dests.add(entry.get("dest"))
        variables = item.get("vars") or {}
        if not isinstance(variables, dict) or not all(isinstance(k, str) and _VAR_RE.match(k) for k in variables):
            check.add(f"{field}.vars", "must be a mapping of variable names (letters, digits, '_') to values")
            variables = {}
        for key, value in variables.items():
            # What YAML read is no longer what was written: 010 is 8, 0x1F is 31, 1.10 is 1.1, yes is True.
            if not isinstance(value, str):
                check.add(f"{field}.vars.{key}", not_a_string(value))
        entry["vars"] = {k: str(v) for k, v in variables.items()}
        mode = item.get("mode", "0644")
        if not isinstance(mode, str) or not re.match(r"^0?[0-7]{3}$", mode):
            check.add(f"{field}.mode", f"{mode!r} must be an octal mode written as a string, e.g. '0640'")
            mode = "0644"
        entry["mode"] = mode if len(mode) == 4 else "0" + mode
        configs.append(entry)
    release["configs"] = configs

    release["services"] = check.string_list(data, "services", "services")
    for index, unit in enumerate(release["services"]):
        if not re.match(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|mount|target)$", unit):
            check.add(f"services[{index}]", f"{unit!r} is not a systemd unit name such as app@current.service")

    requires = data.get("requires") or {}
    if not isinstance(requires, dict):
        check.add("requires", "must be a mapping")
        requires = {}
    check.keys(requires, _REQUIRES_KEYS, "requires")
    release["requires"] = {
        "arch": check.string_list(requires, "arch", "requires.arch"),
        "os_family": [v.lower() for v in check.string_list(requires, "os_family", "requires.os_family")],
        "disk_mb": check.number(requires, "disk_mb", "requires.disk_mb") or 0,
        "memory_mb": check.number(requires, "memory_mb", "requires.memory_mb") or 0,
        "commands": check.string_list(requires, "commands", "requires.commands"),
        "kernel": check.string_list(requires, "kernel", "requires.kernel"),
    }

    health = []
    for index, item in check.mapping_list(data, "health", "health"):
        entry = validate_check(check, item, f"health[{index}]")
        if entry is not None:
            health.append(entry)
    release["health"] = health

    if check.problems:
        raise ReleaseError(source, check.problems)
    return release


def canonical_json(release):
    """The bytes nodes read: sorted keys, no white space, so equal releases have equal digests."""
    return json.dumps(release, sort_keys=True, separators=(",", ":")).encode("utf-8")


def release_document(release, source="(given)"):
    """canonical_json(RELEASE), or ReleaseError when it is larger than a node reads (MAX_RELEASE_SIZE)."""
    document = canonical_json(release)
    if len(document) > MAX_RELEASE_SIZE:
        raise ReleaseError(source, [f"{RELEASE_FILE} would be {len(document)} bytes ({len(document) / 1048576:.1f} MiB), "
                                    f"more than the {MAX_RELEASE_SIZE} bytes ({MAX_RELEASE_SIZE // 1048576} MiB) a node "
                                    "reads; make descriptions and config vars smaller, or ship large data as an artifact"])
    return document


def release_dir_name(release, digest):
    """``<version>-<first 12 hex of the release digest>``: readable, and unique per release id."""
    return f"{release['version']}-{digest.split(':', 1)[1][:12]}"
