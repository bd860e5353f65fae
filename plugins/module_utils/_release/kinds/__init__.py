# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The install kinds, registered in one table. A new kind is one file in this package (a subclass of
``base.InstallKind``) and its entry in ``KINDS`` below; see CONTRIBUTING.md."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import extract, files, machine, mount, rpm, squashfs, unpack
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import InstallKind, Placement, Release
from ansible_collections.sciops.fleet.plugins.module_utils._release.mount_points import link_mount_points

KINDS: Dict[str, InstallKind] = {kind.name: kind for kind in (
    files.FilesKind(),
    extract.ExtractKind(),
    squashfs.SquashfsKind(),
    mount.MountKind(),
    unpack.UnpackKind(),
    rpm.RpmKind(),
    machine.MachineKind(),
)}

# What status reports itself: a kind's report never replaces these.
_STATUS_KEYS = ("application", "installed", "current", "oldstable", "drift")


def kinds_in(release: Release) -> List[InstallKind]:
    """The kinds RELEASE's artifacts use, in the table's order."""
    used = {artifact["install"] for artifact in release["artifacts"]}
    return [kind for name, kind in KINDS.items() if name in used]


def seal(job: Placement) -> None:
    """Let every kind write what it keeps in the release being built in JOB's staging tree."""
    for kind in KINDS.values():
        kind.seal(job)


def activate(state: Any, release: Release, release_dir: str, check_mode: bool = False) -> bool:
    """What every kind of RELEASE needs outside RELEASE_DIR, then the artifacts' mount point links (of whatever
    kind takes a mount_point); True when something was (or would be) changed. A mount point the node may not take
    is refused here, so install asks in check mode before it fetches anything."""
    changed = False
    for kind in kinds_in(release):
        changed = kind.activate(state, release, release_dir, check_mode) or changed
    return link_mount_points(state, release["artifacts"], check_mode) or changed


def deactivate(release_dir: str) -> None:
    """Undo what any kind made outside RELEASE_DIR (read from the directory itself, which may be incomplete)."""
    for kind in KINDS.values():
        kind.deactivate(release_dir)


def required_commands(release: Release) -> List[str]:
    """The programs a node needs to install RELEASE's artifacts."""
    return [command for kind in kinds_in(release) for command in kind.commands]


def adopt(state: Any, name: str, release: Release) -> Dict[str, Any]:
    """Record fields of every kind for release NAME found on disk but not in the record."""
    fields: Dict[str, Any] = {}
    for kind in kinds_in(release):
        fields.update(kind.adopt(state, name, release))
    return fields


def switch_plan(state: Any, record: Dict[str, Any], name: str, previous: Optional[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Per kind, what moving ``current`` from PREVIOUS to NAME changes outside the release directories. Every
    kind is asked: a kind the previous release used may have something to undo."""
    return {kind_name: kind.switch_plan(state, record, name, previous) for kind_name, kind in KINDS.items()}


def apply_switch(plans: Dict[str, List[Dict[str, Any]]], options: Dict[str, Any], check_mode: bool = False) -> bool:
    """Carry out PLANS (from switch_plan); True when something was (or would be) changed."""
    changed = False
    for kind_name, plan in plans.items():
        if plan:
            changed = KINDS[kind_name].apply_switch(plan, options, check_mode) or changed
    return changed


def converge(state: Any, slots: Dict[str, Optional[str]], check_mode: bool = False) -> Dict[str, Any]:
    """What runs outside the releases, of every kind, made to follow SLOTS (slot -> release name or None)."""
    fields: Dict[str, Any] = {}
    for kind in KINDS.values():
        fields.update(kind.converge(state, slots, check_mode))
    return fields


def converged(state: Any) -> bool:
    """Whether what every kind runs outside the releases follows the slots now."""
    return all(kind.converged(state) for kind in KINDS.values())


def health(state: Any, release: Release, slot: str, variables: Dict[str, str],
           run_checks: Callable[[Release, Dict[str, str]], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The checks RELEASE's kinds make of it running in SLOT (before the release's own)."""
    return [result for kind in kinds_in(release) for result in kind.health(state, release, slot, variables, run_checks)]


def report(state: Any, record: Dict[str, Any], name: Optional[str]) -> Dict[str, Any]:
    """Status fields of every kind for the release NAME that ``current`` runs."""
    fields: Dict[str, Any] = {}
    for kind in KINDS.values():
        fields.update({key: value for key, value in kind.report(state, record, name).items() if key not in _STATUS_KEYS})
    return fields
