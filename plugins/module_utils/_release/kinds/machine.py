# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``machine``: the artifact is a root file system (a squashfs or tar image, or an OCI image whose
layers are applied in order, whiteouts honoured), unpacked into ``<release>/<artifact>/`` like every tree; the
release runs it as a systemd-nspawn machine per slot, ``<application>-current`` and ``<application>-oldstable``.

The artifact's ``machine`` field declares how (see docs/services.md)::

    machine:
      command: [/usr/bin/server, --port, "${port}"]   # or boot: true (the image's init)
      environment: {LOG_LEVEL: info, PORT: "${port}"}
      slots: {current: {port: "8301"}, oldstable: {port: "8302"}}   # ${name} per slot
      binds: [{source: etc/server.conf, dest: /etc/server.conf}]   # from the release, read-only
      data: /var/lib/server        # the node's data directory of the application, kept across releases
      network: host                # host (default), private, or veth with ports
      ports: ["tcp:${port}:8300"]  # veth only
      limits: {memory: 512M, cpu: 150%, tasks: 256}
      capabilities: [CAP_NET_RAW]  # kept from those a command machine drops by default
      health:                      # command: inside the machine; tcp/http: from the node
        - {command: "test -s /var/lib/server/ready"}
        - {http: "http://${address}:${port}/health"}

A slot's machine runs the tree of the release the slot points to (``systemd-nspawn --directory=<release>/<artifact>``
in a drop-in of ``systemd-nspawn@<machine>.service``, settings in ``/etc/systemd/nspawn/<machine>.nspawn``), with a
read-only root: the release's files stay as installed, so drift sees any change. ``converge`` (after every switch)
starts oldstable's machine before current's is restarted, and stops and removes a machine whose slot is empty; the
kind's health check fails while a slot's machine is not running what the slot points to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import not_a_string
from ansible_collections.sciops.fleet.plugins.module_utils._release.checks import health_kind, validate_check
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Artifact, Placement, Release
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.image import ImageKind
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MachineError, UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.machine_image import apply_layers
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import (
    ENABLED_STATES,
    STATE_PROPERTIES,
    RestartRecord,
    start_and_check,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.mount import node_systemd
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.nspawn import quote_arg, settings_sections, unit_name
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import read_text
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import render_sections, text_digest

SLOT_ORDER = ("oldstable", "current")  # oldstable's machine runs before current's is restarted
SETTINGS_DIR = "/etc/systemd/nspawn"
MACHINES_DIR = "/var/lib/machines"
UNIT_DIR = "/etc/systemd/system"
DROPIN_NAME = "50-sciops-fleet.conf"
HEADER = "# Managed by sciops.fleet (install: machine); the next switch overwrites local changes."
START_SETTLE = 2.0
JOURNAL_LINES = 15
# What a command machine drops of systemd-nspawn's default capabilities unless the release keeps some.
DROPPED_CAPABILITIES = ("CAP_AUDIT_CONTROL", "CAP_IPC_OWNER", "CAP_LEASE", "CAP_LINUX_IMMUTABLE", "CAP_MKNOD",
                        "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
                        "CAP_SYS_NICE", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE", "CAP_SYS_TTY_CONFIG")
BUILTIN_VARIABLES = ("application", "version", "slot", "machine")
# The machine's root file system is <release>/<artifact>/root, in a directory only root may enter: the image's own
# setuid programs and modes are the machine's, never the node's users'.
TREE = "root"
# null, zero, full, random, urandom, tty, console, ptmx: what an OS tree's /dev may hold (major, minor).
HARMLESS_DEVICES = ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2))

_KEYS = ("boot", "command", "environment", "slots", "binds", "data", "network", "ports", "limits", "capabilities",
         "volatile", "health")
