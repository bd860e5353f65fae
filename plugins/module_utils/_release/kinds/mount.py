# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``mount``: a squashfs environment image mounted read-only at ``<release>/<artifact>`` by an enabled
systemd mount unit (verified like every unit), linked at its ``mount_point``. A tar image is unpacked instead.

The mounts are kept in the release's mounts record (``.sciops-mounts.json``), which only the node writes; an entry
the node would not have written is refused, since the unit it names is written and removed as root."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any, Dict, List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import CommandError
from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Artifact, Placement, Release
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.image import IMAGES_DIR, ImageKind
from ansible_collections.sciops.fleet.plugins.module_utils._systemd import mount as mount_units
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MountError, UnitError

MOUNTS_RECORD = ".sciops-mounts.json"
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+\.mount$")
_FIELDS = ("name", "unit", "what", "where", "type", "options")


def mount_type() -> Tuple[str, str]:
    """``(type, options)`` of a read-only squashfs mount on this node: the kernel's through a loop device where
    there are loop devices, else squashfuse through FUSE (containers, such as the test nodes, have no loop devices)."""
    with contextlib.suppress(OSError):
        with open("/proc/filesystems", encoding="utf-8") as handle:
            kernel = any(line.split()[-1] == "squashfs" for line in handle if line.strip())
        if kernel and os.path.exists("/dev/loop-control"):
            return "squashfs", "ro,loop,nodev"
    if shutil.which("squashfuse") and os.path.exists("/dev/fuse"):
        return "fuse.squashfuse", "ro,nodev,allow_other"
    raise NodeError("this node can mount a squashfs image neither with a loop device (no /dev/loop-control or no "
                    "squashfs file system) nor with squashfuse (not installed, or no /dev/fuse); install squashfuse "
                    "and fuse3, or install the artifact with install: unpack")


def read_mounts(release_dir: str) -> List[Dict[str, str]]:
    """The mounts the node recorded for the release in RELEASE_DIR. Each entry must be one the node itself writes
    (a unit name systemd-escape gives, the image under .images/, the mount point below the release): the unit's
    file is written and removed as root, so nothing else may steer it."""
    path = os.path.join(release_dir, MOUNTS_RECORD)
    try:
        with open(path, encoding="utf-8") as handle:
            mounts = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise NodeError(f"the mounts record {path} cannot be read ({exc})") from None
    problem = None if isinstance(mounts, list) else "it is not a list"
    for mount in mounts if problem is None else []:
        if not isinstance(mount, dict) or not all(isinstance(mount.get(k), str) for k in _FIELDS) or \
                any(c in mount[k] for k in _FIELDS for c in "\n\r\0"):
            problem = f"entry {mount!r} is not a mount the node writes"
        elif not _UNIT_NAME_RE.match(mount["unit"]) or "/" in mount["unit"]:
            problem = f"unit {mount['unit']!r} is not a mount unit name"
        elif os.path.dirname(mount["what"]) != os.path.join(release_dir, IMAGES_DIR) or \
                os.path.dirname(mount["where"]) != release_dir or mount["type"] not in ("squashfs", "fuse.squashfuse"):
            problem = f"mount {mount['name']!r} does not mount an image of this release inside it"
        if problem:
            break
    if problem:
        raise NodeError(f"the mounts record {path} is not this node's own: {problem}; nothing of it is mounted or removed")
    return mounts


class MountKind(ImageKind):
    name = "mount"

    def mounts(self, image_format: str) -> bool:
        return image_format == "squashfs"

    def mount_entry(self, job: Placement, artifact: Artifact, kept: str) -> Dict[str, str]:
        fs_type, options = mount_type()
        where = os.path.join(job.final, artifact["name"])
        try:
            unit = mount_units.mount_unit_name(where)
        except CommandError as exc:
            raise NodeError(str(exc)) from None
        return {"name": artifact["name"], "unit": unit, "what": os.path.join(job.final, IMAGES_DIR, os.path.basename(kept)),
                "where": where, "type": fs_type, "options": options}

    def seal(self, job: Placement) -> None:
        """Save the mounts record of the release being built; only the node writes it, so a file of that name that
        came with the release (a config's dest, say) is replaced or removed."""
        path = os.path.join(job.staging, MOUNTS_RECORD)
        if job.mounts:
            atomic_write(path, (json.dumps(job.mounts, indent=2, sort_keys=True) + "\n").encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def activate(self, state: Any, release: Release, release_dir: str, check_mode: bool = False) -> bool:
        """Mount the release's images (an enabled systemd .mount unit each)."""
        changed = False
        release_name = os.path.basename(release_dir)
        for mount in read_mounts(release_dir):
            text = mount_units.mount_unit_text(
                f"sciops.fleet: environment image {mount['name']} of {state.app}, release {release_name}",
                f"sciops.fleet {state.app} {mount['name']} ({release_name})",
                mount["what"], mount["where"], mount["type"], mount["options"])
            try:
                changed = mount_units.ensure_mount(mount["unit"], text, f"mounting {mount['what']} at {mount['where']}",
                                                   check_mode=check_mode) or changed
            except (UnitError, CommandError) as exc:
                raise MountError(str(exc), **getattr(exc, "details", {})) from None
        return changed

    def deactivate(self, release_dir: str) -> None:
        """Stop, disable and remove the mount units of the release in RELEASE_DIR (before it is removed)."""
        try:
            mounts = read_mounts(release_dir)
        except NodeError:
            mounts = []  # a record that is not the node's own names no unit of the node's to remove
        if not mounts:
            return
        systemd = mount_units.node_systemd()
        for mount in mounts:
            mount_units.remove_mount(mount["unit"], systemd=systemd)
        systemd.ctl("daemon-reload", check=False)
