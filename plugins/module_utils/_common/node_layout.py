# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Where the collection keeps its state on a node. One owner for the whole namespace, so that nothing the
collection keeps for itself can share a path with an application.

Application names start with a lower-case letter or a digit (``_common.schema.NAME_RE``): every application has
``STATE_ROOT/<application>`` and the record ``FACTS_DIR/sciops_fleet_<application>.fact``. The collection's own
state lives under names that start with ``_`` (``STATE_ROOT/_units``, ``STATE_ROOT/_machines``), and the node's own
record is ``FACTS_DIR/sciops_fleet.fact``: no application name can reach them.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import fsync_dir

STATE_ROOT = "/var/lib/sciops-fleet"
FACTS_DIR = "/etc/ansible/facts.d"
CACHE_ROOT = "/var/cache/sciops-fleet"
UNITS_STATE_DIR = os.path.join(STATE_ROOT, "_units")
MACHINES_STATE_DIR = os.path.join(STATE_ROOT, "_machines")
# Where earlier versions kept the same things: an application of that name could share them.
LEGACY_UNITS_STATE_DIR = os.path.join(STATE_ROOT, "units")
LEGACY_MACHINES_STATE_DIR = os.path.join(STATE_ROOT, "machines")


def _is_our_file(directory: str, name: str, is_ours: Callable[[str, object], bool]) -> bool:
    """Whether DIRECTORY/NAME is one of the collection's JSON state files (a regular file, never through a link)."""
    path = os.path.join(directory, name)
    if not name.endswith(".json") or os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    return bool(is_ours(name, data))


def migrate_state_files(legacy_dir: str, state_dir: str, is_ours: Callable[[str, object], bool]) -> List[str]:
    """Move the collection's own JSON state files from LEGACY_DIR to STATE_DIR, leaving everything else there
    (LEGACY_DIR may also be the directory of an application of that name). IS_OURS(file name, parsed JSON) says
    whether a file is one of ours. A file already at STATE_DIR wins. Returns the names moved."""
    try:
        names = sorted(os.listdir(legacy_dir))
    except OSError:
        return []
    moved = []
    for name in names:
        if not _is_our_file(legacy_dir, name, is_ours):
            continue
        path = os.path.join(legacy_dir, name)
        target = os.path.join(state_dir, name)
        try:
            os.makedirs(state_dir, mode=0o755, exist_ok=True)
            if os.path.lexists(target):
                os.unlink(path)
            else:
                os.replace(path, target)
        except FileNotFoundError:  # another run moved it meanwhile
            continue
        except OSError:
            break  # a read-only or full disk: what is left stays where it is, and the next run tries again
        moved.append(name)
    if moved:
        fsync_dir(state_dir)
        fsync_dir(legacy_dir)
        try:
            os.rmdir(legacy_dir)  # only when nothing else was there
        except OSError:
            pass
    return moved


def state_dir_to_read(legacy_dir: str, state_dir: str, file_name: str, is_ours: Callable[[str, object], bool]) -> str:
    """Where FILE_NAME is read from by a run that moves nothing (check mode) on a node migrate_state_files has not
    migrated yet: LEGACY_DIR when only it holds the file and the file is ours, else STATE_DIR. So check mode
    predicts what the real run does after migrating."""
    if not os.path.lexists(os.path.join(state_dir, file_name)) and _is_our_file(legacy_dir, file_name, is_ours):
        return legacy_dir
    return state_dir