_VARIABLE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An application whose machines are named <application>-oldstable: a machine name has at most 64 characters.
_APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,53}$")  # a host name: systemd-nspawn refuses '_' and long names
_PLAIN_PATH_RE = re.compile(r"^[A-Za-z0-9_@%+=,./-]+$")
_PORT_RE = re.compile(r"^((tcp|udp):)?[0-9]{1,5}(:[0-9]{1,5})?$")
# Each above zero: systemd ignores CPUQuota=0%, MemoryMax=0 and TasksMax=0, and the machine would run without a limit.
_LIMITS = {"memory": ("MemoryMax", re.compile(r"^[1-9][0-9]*[KMGT]?$|^[1-9][0-9]{0,2}%$"),
                      "bytes above zero with K, M, G or T, or a percentage, e.g. 512M"),
           "cpu": ("CPUQuota", re.compile(r"^[1-9][0-9]{0,4}%$"), "a percentage of one CPU above zero, e.g. 150%"),
           "tasks": ("TasksMax", re.compile(r"^[1-9][0-9]{0,6}$"), "a number of processes and threads above zero, e.g. 256")}


def machine_name(app: str, slot: str) -> str:
    return f"{app}-{slot}"


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """TEXT with each ``${name}`` replaced; validation made sure every name is known."""
    return _VARIABLE_RE.sub(lambda match: variables[match.group(1)], text)


def _clean_path(value: str) -> bool:
    """An absolute path without '..', '.', '//', white space or ':' (a bind's separator)."""
    return value.startswith("/") and value != "/" and os.path.normpath(value) == value and bool(_PLAIN_PATH_RE.match(value))


class _Validation:
    """The checks of one artifact's ``machine`` field; problems go to the manifest's Checker."""

    def __init__(self, check: Any, field: str) -> None:
        self.check = check
        self.field = field
        self.variables = set(BUILTIN_VARIABLES)

    def text(self, value: Any, where: str, extra: Tuple[str, ...] = ()) -> Optional[str]:
        if not isinstance(value, str):
            self.check.add(where, not_a_string(value))
            return None
        if "\n" in value or "\0" in value or "\r" in value:
            self.check.add(where, f"{value!r} has a line break or NUL")
            return None
        unknown = sorted(set(_VARIABLE_RE.findall(value)) - self.variables - set(extra))
        if unknown:
            known = ", ".join(sorted(self.variables | set(extra)))
            self.check.add(where, f"uses ${{{unknown[0]}}}, which is neither built in nor given for every slot in "
                                  f"slots (known: {known})")
            return None
        return value

    def word(self, value: Any, where: str) -> Optional[str]:
        """VALUE as text that a .nspawn setting carries as one word, unchanged."""
        if self.text(value, where) is None:
            return None
        try:
            quote_arg(value)
        except MachineError as exc:
            self.check.add(where, str(exc).split(": ", 1)[1])
            return None
        return value

    def mapping(self, data: Mapping[str, Any], key: str) -> Dict[str, Any]:
        value = data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.check.add(f"{self.field}.{key}", "must be a mapping")
            return {}
        return value

    def listing(self, data: Mapping[str, Any], key: str) -> List[Any]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.check.add(f"{self.field}.{key}", "must be a list")
            return []
        return value


