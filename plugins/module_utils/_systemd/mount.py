# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Mount units a module writes for read-only images: verified with ``systemd-analyze verify`` before they are
installed (as every unit the collection writes), enabled and started through the manager, removed again."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.command import check_output, run_command
from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import Systemd
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import read_text, verify_candidate
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MountError, UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import UnitName

UNIT_DIR = "/etc/systemd/system"
MOUNT_JOURNAL_LINES = 10


def node_systemd() -> Systemd:
    """The systemd of the node this code runs on, for library code that has no AnsibleModule."""
    return Systemd(lambda argv, env: run_command(argv, env=env))


def mount_unit_name(where: str) -> str:
    """The unit name systemd requires for a mount at WHERE (``systemd-escape --path --suffix=mount``)."""
    return check_output(["systemd-escape", "--path", "--suffix=mount", where], "systemd-escape").strip()


def mount_unit_text(comment: str, description: str, what: str, where: str, fs_type: str, options: str) -> str:
    """A mount unit that mounts WHAT at WHERE at boot (wanted by multi-user.target)."""
    return (f"# {comment}\n[Unit]\nDescription={description}\nAfter=local-fs.target\n\n[Mount]\nWhat={what}\n"
            f"Where={where}\nType={fs_type}\nOptions={options}\n\n[Install]\nWantedBy=multi-user.target\n")


def ensure_mount(unit: str, text: str, action: str, check_mode: bool = False, systemd: Optional[Systemd] = None,
                 unit_dir: Optional[str] = None, warn: Callable[[str], None] = lambda message: None) -> bool:
    """Mount unit UNIT with TEXT installed, enabled and active. A changed text is verified first and a refused
    one is never installed; ACTION (``mounting X at Y``) names the mount in errors. True when something was (or,
    in CHECK_MODE, would be) changed."""
    systemd = systemd or node_systemd()
    unit_dir = unit_dir or UNIT_DIR
    path = os.path.join(unit_dir, unit)
    same = read_text(path) == text
    active = systemd.is_active(unit) == "active"
    if same and active:
        return False
    if check_mode:
        return True
    if not same:
        try:
            verify_candidate(systemd, UnitName(unit), None, text, [], unit_dir, True, warn)
        except UnitError as exc:
            raise MountError(str(exc), **exc.details) from None
        atomic_write(path, text.encode("utf-8"), mode=0o644)
        systemd.daemon_reload()
    rc, out, err = systemd.ctl("enable", "--now", "--", unit, check=False)
    if rc != 0:
        journal = systemd.journal(unit, MOUNT_JOURNAL_LINES)
        raise MountError(f"{action} failed (exit {rc}): {(err or out).strip()}; journal: "
                         f"{' | '.join(journal)}", unit=unit, journal=journal)
    return True


def remove_mount(unit: str, systemd: Optional[Systemd] = None, unit_dir: Optional[str] = None) -> None:
    """Stop, disable and remove mount unit UNIT; what is already gone is not an error."""
    systemd = systemd or node_systemd()
    unit_dir = unit_dir or UNIT_DIR
    systemd.ctl("disable", "--now", "--", unit, check=False)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(unit_dir, unit))
