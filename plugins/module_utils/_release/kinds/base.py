# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The interface every install kind implements (``artifacts[].install`` of a release manifest).

A kind is one small class in a file of its own in this package, registered in the table of ``__init__.py``. The
release code calls a kind at these points and nowhere else:

- ``takes_mount_point`` (manifest validation): whether an artifact of this kind may have a ``mount_point``, the
  link to ``<app>/current/<artifact>`` that the table's ``activate`` makes for every kind alike;
- ``fields`` / ``validate`` (manifest validation): the artifact fields of the kind's own (a machine's settings),
  checked with every other field and kept in the canonical release;
- ``pull_layers`` (install): whether the untitled layers of an OCI image are pulled too (``.layers/NNNN``);
- ``commands`` (preflight): programs a node needs to install an artifact of this kind;
- ``place`` (install, in the staging tree): turn the pulled files into what the release holds;
- ``seal`` (install, once the configs are rendered; every kind is asked): what the kind keeps in the release
  directory besides the artifacts' files;
- ``activate`` / ``deactivate`` (after an install, before a release directory is removed): what lives outside the
  release directory (mounts, links);
- ``adopt`` (a release found complete on disk but not recorded): what the record keeps of it besides its files;
- ``switch_plan`` / ``apply_switch`` (when ``current`` moves): changes outside the release that follow current;
  the steps of every kind's plan are what release_switch returns as ``packages`` (each with an ``action``);
- ``converge`` (after a slot moved or was emptied): what runs outside the releases follows what the slots point to
  (a machine per slot); a service that does not start is reported, not raised: its health check fails;
- ``converged`` (status): whether that still holds, so that a rollout does not leave alone a node where it does not;
- ``health`` (release_health): the kind's own checks of the release a slot runs, before the release's checks;
- ``report`` (status): what the node says of it besides slots and drift, under keys of its own (``packages``
  for rpm): a key of the status itself (application, installed, current, oldstable, drift) is never used.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

Artifact = Dict[str, Any]
Release = Dict[str, Any]


class Placement:
    """One release being placed into its staging tree, and what placing its artifacts produced."""

    def __init__(self, state: Any, release: Release, staging: str, final: str) -> None:
        self.state = state
        self.release = release
        self.staging = staging  # where the release is built; renamed to FINAL when complete
        self.final = final
        self.verified: Dict[str, Dict[str, Any]] = {}  # files checked as they were pulled: not hashed again
        self.mounts: List[Dict[str, str]] = []  # images to mount, saved in the release's mounts record
        self.packages: List[Dict[str, str]] = []  # RPM packages (name, evr, arch, path), kept in the record

    def dest(self, artifact: Artifact) -> str:
        """Where ARTIFACT's files are in the staging tree."""
        return os.path.join(self.staging, artifact["name"])

    def keep_as_pulled(self, pulled: List[Dict[str, Any]]) -> None:
        """The pulled files stay as they are: record the digests they were verified with."""
        self.verified.update({os.path.relpath(item["path"], self.staging): {"digest": item["digest"], "size": item["size"]}
                              for item in pulled})


class InstallKind:
    """An install kind that keeps the artifact's files as pulled and touches nothing outside its release."""

    name = ""
    takes_mount_point = False
    fields: Tuple[str, ...] = ()
    pull_layers = False
    commands: Tuple[str, ...] = ()

    def validate(self, check: Any, item: Artifact, field: str, release: Release) -> Dict[str, Any]:
        """The canonical values of the kind's own FIELDS in the artifact ITEM (named FIELD in messages); problems
        are added to CHECK (a ``_common.schema.Checker``). RELEASE is the release validated so far: its application
        and the artifacts before this one."""
        return {}

    def place(self, job: Placement, artifact: Artifact, pulled: List[Dict[str, Any]], where: str) -> None:
        """Turn the files pulled into JOB.dest(ARTIFACT) into what the release holds. WHERE names the artifact."""
        job.keep_as_pulled(pulled)

    def seal(self, job: Placement) -> None:
        """Write what this kind keeps in the release being built (asked of every kind, used or not)."""
        return None

    def activate(self, state: Any, release: Release, release_dir: str, check_mode: bool = False) -> bool:
        """Make what the release needs outside its directory; True when something was (or would be) changed."""
        return False

    def deactivate(self, release_dir: str) -> None:
        """Undo ``activate`` before RELEASE_DIR is removed; it may be incomplete or unreadable."""
        return None

    def adopt(self, state: Any, name: str, release: Release) -> Dict[str, Any]:
        """Record fields for release NAME found installed on disk but not in the record."""
        return {}

    def switch_plan(self, state: Any, record: Dict[str, Any], name: str, previous: Optional[str]) -> List[Dict[str, Any]]:
        """What moving ``current`` from PREVIOUS to NAME changes outside the release directories."""
        return []

    def apply_switch(self, plan: List[Dict[str, Any]], options: Dict[str, Any], check_mode: bool = False) -> bool:
        """Carry out PLAN before ``current`` moves; True when something was (or would be) changed."""
        return False

    def converge(self, state: Any, slots: Dict[str, Optional[str]], check_mode: bool = False) -> Dict[str, Any]:
        """Make what runs outside the releases follow SLOTS (slot -> release name, None when empty), after a slot
        moved or was emptied, and on every switch (a step whose result was lost is done again). Returns result
        fields under keys of the kind's own."""
        return {}

    def converged(self, state: Any) -> bool:
        """Whether what runs outside the releases follows the slots now (read from the node, cheaply): a node whose
        record says it runs a release, healthy, is left alone by a rollout only when every kind says so."""
        return True

    def health(self, state: Any, release: Release, slot: str, variables: Dict[str, str],
               run_checks: Callable[[Release, Dict[str, str]], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """The kind's own checks of RELEASE running in SLOT, as ``run_checks`` returns them (name, ok, detail,
        attempts); RUN_CHECKS(release-like dict with ``health``, variables) runs checks of the release's shape."""
        return []

    def report(self, state: Any, record: Dict[str, Any], name: Optional[str]) -> Dict[str, Any]:
        """Status fields for the release NAME that ``current`` runs (None when it runs none)."""
        return {}