def validate_machine(check: Any, data: Any, field: str, application: Optional[str]) -> Dict[str, Any]:
    """The canonical ``machine`` settings from DATA (at FIELD), problems added to CHECK."""
    if not isinstance(data, dict):
        check.add(field, "is required for install: machine: a mapping with command (or boot: true) and the "
                         "machine's settings")
        return {}
    check.keys(data, _KEYS, field)
    v = _Validation(check, field)
    if application and not _APP_RE.match(application):
        check.add("application", f"{application!r} names machines {application}-current and {application}-oldstable: "
                                 "use at most 54 lower-case letters, digits and '-' (no '_' or '.': a machine name is a host name) "
                                 "for install: machine")
    out: Dict[str, Any] = {}
    slots = v.mapping(data, "slots")
    if slots:
        if sorted(slots) != ["current", "oldstable"]:
            check.add(f"{field}.slots", "must give values for both slots, current and oldstable")
        names = [set(values) if isinstance(values, dict) else None for values in slots.values()]
        if None in names or len({frozenset(n) for n in names if n is not None}) > 1:
            check.add(f"{field}.slots", "each slot must be a mapping with the same variable names, e.g. "
                                        "{current: {port: \"8301\"}, oldstable: {port: \"8302\"}}")
        else:
            for slot, values in slots.items():
                for key, value in values.items():
                    if not isinstance(key, str) or not _VAR_NAME_RE.match(key) or key in BUILTIN_VARIABLES:
                        check.add(f"{field}.slots.{slot}", f"{key!r} is not a variable name of its own "
                                                           f"(letters, digits, '_'; not {', '.join(BUILTIN_VARIABLES)})")
                    elif v.text(value, f"{field}.slots.{slot}.{key}", ()) is not None and \
                            (_VARIABLE_RE.search(value) or any(c in value for c in "'\"\\")):
                        check.add(f"{field}.slots.{slot}.{key}", f"{value!r}: a slot's value is plain text, without "
                                                                 "${...}, quotes or backslashes")
            v.variables |= set(next(iter(slots.values())) or ())
            out["slots"] = {slot: {k: str(x) for k, x in values.items()} for slot, values in slots.items()}
    boot = data.get("boot", False)
    if not isinstance(boot, bool):
        check.add(f"{field}.boot", f"must be true or false, not {boot!r}")
        boot = False
    out["boot"] = boot
    command = v.listing(data, "command")
    if boot and command:
        check.add(f"{field}.command", "is the program to run instead of booting; remove it, or set boot: false")
    elif not boot and not command:
        check.add(f"{field}.command", "is required unless boot: true: the program the machine runs, as a list, e.g. "
                                      "[/usr/bin/server, --port, \"${port}\"]")
    out["command"] = [arg for index, arg in enumerate(command) if v.word(arg, f"{field}.command[{index}]") is not None]
    if command and not str(command[0]).startswith("/"):
        check.add(f"{field}.command[0]", f"{command[0]!r} must be an absolute path inside the machine")
    environment = {}
    for key, value in v.mapping(data, "environment").items():
        if not isinstance(key, str) or not _VAR_NAME_RE.match(key):
            check.add(f"{field}.environment", f"{key!r} is not an environment variable name")
        elif v.word(value, f"{field}.environment.{key}") is not None:
            environment[key] = value
    out["environment"] = environment
    binds = []
    for index, bind in enumerate(v.listing(data, "binds")):
        where = f"{field}.binds[{index}]"
        if not isinstance(bind, dict) or sorted(bind) != ["dest", "source"]:
            check.add(where, "must be a mapping with source (a path in the release) and dest (an absolute path in "
                             "the machine)")
            continue
        source, dest = bind["source"], bind["dest"]
        if not isinstance(source, str) or source.startswith("/") or not _clean_path("/" + source):
            check.add(f"{where}.source", f"{source!r} must be a relative path inside the release, without '..', "
                                         "white space or ':', e.g. etc/server.conf")
        elif source.split("/")[0] == "release.json" or source.startswith("."):
            check.add(f"{where}.source", f"{source!r} is the node's own record of the release")
        elif not isinstance(dest, str) or not _clean_path(dest):
            check.add(f"{where}.dest", f"{dest!r} must be an absolute path in the machine, without '..', white space or ':'")
        else:
            binds.append({"source": source, "dest": dest})
    out["binds"] = binds
    if data.get("data") is not None:
        if not isinstance(data["data"], str) or not _clean_path(data["data"]):
            check.add(f"{field}.data", f"{data['data']!r} must be an absolute path in the machine (where the node's data "
                                       "directory of the application appears), e.g. /var/lib/server")
        else:
            out["data"] = data["data"]
    network = data.get("network", "host")
    if network not in ("host", "private", "veth"):
        check.add(f"{field}.network", f"{network!r} is not one of host, private, veth")
    out["network"] = network
    ports = [port for index, port in enumerate(v.listing(data, "ports")) if v.text(port, f"{field}.ports[{index}]")]
    if ports and network != "veth":
        check.add(f"{field}.ports", "forward ports into a machine's own network: they need network: veth")
    for index, port in enumerate(ports):
        for slot, values in (out.get("slots") or {"current": {}}).items():
            text = _VARIABLE_RE.sub(lambda match, v=values: v.get(match.group(1), "?"), port)
            if not _PORT_RE.match(text):
                check.add(f"{field}.ports[{index}]", f"{port!r} is {text!r} in slot {slot}, not [tcp:|udp:]HOST_PORT[:MACHINE_PORT]")
                break
    out["ports"] = ports
    limits = {}
    for key, value in v.mapping(data, "limits").items():
        if key not in _LIMITS:
            check.add(f"{field}.limits.{key}", f"unknown limit; the known ones are {', '.join(_LIMITS)}")
        elif not isinstance(value, (str, int)) or isinstance(value, bool) or not _LIMITS[key][1].match(str(value)):
            check.add(f"{field}.limits.{key}", f"{value!r} is not {_LIMITS[key][2]}")
        else:
            limits[key] = str(value)
    out["limits"] = limits
    capabilities = []
    for index, name in enumerate(v.listing(data, "capabilities")):
        if name not in DROPPED_CAPABILITIES:
            check.add(f"{field}.capabilities[{index}]", f"{name!r} is not one of the capabilities a command machine drops "
                                                        f"({', '.join(DROPPED_CAPABILITIES)}); the others it keeps")
        else:
            capabilities.append(name)
    out["capabilities"] = sorted(set(capabilities))
    volatile = data.get("volatile", "no")
    if volatile not in ("no", "overlay"):
        check.add(f"{field}.volatile", f"{volatile!r} is not no (a read-only root) or overlay (writes kept in memory "
                                       "until the machine stops)")
    out["volatile"] = volatile
    health = []
    for index, item in check.mapping_list(data, "health", f"{field}.health"):
        entry = validate_check(check, item, f"{field}.health[{index}]", port_variable=True)
        if entry is not None and v.text(health_kind(entry)[1], f"{field}.health[{index}]", ("address",)) is not None:
            health.append(entry)
    out["health"] = health
    return out


