# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The build of an environment image: a recipe becomes a reproducible image (squashfs, tar.zst or a directory).

The same recipe and inputs give the same bytes: every file gets the fixed time, owners are root, entries are
sorted, and nothing of the build host (its paths, users, host name, clock) gets in. A build happens in a
scratch directory beside the destination and is renamed into place whole; a failed build leaves nothing there.
A build whose inputs digest matches the build record beside the image, and whose image is intact, is skipped.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir, fsync_file
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._env.image import (
    COMPRESSIONS,
    FORMATS,
    fix_times,
    mksquashfs_argv,
    parse_block_size,
    write_tar_zst,
)
from ansible_collections.sciops.fleet.plugins.module_utils._env.inputs import build_options, inputs_digest, recipe_digest
from ansible_collections.sciops.fleet.plugins.module_utils._env.metadata import MANIFEST_FILE, META_DIR, env_json, write_meta
from ansible_collections.sciops.fleet.plugins.module_utils._env.recipe import load_recipe
from ansible_collections.sciops.fleet.plugins.module_utils._env.spack import build_spack, require_spack
from ansible_collections.sciops.fleet.plugins.module_utils._env.tools import require_tool, run_tool, tool_version
from ansible_collections.sciops.fleet.plugins.module_utils._env.tree import build_tree
from ansible_collections.sciops.fleet.plugins.module_utils._env.venv import build_venv

BUILD_RECORD_SUFFIX = ".build.json"


def build_record_path(dest: str) -> str:
    """The build record beside the image DEST: what it was built from, and its digest."""
    return dest.rstrip("/") + BUILD_RECORD_SUFFIX


