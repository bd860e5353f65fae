# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The spack backend: the recipe's spack.yaml, and Spack building it into the mount point."""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._env.metadata import META_DIR
from ansible_collections.sciops.fleet.plugins.module_utils._env.tools import run_tool, tool_version
from ansible_collections.sciops.fleet.plugins.module_utils._env.tree import copy_tree


def spack_yaml(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """The spack.yaml of RECIPE's spack backend: specs, compilers as requirements, packages, views under the mount."""
    spack = recipe["spack"]
    mount = recipe["mount"]
    packages = {name: dict(value) if isinstance(value, dict) else value for name, value in sorted(spack["packages"].items())}
    if spack["compilers"]:
        everything = dict(packages.get("all") or {})
        everything["require"] = [{"one_of": [f"%{c}" for c in spack["compilers"]]}] if len(spack["compilers"]) > 1 \
            else [f"%{spack['compilers'][0]}"]
        packages["all"] = everything
    views = {}
    for name, view in sorted(spack["views"].items()):
        entry = {"root": f"{mount}/views/{name}", "link": view.get("link", "roots")}
        for key in ("exclude", "projections", "link_type"):
            if key in view:
                entry[key] = view[key]
        views[name] = entry
    document = {"spack": {
        "specs": list(spack["specs"]),
        "view": views,
        "concretizer": {"unify": True, "reuse": False},
        "config": {"install_tree": {"root": f"{mount}/store"}},
        "packages": packages,
    }}
    if spack["mirrors"]:
        document["spack"]["mirrors"] = dict(sorted(spack["mirrors"].items()))
    return document


def require_spack(recipe: Dict[str, Any]) -> str:
    """The path of the spack command, or a clear error saying it is missing."""
    spack = shutil.which(recipe["spack"]["spack_command"])
    if not spack:
        raise EnvBuildError(f"recipe backend spack needs {recipe['spack']['spack_command']!r}, which is not on this build "
                            "host's PATH; install Spack there (and source its setup-env.sh), or build this recipe on a host "
                            "that has it")
    return spack


def build_spack(recipe: Dict[str, Any], root: str, scratch: str) -> Dict[str, Any]:
    """Build the recipe's environment with Spack at the mount point and copy it into ROOT; return the tools used."""
    spack = require_spack(recipe)
    env_dir = os.path.join(scratch, "spack-env")
    os.makedirs(env_dir)
    import yaml  # pylint: disable=import-outside-toplevel
    with open(os.path.join(env_dir, "spack.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(spack_yaml(recipe), handle, sort_keys=True)
    mount = recipe["mount"]
    # Spack installs into the mount point (paths are compiled into what it builds); the image is taken from there.
    if os.path.exists(mount) and os.listdir(mount):
        raise EnvBuildError(f"spack: the mount point {mount} on this build host is not empty; spack builds into it, "
                            "so empty it (or build on a host where it is free)")
    os.makedirs(mount, exist_ok=True)
    try:
        run_tool([spack, "-e", env_dir, "concretize", "-f"], "spack concretize")
        run_tool([spack, "-e", env_dir, "install", "--fail-fast"], "spack install")
        copy_tree(mount, root)
    finally:
        shutil.rmtree(mount, ignore_errors=True)
    shutil.copyfile(os.path.join(env_dir, "spack.yaml"), os.path.join(root, META_DIR, "spack.yaml"))
    return {"tools": {"spack": tool_version(spack)}}