def refuse_devices(tree: str, what: str) -> None:
    """Refuse a device node in TREE other than the harmless ones an OS tree's /dev may hold: a machine gets its devices
    from systemd-nspawn, and a disk's or memory's node in a release would be open to whoever reaches it on the host."""
    for base, dirs, names in os.walk(tree):
        for entry in dirs + names:
            path = os.path.join(base, entry)
            info = os.lstat(path)
            if stat.S_ISBLK(info.st_mode) or (stat.S_ISCHR(info.st_mode) and
                                              (os.major(info.st_rdev), os.minor(info.st_rdev)) not in HARMLESS_DEVICES):
                raise NodeError(f"{what}: {os.path.relpath(path, tree)} is a {'block' if stat.S_ISBLK(info.st_mode) else 'character'} "
                                f"device node ({os.major(info.st_rdev)}:{os.minor(info.st_rdev)}); a machine's image may hold "
                                "only null, zero, full, random, urandom, tty, console and ptmx; remove it from the image")


def machine_artifact(release: Optional[Release]) -> Optional[Artifact]:
    """The artifact of RELEASE installed as a machine, if any."""
    return next((a for a in (release or {}).get("artifacts") or [] if a.get("install") == "machine"), None)


def slot_variables(release: Release, artifact: Artifact, slot: str) -> Dict[str, str]:
    settings = artifact["machine"]
    variables = dict((settings.get("slots") or {}).get(slot) or {})
    variables.update(application=release["application"], version=release["version"], slot=slot,
                     machine=machine_name(release["application"], slot))
    return variables


