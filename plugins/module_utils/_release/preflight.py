# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Can this node run a release? Its architecture, operating system family, free disk, memory, commands and kernel
features against what the release requires; every reason it cannot, not just the first."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from typing import Any, Dict, List, Optional, Set, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import required_commands


def _os_families() -> Set[str]:
    names: Set[str] = set()
    with contextlib.suppress(OSError):
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                key, _sep, value = line.strip().partition("=")
                if key in ("ID", "ID_LIKE"):
                    names.update(value.strip('"').lower().split())
    if names & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        names.add("redhat")
    return names


def _memory_mb() -> Optional[int]:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    return None


def _kernel_features() -> Set[str]:
    features: Set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/filesystems", encoding="utf-8") as handle:
            features.update(line.split()[-1] for line in handle if line.strip())
    return features


def preflight(release: Dict[str, Any], state_root: str, artifact_sizes: List[int]) -> Tuple[bool, List[str], Dict[str, Any]]:
    """Can this node run RELEASE? ``(ok, reasons, facts)``: every reason it cannot, not just the first."""
    needs = release["requires"]
    reasons = []
    machine = platform.machine()
    if needs["arch"] and machine not in needs["arch"]:
        reasons.append(f"architecture {machine} is not one of {', '.join(needs['arch'])}")
    families = _os_families()
    if needs["os_family"] and not families & set(needs["os_family"]):
        reasons.append(f"operating system ({', '.join(sorted(families)) or 'unknown'}) is not of the family {', '.join(needs['os_family'])}")
    probe = state_root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
    need_mb = needs["disk_mb"] + sum(artifact_sizes) // (1024 * 1024)
    if free_mb < need_mb:
        reasons.append(f"{free_mb} MiB free under {probe}, the release needs {need_mb} MiB (disk_mb plus its artifacts)")
    memory = _memory_mb()
    if needs["memory_mb"] and memory is not None and memory < needs["memory_mb"]:
        reasons.append(f"{memory} MiB of memory, the release needs {needs['memory_mb']} MiB")
    commands = list(needs["commands"])
    commands += [c for c in required_commands(release) if c not in commands]  # what its install kinds run
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        reasons.append(f"command(s) not found: {', '.join(missing)}")
    features = _kernel_features()
    absent = [k for k in needs["kernel"] if not (os.path.exists(k) if k.startswith("/") else k in features)]
    if absent:
        reasons.append(f"kernel feature(s) missing: {', '.join(absent)}")
    facts = {"arch": machine, "os_family": sorted(families), "free_mb": free_mb, "need_mb": need_mb, "memory_mb": memory}
    return not reasons, reasons, facts
