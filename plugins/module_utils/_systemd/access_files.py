# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The service_access module's work: choose polkit or sudo on the node, and put a grant's one file in place.

A grant is one file, ``<rules_dir>/60-sciops-fleet-<name>.rules`` or ``<sudoers_dir>/sciops-fleet-<name>``; the
other mechanism's file of the same grant is removed, so a node that changes mechanism keeps exactly one. A sudoers
file is checked with ``visudo -cf`` under a name sudo ignores (it has a dot) and renamed into place only when
visudo accepts it: a broken drop-in would lock every user out of sudo.
"""

from __future__ import annotations

import grp
import os
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import (
    atomic_write,
    commit_file,
    create_temp,
    fsync_dir,
    remove_quietly,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.access import (
    MANAGED_MARK,
    Grant,
    check_grant_name,
    describe,
    polkit_rule_text,
    sudoers_text,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import AccessError

# Documented in plugins/modules/service_access.py; validate-modules checks the two agree.
ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "group": {"type": "str"},
    "units": {"type": "list", "elements": "str", "default": []},
    "verbs": {"type": "list", "elements": "str", "default": []},
    "instances": {"type": "list", "elements": "str", "default": []},
    "machines": {"type": "list", "elements": "str", "default": []},
    "machine_verbs": {"type": "list", "elements": "str", "default": []},
    "mechanism": {"type": "str", "default": "auto", "choices": ["auto", "polkit", "sudoers"]},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "rules_dir": {"type": "path", "default": "/etc/polkit-1/rules.d"},
    "sudoers_dir": {"type": "path", "default": "/etc/sudoers.d"},
}
REQUIRED_IF = [("state", "present", ("group",))]

POLKITD_PATHS = ("/usr/lib/polkit-1/polkitd", "/usr/libexec/polkitd", "/usr/lib/polkit/polkitd")
POLKIT_UNIT = "polkit.service"
RULES_MODE = 0o644
SUDOERS_MODE = 0o440

Run = Callable[[List[str]], Tuple[int, str, str]]


def rules_path(rules_dir: str, name: str) -> str:
    return os.path.join(rules_dir, f"60-sciops-fleet-{name}.rules")


def sudoers_path(sudoers_dir: str, name: str) -> str:
    return os.path.join(sudoers_dir, f"sciops-fleet-{name}")


def polkit_status(run: Run, systemctl: Optional[str], rules_dir: str,
                  polkitd_paths: Sequence[str] = POLKITD_PATHS) -> Tuple[bool, str]:
    """Whether polkit can carry a grant on this node, and why (or why not).

    polkit must be installed with JavaScript rules (a polkitd binary and a rules.d directory: polkit 0.105 and older
    read only .pkla files), and its unit must not be masked: systemd starts polkitd on demand, so a stopped polkitd
    is fine, a masked one answers no question and every request is refused."""
    binary = next((path for path in polkitd_paths if os.path.exists(path)), None)
    if binary is None:
        return False, f"polkitd is not installed (none of {', '.join(polkitd_paths)})"
    if not os.path.isdir(rules_dir):
        return False, f"{rules_dir} does not exist (polkit without JavaScript rules, older than 0.106?)"
    if systemctl:
        _rc, out, _err = run([systemctl, "show", "--no-pager", "-p", "LoadState", "--", POLKIT_UNIT])
        load_state = out.strip().partition("=")[2]
        if load_state in ("masked", "not-found"):
            return False, f"{POLKIT_UNIT} is {load_state}"
    return True, f"polkitd at {binary}, rules in {rules_dir}"


def _read(path: str) -> Tuple[Optional[str], Optional[int]]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return text, os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError:
        return "", os.stat(path).st_mode & 0o7777


def _written_here(path: str) -> bool:
    """Whether the file at PATH is one this module wrote (its first line carries the mark); a link never is."""
    if os.path.islink(path):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return MANAGED_MARK in handle.readline()
    except OSError:
        return False


def _group_exists(group: str) -> bool:
    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def _visudo_check(run: Run, visudo: str, path: str) -> None:
    rc, out, err = run([visudo, "-c", "-q", "-f", path])
    if rc != 0:
        raise AccessError(f"visudo refused the sudoers text, nothing was written: {(err or out).strip()}",
                          visudo_output=(err or out).strip())


class ServiceAccess:
    """One run of the module. WHICH is ``which(program) -> path or None``; RUN is ``run(argv) -> (rc, out, err)``."""

    def __init__(self, params: Mapping[str, Any], run: Run, which: Callable[[str], Optional[str]],
                 check_mode: bool = False, diff: bool = False, polkitd_paths: Sequence[str] = POLKITD_PATHS) -> None:
        self.params = params
        self.run_command = run
        self.which = which
        self.check_mode = check_mode
        self.diff = diff
        self.polkitd_paths = polkitd_paths
        self.warnings: List[str] = []
        name = check_grant_name(params["name"] or "")
        self.paths = {"polkit": rules_path(params["rules_dir"], name),
                      "sudoers": sudoers_path(params["sudoers_dir"], name)}

    def run(self) -> Dict[str, Any]:
        if self.params["state"] == "absent":
            return self._absent()
        return self._present()

    def _absent(self) -> Dict[str, Any]:
        present = [path for path in self.paths.values() if os.path.lexists(path)]
        removed = [path for path in present if _written_here(path)]
        for path in present:
            if path not in removed:
                self.warnings.append(f"{path} was not written by {MANAGED_MARK}; it is left as it is")
        diff = {"before": "", "after": ""}
        for path in removed:
            diff["before"] += _read(path)[0] or ""
            if not self.check_mode:
                remove_quietly(path)
                fsync_dir(os.path.dirname(path))
        result: Dict[str, Any] = {"changed": bool(removed), "mechanism": None, "grant_file": None,
                                  "removed": removed,
                                  "grant": "", "mechanism_reason": "state=absent"}
        if self.diff:
            result["diff"] = dict(diff, before_header=", ".join(removed), after_header="(removed)")
        return result

    def _mechanism(self) -> Tuple[str, str]:
        wanted = self.params["mechanism"]
        usable, reason = polkit_status(self.run_command, self.which("systemctl"), self.params["rules_dir"],
                                       self.polkitd_paths)
        if wanted == "polkit" and not usable:
            raise AccessError(f"mechanism=polkit, but polkit cannot carry the grant here: {reason}")
        if wanted == "polkit" or (wanted == "auto" and usable):
            return "polkit", reason
        if not self.which("visudo"):
            why = "mechanism=sudoers" if wanted == "sudoers" else f"polkit cannot carry the grant ({reason})"
            raise AccessError(f"{why}, and sudo is not installed (no visudo); install polkitd or sudo")
        if wanted == "sudoers":
            return "sudoers", "mechanism=sudoers"
        return "sudoers", f"polkit cannot carry the grant: {reason}"

    def _text(self, grant: Grant, mechanism: str) -> str:
        if mechanism == "polkit":
            return polkit_rule_text(grant)
        systemctl = self.which("systemctl") or "/usr/bin/systemctl"
        machinectl = self.which("machinectl")
        if grant.machines and not machinectl:
            raise AccessError("machines: machinectl is not installed on this node (systemd-container)")
        return sudoers_text(grant, systemctl, machinectl or "/usr/bin/machinectl")

    def _present(self) -> Dict[str, Any]:
        # In check mode the group may be one an earlier task of the same play creates: predicted, not required.
        grant = Grant.from_params(self.params, check_group=not self.check_mode)
        if self.check_mode and not _group_exists(grant.group):
            self.warnings.append(f"group {grant.group} does not exist on this node yet; a real run needs it")
        mechanism, reason = self._mechanism()
        text = self._text(grant, mechanism)
        path = self.paths[mechanism]
        if os.path.lexists(path) and not _written_here(path):
            raise AccessError(f"{path} was not written by {MANAGED_MARK}, so it is not replaced: it is the site's own "
                              f"file of that name; rename or remove it, or give the grant another name than "
                              f"{self.params['name']!r}")
        mode = RULES_MODE if mechanism == "polkit" else SUDOERS_MODE
        before, before_mode = _read(path)
        stale = [other for key, other in self.paths.items() if key != mechanism and os.path.lexists(other)
                 and _written_here(other)]
        write = before != text or before_mode != mode
        if mechanism == "sudoers" and write:
            self._check_sudoers(text)
        if not self.check_mode:
            if write:
                self._write(path, text, mode, mechanism)
            for other in stale:
                remove_quietly(other)
                fsync_dir(os.path.dirname(other))
        result: Dict[str, Any] = {"changed": write or bool(stale), "mechanism": mechanism, "mechanism_reason": reason,
                                  "grant_file": path, "removed": stale, "grant": describe(grant)}
        if self.diff:
            result["diff"] = {"before": before or "", "after": text, "before_header": path, "after_header": path}
        return result

    def _check_sudoers(self, text: str) -> None:
        """In check mode, visudo -cf on TEXT in a scratch file; a real run checks the file it renames (``_write``)."""
        if not self.check_mode:
            return
        fd, tmp = tempfile.mkstemp(prefix="sciops-fleet-sudoers.")
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, SUDOERS_MODE)
            os.close(fd)
            _visudo_check(self.run_command, self.which("visudo") or "visudo", tmp)
        finally:
            remove_quietly(tmp)

    def _write(self, path: str, text: str, mode: int, mechanism: str) -> None:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise AccessError(f"{directory} does not exist; is {'polkitd' if mechanism == 'polkit' else 'sudo'} "
                              "installed?")
        if mechanism == "polkit":
            atomic_write(path, text.encode(), mode)
            return
        # sudo reads every file in sudoers.d whose name has no dot and does not end in '~': the candidate's name
        # has a dot, so sudo never reads it before visudo has accepted it.
        fd, tmp = create_temp(directory, prefix=f".sciops-fleet-{self.params['name']}.tmp-")
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, mode)
            os.fsync(fd)
            _visudo_check(self.run_command, self.which("visudo") or "visudo", tmp)
        except BaseException:
            os.close(fd)
            remove_quietly(tmp)
            raise
        commit_file(fd, tmp, path, mode)