def _read_release(state: Any, name: Optional[str]) -> Optional[Release]:
    if not name:
        return None
    try:
        with open(os.path.join(state.release_path(name), "release.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _bind_source(release_dir: str, source: str, machine: str) -> str:
    """The host path of a bind's SOURCE in the release: refused when it is missing or a link leads anywhere on the
    way (an image's absolute links would otherwise hand the host's files to the machine)."""
    path = os.path.join(release_dir, source)
    if not os.path.lexists(path):
        raise MachineError(f"machine {machine}: bind source {source} is not in the release {release_dir}")
    if os.path.realpath(path) != os.path.join(os.path.realpath(release_dir), source):
        raise MachineError(f"machine {machine}: bind source {source} in {release_dir} is or passes through a symbolic "
                           "link; a machine binds only real files of its release")
    return path


def data_dir(state: Any) -> str:
    """The node's data directory of the application: kept across releases, upgrades, rollbacks and prunes."""
    return os.path.join(os.path.dirname(state.app_dir), "_data", state.app)


def desired_files(state: Any, release: Release, name: str, slot: str) -> Tuple[str, str]:
    """``(settings text, drop-in text)`` of SLOT's machine running release NAME."""
    artifact = machine_artifact(release)
    settings = artifact["machine"]
    machine = machine_name(state.app, slot)
    release_dir = state.release_path(name)
    variables = slot_variables(release, artifact, slot)
    binds = [f"{_bind_source(release_dir, b['source'], machine)}:{b['dest']}" for b in settings["binds"]]
    params = {
        "boot": settings["boot"], "command": [substitute(arg, variables) for arg in settings["command"]],
        "capabilities": [], "environment": {k: substitute(x, variables) for k, x in settings["environment"].items()},
        "drop_capabilities": [] if settings["boot"] else
        [c for c in DROPPED_CAPABILITIES if c not in settings["capabilities"]],
        "read_only": settings["volatile"] == "no", "volatile": None if settings["volatile"] == "no" else "overlay",
        "bind": [f"{data_dir(state)}:{settings['data']}"] if settings.get("data") else [], "bind_ro": binds,
        "network": settings["network"], "ports": [substitute(p, variables) for p in settings["ports"]],
        "private_users": "no", "settings": {} if settings["boot"] else {"Exec": {"NoNewPrivileges": True}},
    }
    params["environment"].update(SCIOPS_SLOT=slot, SCIOPS_VERSION=release["version"])
    sections = settings_sections(params)
    text = render_sections(sections, [s for s in ("Exec", "Files", "Network") if s in sections], HEADER)
    tree = os.path.join(release_dir, artifact["name"], TREE)
    nspawn = shutil.which("systemd-nspawn") or "/usr/bin/systemd-nspawn"
    argv = [nspawn, "--quiet", "--keep-unit", "--link-journal=no", "--settings=override", f"--machine={machine}",
            f"--directory={tree}"]
    # In a unit file % starts a specifier and $ a variable: both are written doubled.
    service = ["ExecStart=", "ExecStart=" + " ".join(quote_arg(arg.replace("%", "%%").replace("$", "$$")) for arg in argv)]
    service += [f"{_LIMITS[key][0]}={value}" for key, value in sorted(settings["limits"].items())]
    dropin = "\n".join([HEADER, f"# {release['application']} {release['version']} ({name}) in slot {slot}", "",
                        "[Service]", *service]) + "\n"
    return text, dropin


class _Machine:
    """The files and unit of one slot's machine on this node."""

    def __init__(self, state: Any, slot: str, systemd: Any) -> None:
        self.slot = slot
        self.systemd = systemd
        self.name = machine_name(state.app, slot)
        self.unit = unit_name(self.name)
        self.settings_path = os.path.join(SETTINGS_DIR, self.name + ".nspawn")
        self.dropin_path = os.path.join(UNIT_DIR, self.unit + ".d", DROPIN_NAME)
        self.record = RestartRecord(os.path.join(os.path.dirname(state.app_dir), "_units"), self.unit)

    def ours(self) -> bool:
        """Whether this machine's files are the kind's own (a machine of the same name made otherwise is not)."""
        texts = [read_text(path) for path in (self.settings_path, self.dropin_path)]
        return any(t is not None for t in texts) and all(t is None or t.startswith(HEADER) for t in texts)

    def foreign(self, props: Mapping[str, str]) -> Optional[str]:
        """Why a machine of this name is someone else's (made by hand, by nspawn_container, by machinectl), or None."""
        for path in (self.settings_path, self.dropin_path):
            text = read_text(path)
            if text is not None and not text.startswith(HEADER):
                return f"{path} was not written by this collection"
        if read_text(self.dropin_path) is None and props.get("ActiveState") in ("active", "activating", "reloading"):
            return f"{self.unit} runs, started otherwise than by this collection"
        if os.path.lexists(os.path.join(MACHINES_DIR, self.name)):
            return f"{os.path.join(MACHINES_DIR, self.name)} is a machine image of that name"
        return None

    def state(self) -> Dict[str, str]:
        return self.systemd.show(self.unit, STATE_PROPERTIES + ("ExecMainStartTimestampMonotonic",))

    def runs(self, settings: str, dropin: str, props: Mapping[str, str]) -> bool:
        """Whether the machine runs with SETTINGS and DROPIN: active, both files on disk as they should be and loaded,
        and started with them: by this kind (its InvocationID recorded then), or after both were last written (a
        reboot, a restart by hand). Read from the node, so a start whose result was lost is found out."""
        if props.get("ActiveState") != "active" or props.get("NeedDaemonReload") == "yes":
            return False
        if read_text(self.settings_path) != settings or read_text(self.dropin_path) != dropin:
            return False
        if props.get("InvocationID") and self.record.data.get("invocation") == props.get("InvocationID") and \
                self.record.data.get("unit") == text_digest(settings + dropin):
            return True
        try:
            started_us = int(props.get("ExecMainStartTimestampMonotonic") or 0)
            written = max(os.stat(path).st_mtime for path in (self.settings_path, self.dropin_path))
        except (ValueError, OSError):
            return False
        # systemd's monotonic clock is Python's: the start as wall-clock time, to set against the files' times.
        return started_us > 0 and time.time() - (time.monotonic() - started_us / 1e6) > written

    def remove(self) -> None:
        self.systemd.ctl("disable", "--now", "--", self.unit, check=False)
        for path in (self.settings_path, self.dropin_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.dropin_path))
        self.record.remove()
        self.systemd.ctl("daemon-reload", check=False)
        self.systemd.ctl("reset-failed", "--", self.unit, check=False)


class MachineKind(ImageKind):
    name = "machine"
    takes_mount_point = False
    fields = ("machine",)
    pull_layers = True
    commands = ("systemd-nspawn", "machinectl", "nsenter")

    def validate(self, check: Any, item: Artifact, field: str, release: Release) -> Dict[str, Any]:
        if any(a.get("install") == "machine" for a in release.get("artifacts") or []):
            check.add(f"{field}.install", "a release runs one machine per slot: only one artifact may be install: machine")
        return {"machine": validate_machine(check, item.get("machine"), f"{field}.machine", release.get("application"))}

    def place(self, job: Placement, artifact: Artifact, pulled: List[Dict[str, Any]], where: str) -> None:
        layers = [f for f in pulled if f.get("layer") is not None]
        if not layers:
            super().place(job, artifact, pulled, where)  # a squashfs or tar image, unpacked
        else:
            if len(layers) != len(pulled):
                others = ", ".join(f["name"] for f in pulled if f.get("layer") is None)
                raise NodeError(f"artifact {artifact['name']} ({where}) is an OCI image with files beside its layers "
                                f"({others}); a machine's image holds layers only")
            dest = job.dest(artifact)
            tree = tempfile.mkdtemp(prefix=f".{artifact['name']}.tree-", dir=job.staging)
            try:
                apply_layers([(f["path"], f"layer {f['layer']} ({f['digest']})") for f in
                              sorted(layers, key=lambda f: f["layer"])], tree, f"artifact {artifact['name']} ({where})")
                shutil.rmtree(dest)
                os.rename(tree, dest)
            except MachineError as exc:
                raise NodeError(str(exc)) from None
            finally:
                shutil.rmtree(tree, ignore_errors=True)
        dest = job.dest(artifact)
        refuse_devices(dest, f"artifact {artifact['name']} ({where})")
        # An OS tree's root is traversable by the machine's unprivileged users; the directory around it is root's.
        os.chmod(dest, 0o755)
        wrapper = tempfile.mkdtemp(prefix=f".{artifact['name']}.machine-", dir=job.staging)  # mode 0700
        os.rename(dest, os.path.join(wrapper, TREE))
        os.rename(wrapper, dest)

    def converge(self, state: Any, slots: Dict[str, Optional[str]], check_mode: bool = False) -> Dict[str, Any]:
        if not _APP_RE.match(state.app):
            return {}
        systemd = None
        steps = []
        for slot in SLOT_ORDER:
            name = slots.get(slot)
            release = _read_release(state, name)
            artifact = machine_artifact(release)
            if artifact is None and not any(os.path.exists(p) for p in (
                    os.path.join(SETTINGS_DIR, f"{machine_name(state.app, slot)}.nspawn"),
                    os.path.join(UNIT_DIR, unit_name(machine_name(state.app, slot)) + ".d", DROPIN_NAME))):
                continue
            systemd = systemd or node_systemd()
            machine = _Machine(state, slot, systemd)
            steps.append(self._converge_one(state, machine, name, release if artifact else None, check_mode))
        return {"machines": steps} if steps else {}

    def _converge_one(self, state: Any, machine: _Machine, name: Optional[str], release: Optional[Release],
                      check_mode: bool) -> Dict[str, Any]:
        step = {"machine": machine.name, "slot": machine.slot, "unit": machine.unit, "release": name if release else None,
                "version": release["version"] if release else None, "action": "unchanged", "ok": True}
        if release is None:  # the slot is empty or runs no machine: the kind's machine of this slot goes
            if machine.ours():
                step["action"] = "removed"
                if not check_mode:
                    machine.remove()
            return step
        props = machine.state()
        reason = machine.foreign(props)
        if reason:
            error = f"{reason}: machine {machine.name} is someone else's and is left as it is; remove it, or rename the application"
            step.update(ok=False, action="refused", error=error)
            return step
        try:
            settings, dropin = desired_files(state, release, name, machine.slot)
        except (MachineError, UnitError) as exc:
            step.update(ok=False, action="refused", error=str(exc))
            return step
        digest = text_digest(settings + dropin)
        if machine.runs(settings, dropin, props):
            return step
        step["action"] = "restarted" if props.get("ActiveState") in ("active", "activating", "reloading") else "started"
        if check_mode:
            return step
        os.makedirs(SETTINGS_DIR, mode=0o755, exist_ok=True)
        os.makedirs(os.path.dirname(machine.dropin_path), mode=0o755, exist_ok=True)
        if release and machine_artifact(release)["machine"].get("data"):
            os.makedirs(data_dir(state), mode=0o750, exist_ok=True)
        atomic_write(machine.settings_path, settings.encode(), mode=0o644)
        atomic_write(machine.dropin_path, dropin.encode(), mode=0o644)
        systemd = machine.systemd
        systemd.daemon_reload()
        if systemd.is_enabled(machine.unit) not in ENABLED_STATES:
            systemd.ctl("enable", "--", machine.unit, "machines.target", check=False)
        try:
            props = start_and_check(systemd, machine.unit, "restart", START_SETTLE, JOURNAL_LINES)
        except UnitError as exc:
            machine.record.remove()
            step.update(ok=False, error=str(exc), journal=exc.details.get("journal") or [])
            return step
        machine.record.save(digest, {}, invocation=props.get("InvocationID"))
        return step

    def health(self, state: Any, release: Release, slot: str, variables: Dict[str, str],
               run_checks: Callable[[Release, Dict[str, str]], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        artifact = machine_artifact(release)
        machine = _Machine(state, slot, node_systemd())
        name = state.slot_target(slot)
        check = {"name": f"machine {machine.name} runs {release['version']}", "attempts": 1}
        props = machine.state()
        try:
            settings, dropin = desired_files(state, release, name, slot)
        except (MachineError, UnitError) as exc:
            return [dict(check, ok=False, detail=str(exc))]
        if props.get("ActiveState") != "active":
            journal = machine.systemd.journal(machine.unit, 5)
            detail = f"{machine.unit} is {props.get('ActiveState', 'unknown')} ({props.get('Result', '?')})"
            results = [dict(check, ok=False, detail=detail + ("; journal: " + " | ".join(journal) if journal else ""))]
            return results + [{"name": c["name"], "ok": False, "attempts": 0, "detail": f"not run: {detail}"}
                              for c in artifact["machine"]["health"]]
        if not machine.runs(settings, dropin, props):
            return [dict(check, ok=False, detail=f"{machine.unit} runs, but not what {slot} points to ({name}) with its "
                                                 "settings; switch again to restart it")]
        results = [dict(check, ok=True, detail=f"{machine.unit} is active")]
        if not artifact["machine"]["health"]:
            return results
        leader = self._leader(machine)
        mine = dict(slot_variables(release, artifact, slot), address=variables.get("address", "127.0.0.1"))
        checks = []
        for entry in artifact["machine"]["health"]:
            kind, target = health_kind(entry)
            target = substitute(target, mine)
            if kind == "command":  # inside: the machine's namespaces and root, its /bin/sh
                target = (f"{shutil.which('nsenter') or 'nsenter'} --target {leader} --mount --uts --ipc --net --pid "
                          f"--root --wd -- /bin/sh -c {shlex.quote(target)}")
            checks.append(dict(entry, **{kind: target}))
        return results + run_checks({"health": checks}, variables)

    @staticmethod
    def _leader(machine: _Machine) -> str:
        rc, out, _err = machine.systemd.run(["machinectl", "show", "--property=Leader", "--value", machine.name])
        leader = out.strip()
        return leader if rc == 0 and leader.isdigit() else "0"

    def converged(self, state: Any) -> bool:
        """Whether each slot's machine runs what the slot points to, with its settings, and no emptied slot's machine
        is left: a machine stopped or changed behind the collection's back makes a rollout switch the node again."""
        if not _APP_RE.match(state.app):
            return True
        systemd = None
        for slot in SLOT_ORDER:
            name = state.slot_target(slot)
            release = _read_release(state, name)
            systemd = systemd or node_systemd()
            machine = _Machine(state, slot, systemd)
            if machine_artifact(release) is None:
                if machine.ours():
                    return False
                continue
            try:
                settings, dropin = desired_files(state, release, name, slot)
            except (MachineError, UnitError):
                return False
            if not machine.runs(settings, dropin, machine.state()):
                return False
        return True

    def deactivate(self, release_dir: str) -> None:
        """A release about to be removed runs in no slot; a machine whose drop-in still names it is stopped anyway."""
        app = os.path.basename(os.path.dirname(os.path.dirname(release_dir)))
        if not _APP_RE.match(app):
            return
        for slot in SLOT_ORDER:
            dropin = read_text(os.path.join(UNIT_DIR, unit_name(machine_name(app, slot)) + ".d", DROPIN_NAME)) or ""
            if dropin.startswith(HEADER) and f"--directory={release_dir}/" in dropin:
                node_systemd().ctl("stop", "--", unit_name(machine_name(app, slot)), check=False)

    def report(self, state: Any, record: Dict[str, Any], name: Optional[str]) -> Dict[str, Any]:
        machines = {}
        systemd = None
        for slot in SLOT_ORDER:
            target = state.slot_target(slot)
            release = _read_release(state, target)
            if machine_artifact(release) is None:
                continue
            systemd = systemd or node_systemd()
            machine = _Machine(state, slot, systemd)
            props = machine.state()
            try:
                settings, dropin = desired_files(state, release, target, slot)
                runs = machine.runs(settings, dropin, props)
                files = ("as installed" if read_text(machine.settings_path) == settings and
                         read_text(machine.dropin_path) == dropin else "changed")
            except (MachineError, UnitError) as exc:
                runs, files = False, str(exc)
            machines[slot] = {"machine": machine.name, "state": props.get("ActiveState", "unknown"),
                              "release": target, "runs_slot_release": runs, "settings": files}
        return {"machines": machines} if machines else {}