def read_build_record(dest: str) -> Dict[str, Any] | None:
    """The build record of DEST, or None when there is none (or it cannot be read)."""
    try:
        with open(build_record_path(dest), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def image_digest(dest: str, image_format: str) -> str:
    """sha256 of the image file, or of a directory image's manifest (what identifies its content)."""
    if image_format == "directory":
        return digest_file(os.path.join(dest, MANIFEST_FILE))[0]
    return digest_file(dest)[0]


def is_current(dest: str, image_format: str, digest_of_inputs: str) -> Dict[str, Any] | None:
    """The build record of DEST when the image there was built from these inputs and is intact, else None."""
    record = read_build_record(dest)
    if not record or record.get("inputs_digest") != digest_of_inputs or record.get("format") != image_format:
        return None
    try:
        if image_digest(dest, image_format) != record.get("sha256"):
            return None
    except OSError:
        return None
    return record


def fixed_epoch(recipe: Dict[str, Any], option: int | str | None) -> int:
    """The build's time: the option, else the recipe's source_date_epoch, else $SOURCE_DATE_EPOCH, else 0."""
    for value in (option, recipe.get("source_date_epoch"), os.environ.get("SOURCE_DATE_EPOCH")):
        if value is not None and str(value).strip() != "":
            try:
                return int(value)
            except ValueError:
                raise EnvBuildError(f"SOURCE_DATE_EPOCH {value!r} is not a whole number of seconds") from None
    return 0


def _install(scratch_result: str, dest: str, image_format: str, scratch: str) -> None:
    """Move the finished image to DEST: one rename for a file; a directory replaces the old one by two renames."""
    if image_format != "directory":
        os.replace(scratch_result, dest)
        fsync_dir(os.path.dirname(dest))
        return
    if os.path.lexists(dest):
        os.rename(dest, os.path.join(scratch, "old"))  # removed with the scratch directory
    os.rename(scratch_result, dest)
    fsync_dir(os.path.dirname(dest))


def build(recipe_path: str, dest: str, image_format: str = "squashfs", compression: str = "zstd",
          level: int | None = None, block_size: str | int = "1M", source_date_epoch: int | None = None,
          processors: int | None = None, force: bool = False, check_mode: bool = False) -> Dict[str, Any]:
    """Build RECIPE_PATH into DEST; return a result dict (changed, sha256, size, meta, ...).

    Nothing is written at DEST unless the whole build succeeded."""
    started = time.monotonic()
    if image_format not in FORMATS:
        raise EnvBuildError(f"format {image_format!r} is not one of {', '.join(FORMATS)}")
    if compression not in COMPRESSIONS:
        raise EnvBuildError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    block = parse_block_size(block_size)
    recipe = load_recipe(recipe_path)
    epoch = fixed_epoch(recipe, source_date_epoch)
    if recipe["backend"] == "spack":
        require_spack(recipe)  # before anything is created
    if image_format == "squashfs":
        require_tool("mksquashfs", "format squashfs needs it", "squashfs-tools")
    dest = os.path.abspath(dest)
    if not os.path.isdir(os.path.dirname(dest)):
        raise EnvBuildError(f"dest {dest}: its directory {os.path.dirname(dest)} does not exist; create it first")
    options = build_options(image_format, compression, level, block)
    digest_of_inputs = inputs_digest(recipe, dict(options, epoch=epoch))
    result = {"path": dest, "format": image_format, "name": recipe["name"], "version": recipe["version"],
              "mount": recipe["mount"], "inputs_digest": digest_of_inputs, "meta": env_json(recipe),
              "recipe_digest": recipe_digest(recipe)}
    previous = read_build_record(dest)
    current = None if force else is_current(dest, image_format, digest_of_inputs)
    if current:
        result.update(changed=False, sha256=current["sha256"], size=current["size"], files=current.get("files"),
                      libraries=current.get("libraries", []), tools=current.get("tools", {}),
                      seconds=round(time.monotonic() - started, 3))
        return result
    result.update(changed=True, sha256=None, size=None, before_sha256=(previous or {}).get("sha256"))
    if check_mode:
        return result
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.build-", dir=os.path.dirname(dest))
    try:
        os.chmod(scratch, 0o755)
        root = os.path.join(scratch, "root")
        os.makedirs(root, mode=0o755)
        os.chmod(root, 0o755)
        outcome = {"libraries": [], "tools": {}}
        if recipe["backend"] == "tree":
            # mksquashfs and tar take owners and times from their options; the files themselves stay as they are.
            outcome.update(build_tree(recipe, root, hard_links=image_format != "directory"))
        elif recipe["backend"] == "venv":
            outcome.update(build_venv(recipe, root, epoch))
        else:
            os.makedirs(os.path.join(root, META_DIR))
            outcome.update(build_spack(recipe, root, scratch))
        tools = dict(outcome["tools"])
        if image_format == "squashfs":
            tools["mksquashfs"] = tool_version("mksquashfs", ("-version",))
        elif image_format == "tar.zst":
            tools["zstd"] = tool_version("zstd", ("--version",))
        if recipe["backend"] == "tree" and recipe["tree"]["closure"] and outcome["libraries"]:
            tools["patchelf"] = tool_version("patchelf")
        provenance = {"builder": "sciops.fleet.env_build", "recipe_digest": result["recipe_digest"],
                      "inputs_digest": digest_of_inputs, "backend": recipe["backend"], "options": options,
                      "source_date_epoch": epoch,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
                      "tools": dict(sorted(tools.items())), "libraries": outcome["libraries"]}
        manifest = write_meta(root, recipe, provenance)
        if image_format == "directory":
            fix_times(root, epoch)
        built = root
        if image_format == "squashfs":
            built = os.path.join(scratch, "image.squashfs")
            run_tool(mksquashfs_argv(root, built, compression, level, block, epoch, processors), f"mksquashfs {dest}")
        elif image_format == "tar.zst":
            built = os.path.join(scratch, "image.tar.zst")
            write_tar_zst(root, built, epoch, level)
        if image_format != "directory":
            os.chmod(built, 0o644)
            # The image goes to disk while it is hashed from the page cache: neither waits for the other.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                synced = pool.submit(fsync_file, built)
                sha256 = image_digest(built, image_format)
                synced.result()
        else:
            sha256 = image_digest(root, image_format)
        size = os.path.getsize(built) if image_format != "directory" else sum(e.get("size", 0) for e in manifest)
        _install(built, dest, image_format, scratch)
        record = {"inputs_digest": digest_of_inputs, "sha256": sha256, "size": size, "format": image_format,
                  "files": len(manifest), "libraries": outcome["libraries"], "tools": provenance["tools"],
                  "recipe_digest": result["recipe_digest"]}
        atomic_write(build_record_path(dest), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(sha256=sha256, size=size, files=len(manifest), libraries=outcome["libraries"],
                  tools=provenance["tools"], seconds=round(time.monotonic() - started, 3))
    return result
