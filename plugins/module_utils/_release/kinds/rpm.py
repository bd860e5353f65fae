# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Install kind ``rpm``: RPM files (sciops.fleet.rpm_build) kept in the release and installed with rpm when
``current`` is switched to it. rpm holds one version of a package, so packages follow ``current``, never
``oldstable``."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Artifact, InstallKind, Placement, Release
from ansible_collections.sciops.fleet.plugins.module_utils._rpm import packages as rpm
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.version import evr_compare


class RpmKind(InstallKind):
    name = "rpm"
    commands = ("rpm",)

    def place(self, job: Placement, artifact: Artifact, pulled: List[Dict[str, Any]], where: str) -> None:
        not_rpm = [item["name"] for item in pulled if not item["name"].endswith(".rpm")]
        if not_rpm:
            release = job.release
            raise rpm.RpmError(f"artifact {artifact['name']} of {release['application']} {release['version']} is "
                               f"installed as rpm but holds {', '.join(not_rpm)}; push only .rpm files in it")
        job.packages.extend(rpm.read_header(item["path"]) for item in pulled)
        job.keep_as_pulled(pulled)

    def adopt(self, state: Any, name: str, release: Release) -> Dict[str, Any]:
        """The RPM packages of an installed release, read back from its files."""
        packages = []
        for artifact in release["artifacts"]:
            if artifact["install"] != self.name:
                continue
            folder = os.path.join(state.release_path(name), artifact["name"])
            for file_name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                if file_name.endswith(".rpm"):
                    package = rpm.read_header(os.path.join(folder, file_name))
                    package["file"] = os.path.relpath(package.pop("path"), state.release_path(name))
                    packages.append(package)
        return {"packages": packages} if packages else {}

    def switch_plan(self, state: Any, record: Dict[str, Any], name: str, previous: Optional[str]) -> List[Dict[str, Any]]:
        """Per package of NAME: file, wanted and installed EVR, and the action (install, upgrade, downgrade, keep;
        erase for a package of PREVIOUS that NAME no longer ships and that is installed)."""
        plan = []
        wanted = (record["releases"].get(name) or {}).get("packages") or []
        left = (record["releases"].get(previous) or {}).get("packages") or [] if previous and previous != name else []
        have = rpm.installed_versions([package["name"] for package in wanted + left])
        for package in wanted:
            installed = have[package["name"]]
            if installed is None:
                action = "install"
            else:
                order = evr_compare(package["evr"], installed)
                action = "keep" if order == 0 else ("upgrade" if order > 0 else "downgrade")
            plan.append({"name": package["name"], "evr": package["evr"], "arch": package["arch"], "installed": installed,
                         "action": action, "file": os.path.join(state.release_path(name), package["file"])})
        shipped = {package["name"] for package in plan}
        for package in left:
            if package["name"] not in shipped and have[package["name"]] is not None:
                plan.append({"name": package["name"], "evr": None, "arch": package["arch"],
                             "installed": have[package["name"]], "action": "erase", "file": None})
        return plan

    def apply_switch(self, plan: List[Dict[str, Any]], options: Dict[str, Any], check_mode: bool = False) -> bool:
        """Install the packages of PLAN that differ from the node's in one rpm transaction (``rpm -U``; with
        ``--oldpackage`` for a downgrade, which OPTIONS' rpm_downgrade must allow), then erase the packages the
        release no longer ships (``rpm -e``) that are still installed."""
        nodeps = bool(options.get("rpm_nodeps"))
        lowered = [p for p in plan if p["action"] == "downgrade"]
        if lowered and not options.get("rpm_downgrade"):
            listing = ", ".join(f"{p['name']} {p['installed']} -> {p['evr']}" for p in lowered)
            raise rpm.RpmError(f"switching would downgrade the RPM package(s) {listing}; allow it explicitly with "
                               "rpm_downgrade (rollout_rpm_downgrade in the rollout)")
        todo = [p for p in plan if p["action"] not in ("keep", "erase")]
        gone = [p for p in plan if p["action"] == "erase"]
        if not (todo or gone) or check_mode:
            return bool(todo or gone)
        if todo:
            rpm.upgrade([p["file"] for p in todo], [p["name"] + "-" + p["evr"] for p in todo], bool(lowered), nodeps)
        still = rpm.installed_versions([p["name"] for p in gone])  # a new package may have obsoleted one
        gone = [p for p in gone if still[p["name"]] is not None]
        if gone:
            rpm.erase([p["name"] for p in gone], nodeps, "no longer in the release",
                      "the release's own packages are installed, current still names the release before")
        return True

    def report(self, state: Any, record: Dict[str, Any], name: Optional[str]) -> Dict[str, Any]:
        """The packages the release ``current`` runs wants, and what the node has of each."""
        recorded = (record["releases"].get(name) or {}).get("packages") if name else None
        have = rpm.installed_versions([package["name"] for package in recorded or []])
        packages = []
        for package in recorded or []:
            installed = have[package["name"]]
            label = f"{package['name']}-{installed}" if installed else f"{package['name']} (not installed)"
            if installed and installed != package["evr"]:
                label += f" (release wants {package['evr']})"
            packages.append({"name": package["name"], "wanted": package["evr"], "installed": installed, "label": label})
        return {"packages": packages}
