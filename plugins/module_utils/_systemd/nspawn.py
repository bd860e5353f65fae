# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""systemd-nspawn machines on a node: install an image as a tree, write its .nspawn settings, run it.

A machine is ``<machines_dir>/<name>`` (a directory tree), ``<settings_dir>/<name>.nspawn`` and the unit
``systemd-nspawn@<name>.service``. What image a tree was installed from is recorded in
``<state_dir>/<name>.json``, so a second run with the same image does nothing, and a different image replaces
the tree only when the caller says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._common.node_layout import (
    LEGACY_MACHINES_STATE_DIR,
    MACHINES_STATE_DIR,
    migrate_state_files,
    state_dir_to_read,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import (
    ENABLED_STATES,
    Systemd,
    start_and_check,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MachineError, UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.machine_image import (
    detect_format,
    extract_image,
    file_identity,
    image_digest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import render_sections

SETTINGS_HEADER = "# Managed by sciops.fleet.nspawn_container; local changes are overwritten on the next run."
SETTINGS_ORDER = ("Exec", "Files", "Network")

# Documented in plugins/modules/nspawn_container.py; validate-modules checks the two agree.
ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "image": {"type": "path"},
    "image_format": {"type": "str", "default": "auto", "choices": ["auto", "directory", "tar", "squashfs"]},
    "replace": {"type": "bool", "default": False},
    "boot": {"type": "bool", "default": True},
    "command": {"type": "list", "elements": "str", "default": []},
    "read_only": {"type": "bool", "default": False},
    "volatile": {"type": "str", "choices": ["no", "yes", "state", "overlay"]},
    "bind": {"type": "list", "elements": "str", "default": []},
    "bind_ro": {"type": "list", "elements": "str", "default": []},
    "network": {"type": "str", "default": "private", "choices": ["private", "host", "veth"]},
    "ports": {"type": "list", "elements": "str", "default": []},
    "capabilities": {"type": "list", "elements": "str", "default": []},
    "drop_capabilities": {"type": "list", "elements": "str", "default": []},
    "environment": {"type": "dict", "default": {}},
    "private_users": {"type": "str", "default": "no", "choices": ["no", "yes", "pick", "identity"]},
    "settings": {"type": "dict", "default": {}},
    "enabled": {"type": "bool"},
    "state": {"type": "str", "default": "present", "choices": ["present", "started", "stopped", "absent"]},
    "settle": {"type": "float", "default": 3.0},
    "journal_lines": {"type": "int", "default": 20},
    "machines_dir": {"type": "path", "default": "/var/lib/machines"},
    "settings_dir": {"type": "path", "default": "/etc/systemd/nspawn"},
    "state_dir": {"type": "path", "default": MACHINES_STATE_DIR},
}

_MACHINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")  # a host name: systemd-nspawn refuses '_' too
_PLAIN_ARG_RE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BIND_RE = re.compile(r"^[^\s:]+(:[^\s:]+(:[A-Za-z0-9,]+)?)?$")


def validate_name(name: str) -> str:
    if not _MACHINE_RE.match(name or ""):
        raise MachineError(f"name {name!r} is not a machine name: up to 64 letters, digits and '-' (a host name), "
                           "starting with a letter or digit")
    return name


def unit_name(name: str) -> str:
    return f"systemd-nspawn@{name}.service"


def quote_arg(arg: str) -> str:
    """ARG as one word of a systemd setting (``Parameters=``, ``ExecStart=``): plain, or in single quotes, or in
    double quotes when it holds a single quote. ``Parameters=`` keeps backslashes as they are, so an argument that
    would need one (both quote characters, or a backslash) is refused rather than passed on changed."""
    if "\n" in arg or "\0" in arg:
        raise MachineError(f"command: argument {arg!r} has a line break or NUL")
    if _PLAIN_ARG_RE.match(arg):
        return arg
    if "\\" in arg or ("'" in arg and '"' in arg):
        raise MachineError(f"command: argument {arg!r} holds a backslash or both quote characters, which a systemd "
                           "setting cannot carry unchanged; put the command in a script in the image and run that")
    return f"'{arg}'" if "'" not in arg else f'"{arg}"'


def settings_sections(params: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The .nspawn file as sections, from the module's options; ``settings`` adds or overrides directives."""
    exec_ = {"Boot": bool(params["boot"]), "PrivateUsers": params["private_users"]}
    if params["command"]:
        if params["boot"]:
            raise MachineError("command is the process to run instead of booting; set boot: false with it "
                               "(a booted machine runs its init)")
        exec_["Parameters"] = " ".join(quote_arg(arg) for arg in params["command"])
    if params["capabilities"]:
        exec_["Capability"] = " ".join(params["capabilities"])
    if params["drop_capabilities"]:
        exec_["DropCapability"] = " ".join(params["drop_capabilities"])
    environment = []
    for key, value in sorted((params["environment"] or {}).items()):
        if not _ENV_KEY_RE.match(str(key)):
            raise MachineError(f"environment: {key!r} is not a variable name")
        environment.append(quote_arg(f"{key}={value}"))  # one word: Environment= splits at white space
    if environment:
        exec_["Environment"] = environment
    files = {}
    if params["read_only"]:
        files["ReadOnly"] = True
    if params["volatile"]:
        files["Volatile"] = params["volatile"]
    for option, key in (("bind", "Bind"), ("bind_ro", "BindReadOnly")):
        for spec in params[option]:
            if not _BIND_RE.match(spec) or not spec.startswith(("/", "+/")):
                raise MachineError(f"{option}: {spec!r} is not SOURCE[:DESTINATION[:OPTIONS]] with absolute paths")
        if params[option]:
            files[key] = list(params[option])
    network = {
        "private": {"Private": True, "VirtualEthernet": False},
        "host": {"Private": False, "VirtualEthernet": False},
        "veth": {"Private": True, "VirtualEthernet": True},
    }[params["network"]]
    if params["ports"]:
        if params["network"] != "veth":
            raise MachineError("ports are forwarded to a machine's own network; they need network: veth")
        network["Port"] = list(params["ports"])
    sections = {"Exec": exec_, "Files": files, "Network": network}
    for section, directives in (params.get("settings") or {}).items():
        if not isinstance(directives, dict):
            raise MachineError(f"settings: section {section} must be a mapping of directives to values")
        sections[section] = dict(sections.get(section) or {}, **directives)
    return {name: directives for name, directives in sections.items() if directives}


def render_settings(sections: Mapping[str, Mapping[str, Any]]) -> str:
    order = [name for name in SETTINGS_ORDER if name in sections] + [n for n in sections if n not in SETTINGS_ORDER]
    return render_sections(sections, order, SETTINGS_HEADER)


def is_machine_record(file_name: str, data: Any) -> bool:
    """Whether FILE_NAME holding DATA is a machine's image record (``<machine>.json``: image, format, digest)."""
    return isinstance(data, dict) and all(key in data for key in ("image", "format", "digest"))


class Machine:
    """One run of the nspawn_container module. SYSTEMD is a ``_systemd.manager.Systemd``; RUN runs a command."""

    def __init__(self, systemd: Systemd, run: Callable[[List[str]], Tuple[int, str, str]],
                 which: Callable[[str], str | None], params: Mapping[str, Any], check_mode: bool = False,
                 diff: bool = False) -> None:
        self.systemd = systemd
        self._run = run
        self.which = which
        self.params = params
        self.check_mode = check_mode
        self.want_diff = diff
        self.name = validate_name(params["name"])
        self.unit = unit_name(self.name)
        self.tree = os.path.join(params["machines_dir"], self.name)
        self.settings_file = os.path.join(params["settings_dir"], self.name + ".nspawn")
        self.record_file = os.path.join(params["state_dir"], self.name + ".json")
        self.diffs = []
        self.result = {
            "changed": False, "name": self.name, "unit": self.unit, "machine_dir": self.tree,
            "settings_file": self.settings_file, "image_digest": None, "image_changed": False, "replaced": False,
            "settings_changed": False, "enabled_changed": False, "started": False, "restarted": False,
            "stopped": False, "removed": False, "pending_restart": False,
        }

    def run_tool(self, argv: List[str], what: str) -> str:
        rc, out, err = self._run(argv)
        if rc != 0:
            raise MachineError(f"{what} failed (exit {rc}): {(err or out).strip()}", command=argv)
        return out

    def record(self) -> Dict[str, Any]:
        path = self.record_file
        if self.check_mode and self.params["state_dir"] == MACHINES_STATE_DIR:  # a node not yet migrated: the old place
            path = os.path.join(state_dir_to_read(LEGACY_MACHINES_STATE_DIR, MACHINES_STATE_DIR, self.name + ".json",
                                                  is_machine_record), self.name + ".json")
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return {}

    def running(self) -> bool:
        return self.systemd.is_active(self.unit) in ("active", "activating", "reloading")

    def apply(self) -> Dict[str, Any]:
        try:
            self._apply()
        except UnitError as exc:
            # What was done stays done: an installed image and written settings are reported as changes.
            exc.details.setdefault("machine_dir", self.tree)
            exc.details.setdefault("changed", not self.check_mode and any(
                self.result[key] for key in ("image_changed", "settings_changed", "enabled_changed")))
            for key in ("image_digest", "image_changed", "replaced", "settings_changed"):
                exc.details.setdefault(key, self.result[key])
            raise
        result = self.result
        keys = ("image_changed", "settings_changed", "enabled_changed", "started", "restarted", "stopped", "removed")
        result["changed"] = any(result[key] for key in keys)
        if self.want_diff and self.diffs:
            result["diff"] = self.diffs
        return result

    def _apply(self):
        if self.params["state_dir"] == MACHINES_STATE_DIR and not self.check_mode:
            migrate_state_files(LEGACY_MACHINES_STATE_DIR, MACHINES_STATE_DIR, is_machine_record)
        state = self.params["state"]
        if state == "absent":
            self._remove()
            return
        was_running = self.running()
        self._install_image(was_running)
        settings_changed = self._write_settings()
        if self.params.get("enabled") is not None:
            self._enable(self.params["enabled"])
        planned = self.check_mode and self.result["image_changed"]
        if not os.path.isdir(self.tree) and not planned and (state == "started" or self.params.get("enabled")):
            raise MachineError(f"{self.tree} does not exist; give image to install the machine")
        # Replacing the image of a running machine stopped it; it runs again unless asked to stop.
        stopped_by_replace = self.result["replaced"] and was_running
        running_now = was_running and not stopped_by_replace
        if state == "stopped":
            if running_now:
                self._ctl("stop")
                self.result["stopped"] = True
        elif stopped_by_replace:
            self._start("start")
            self.result["restarted"] = True
        elif state == "started" and not running_now:
            self._start("start")
            self.result["started"] = True
        elif settings_changed and running_now:
            if state == "started":
                self._start("restart")
                self.result["restarted"] = True
            else:
                self.result["pending_restart"] = True

    def _ctl(self, verb):
        if not self.check_mode:
            self.systemd.ctl(verb, "--", self.unit)

    def _start(self, verb):
        if self.check_mode:
            return
        start_and_check(self.systemd, self.unit, verb, self.params["settle"], self.params["journal_lines"])

    def _enable(self, want):
        current = self.systemd.is_enabled(self.unit)
        if (current in ENABLED_STATES) == want:
            return
        if not self.check_mode:
            if want:
                # machines.target pulls in the enabled machines at boot, as machinectl enable does.
                self.systemd.ctl("enable", "--", self.unit, "machines.target")
            else:
                self.systemd.ctl("disable", "--", self.unit)
        self.result["enabled_changed"] = True

    def _write_settings(self):
        text = render_settings(settings_sections(self.params))
        try:
            with open(self.settings_file, encoding="utf-8") as handle:
                before = handle.read()
        except FileNotFoundError:
            before = None
        if before == text:
            return False
        if self.want_diff:
            self.diffs.append({"before": before or "", "after": text, "after_header": self.settings_file,
                               "before_header": self.settings_file if before is not None else "(absent)"})
        if not self.check_mode:
            os.makedirs(self.params["settings_dir"], mode=0o755, exist_ok=True)
            atomic_write(self.settings_file, text.encode("utf-8"), mode=0o644)
        self.result["settings_changed"] = True
        return True

    def _install_image(self, was_running):
        """Install the image when it is new or (with replace) different; True when the tree changed."""
        image = self.params.get("image")
        if not image:
            return False
        image_format = self.params["image_format"]
        if image_format == "auto":
            image_format = detect_format(image)
        elif not os.path.exists(image):
            raise MachineError(f"image {image} does not exist on the node")
        record = self.record()
        identity = file_identity(image) if image_format != "directory" else None
        if identity and record.get("image") == image and record.get("identity") == identity and record.get("digest"):
            digest = record["digest"]  # the same file as last time: an environment image can be gigabytes
        else:
            digest = image_digest(image, image_format)
        self.result["image_digest"] = digest
        installed = os.path.isdir(self.tree)
        if installed and record.get("digest") == digest:
            return False
        if installed and not self.params["replace"]:
            held = record.get("digest") or "an image not installed by this module"
            raise MachineError(
                f"machine {self.name} at {self.tree} holds {held}, not {image} ({digest}); set replace: true to "
                "replace it (a running machine is stopped, its tree replaced, and started again; changes made "
                "inside the old tree are lost)",
                installed_digest=record.get("digest"),
            )
        if self.want_diff:
            self.diffs.append({"before": f"image: {record.get('digest') or '(none)'}\n" if installed else "",
                               "after": f"image: {digest}\n", "before_header": self.tree, "after_header": self.tree})
        self.result["image_changed"] = True
        self.result["replaced"] = installed
        if self.check_mode:
            return True
        os.makedirs(self.params["machines_dir"], mode=0o700, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{self.name}.new-", dir=self.params["machines_dir"])
        old = None
        try:
            self._extract(image, image_format, staging)
            # An OS tree's root must be traversable by its unprivileged users (dbus, daemons); an image built
            # from a private directory would otherwise boot half broken.
            os.chmod(staging, 0o755)
            if installed:
                if was_running:
                    self.systemd.ctl("stop", "--", self.unit)
                old = tempfile.mkdtemp(prefix=f".{self.name}.old-", dir=self.params["machines_dir"])
                os.rename(self.tree, os.path.join(old, "tree"))
            os.rename(staging, self.tree)
            staging = None
            fsync_dir(self.params["machines_dir"])
            os.makedirs(self.params["state_dir"], mode=0o755, exist_ok=True)
            atomic_write(self.record_file, (json.dumps({
                "image": image, "format": image_format, "digest": digest, "identity": identity,
                "time": int(time.time()),
            }, indent=1, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        return True

    def _extract(self, image, image_format, dest):
        """Fill the empty directory DEST with IMAGE's tree, owners, modes and special files kept."""
        extract_image(image, image_format, dest, self.run_tool, self.which, self.params["machines_dir"])

    def _remove(self):
        if self.running():
            self._ctl("stop")
            self.result["stopped"] = True
        if self.systemd.is_enabled(self.unit) in ENABLED_STATES:
            self._ctl("disable")
            self.result["enabled_changed"] = True
        for path in (self.settings_file, self.record_file):
            if os.path.exists(path):
                self.result["removed"] = True
                if not self.check_mode:
                    os.unlink(path)
        if os.path.isdir(self.tree):
            self.result["removed"] = True
            if self.want_diff:
                self.diffs.append({"before": f"machine: {self.tree}\n", "after": "",
                                   "before_header": self.tree, "after_header": "(absent)"})
            if not self.check_mode:
                doomed = tempfile.mkdtemp(prefix=f".{self.name}.old-", dir=self.params["machines_dir"])
                os.rename(self.tree, os.path.join(doomed, "tree"))
                fsync_dir(self.params["machines_dir"])
                shutil.rmtree(doomed, ignore_errors=True)
