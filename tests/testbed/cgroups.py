# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cgroups: each node in its own, or the nodes' systemd instances share one tree and fight over it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable


def _cgroup_roots() -> list[str]:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # unified hierarchy only
        return ["/sys/fs/cgroup"]
    return [path for path in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
            if os.path.exists(os.path.join(path, "cgroup.procs"))]


def _make_cgroups(tag: str) -> list[str]:
    """Create a cgroup named TAG in every hierarchy systemd uses.

    systemd-nspawn with --keep-unit puts the container below the cgroup it was started in. Started from
    one shared cgroup, every node's systemd would manage the same /payload/system.slice/... groups: units
    then fail to start ("Failed to attach to cgroup") and one node's stop can reach into another.
    """
    paths = []
    for root in _cgroup_roots():
        path = os.path.join(root, "sciops-testbed", tag)
        os.makedirs(path, exist_ok=True)
        paths.append(path)
    return paths


def _enter_cgroups(paths: list[str]) -> Callable[[], None]:
    def enter() -> None:
        for path in paths:
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write("0")
    return enter


def _remove_cgroups(paths: list[str]) -> None:
    """Remove the cgroups (bottom up; a cgroup goes away by rmdir once it holds no process)."""
    for path in paths:
        if not os.path.isdir(path):
            continue
        for _attempt in range(20):
            for current, _dirs, _files in os.walk(path, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(current)
            if not os.path.exists(path):
                break
            time.sleep(0.1)
