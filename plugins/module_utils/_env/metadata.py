# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The metadata inside an image and beside it.

Inside the image, ``meta/`` holds ``env.json`` (the uenv metadata: name, version, description, mount, views
with their environment variables), ``manifest.json`` (path, size, mode and sha256 of every file),
``provenance.json`` (recipe digest, input digest, tool versions, the build's fixed time) and the recipe.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._env.image import read_member
from ansible_collections.sciops.fleet.plugins.module_utils._env.listing import tree_entries
from ansible_collections.sciops.fleet.plugins.module_utils._env.recipe import public_recipe

META_DIR = "meta"
ENV_FILE = "meta/env.json"
MANIFEST_FILE = "meta/manifest.json"
PROVENANCE_FILE = "meta/provenance.json"
RECIPE_FILE = "meta/recipe.json"


def env_json(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """meta/env.json as the uenv tool reads it: name, version, description, mount, and per view the
    environment variable updates (``env.values.list`` with prepend/append ops, ``env.values.scalar``)."""
    views = {}
    for name, view in sorted(recipe["views"].items()):
        lists = {}
        for op, key in (("prepend", "prepend_path"), ("append", "append_path")):
            for var, values in sorted(view[key].items()):
                lists.setdefault(var, []).append({"op": op, "value": list(values)})
        views[name] = {"description": view["description"], "root": recipe["mount"],
                       "env": {"version": 1, "type": "augment",
                               "values": {"list": lists, "scalar": dict(sorted(view["set"].items()))}}}
    return {"name": recipe["name"], "version": recipe["version"], "description": recipe["description"],
            "mount": recipe["mount"], "views": views}


def file_manifest(root: str) -> List[Dict[str, Any]]:
    """Every file, link and directory of the image: path, kind, size, mode (octal string), sha256 or link target."""
    listing = []
    for relative, kind, mode, size, value in tree_entries(root):
        if relative == MANIFEST_FILE:
            continue
        entry = {"path": relative, "type": kind, "mode": "%04o" % mode}
        if kind == "file":
            entry.update(size=size, sha256=value)
        elif kind == "link":
            entry["target"] = value
        listing.append(entry)
    return listing


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(path, 0o644)


def write_meta(root: str, recipe: Dict[str, Any], provenance: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Write meta/ into the image tree ROOT; return the manifest of its files."""
    meta = os.path.join(root, META_DIR)
    os.makedirs(meta, exist_ok=True)
    os.chmod(meta, 0o755)
    _write_json(os.path.join(root, ENV_FILE), env_json(recipe))
    _write_json(os.path.join(root, RECIPE_FILE), public_recipe(recipe))
    _write_json(os.path.join(root, PROVENANCE_FILE), provenance)
    manifest = file_manifest(root)
    _write_json(os.path.join(root, MANIFEST_FILE), {"files": manifest})
    return manifest


def export_meta(dest: str, image_format: str, directory: str) -> Dict[str, str]:
    """Copy the image's env.json, manifest.json and provenance.json into DIRECTORY (for attaching them)."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for member in (ENV_FILE, MANIFEST_FILE, PROVENANCE_FILE):
        target = os.path.join(directory, os.path.basename(member))
        data = read_member(dest, image_format, member)
        try:
            with open(target, "rb") as handle:
                same = handle.read() == data
        except OSError:
            same = False
        if not same:
            atomic_write(target, data, mode=0o644)
        paths[os.path.basename(member).split(".")[0]] = target
    return paths
