# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The digests of what a build depends on: the recipe, the options that change the image's bytes, the input files."""

from __future__ import annotations

import json
import os
from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import (
    digest_bytes,
    digest_file,
    format_digest,
    new_hasher,
)
from ansible_collections.sciops.fleet.plugins.module_utils._env.closure import closure_libraries
from ansible_collections.sciops.fleet.plugins.module_utils._env.listing import tree_entries
from ansible_collections.sciops.fleet.plugins.module_utils._env.recipe import public_recipe


def _canonical(data: Any) -> bytes:
    """DATA as compact JSON with sorted keys: equal data, equal bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def recipe_digest(recipe: Dict[str, Any]) -> str:
    """sha256 of the recipe without its host-specific paths: the same recipe has the same digest on every host."""
    return digest_bytes(_canonical(public_recipe(recipe)))


def build_options(image_format: str, compression: str, level: int | None, block_size: int) -> Dict[str, Any]:
    """The options that change the image's bytes (part of the inputs digest)."""
    options = {"format": image_format}
    if image_format == "squashfs":
        options.update(compression=compression, level=level, block_size=block_size)
    elif image_format == "tar.zst":
        options.update(level=level)
    return options


def inputs_digest(recipe: Dict[str, Any], options: Dict[str, Any]) -> str:
    """sha256 over everything a build depends on: the recipe, the build options, the input files.

    Equal digests mean an equal image, so a build whose digest matches the last one is skipped.
    """
    hasher = new_hasher()
    hasher.update(_canonical({"recipe": public_recipe(recipe), "options": options}))
    backend = recipe["backend"]
    if backend == "tree":
        hasher.update(_canonical(tree_entries(recipe["tree"]["_source"])))
        if recipe["tree"]["closure"]:
            # The libraries copied in are inputs too: their digests follow from the binaries, resolved now.
            staged = recipe["tree"]["_source"]
            hasher.update(_canonical(sorted((n, digest_file(p)[0]) for n, p in
                                            closure_libraries(staged, recipe["tree"]).items())))
    elif backend == "venv":
        venv = recipe["venv"]
        for path in ([venv["_requirements_file"]] if venv.get("_requirements_file") else []) + venv["_files"]:
            hasher.update(_canonical([os.path.basename(path), digest_file(path)[0]]))
    return format_digest(hasher)
