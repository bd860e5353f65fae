# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The tree backend: a staged directory copied into the image, with its ELF closure where the recipe asks."""

from __future__ import annotations

import os
import shutil
from typing import Any, Collection, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import link_unsupported
from ansible_collections.sciops.fleet.plugins.module_utils._env.closure import add_closure, elf_files
from ansible_collections.sciops.fleet.plugins.module_utils._env.listing import tree_entries


def copy_tree(source: str, dest: str, hard_links: bool = False, copy: Collection[str] = ()) -> None:
    """Copy SOURCE into DEST (which exists) with links kept as links and modes kept.

    With HARD_LINKS, files are hard-linked where the file system allows (nothing reads their bytes twice), except
    those named in COPY, which a later step changes."""
    for relative, kind, mode, _size, target in tree_entries(source):
        src, dst = os.path.join(source, relative), os.path.join(dest, relative)
        if kind == "dir":
            os.makedirs(dst, exist_ok=True)
            os.chmod(dst, mode)
        elif kind == "link":
            os.symlink(target, dst)
        else:
            if hard_links and relative not in copy:
                try:
                    os.link(src, dst)
                    continue
                except OSError as exc:
                    if not link_unsupported(exc):
                        raise
                    hard_links = False
            shutil.copyfile(src, dst)
            os.chmod(dst, mode)


def build_tree(recipe: Dict[str, Any], root: str, hard_links: bool) -> Dict[str, Any]:
    """Copy the recipe's tree into ROOT (hard-linked where HARD_LINKS allows), with its closure; return what it added."""
    tree = recipe["tree"]
    # ELF files are patched in place by the closure step: those are copied, never linked to the source.
    patched = set(elf_files(tree["_source"])) if tree["closure"] else set()
    copy_tree(tree["_source"], root, hard_links=hard_links, copy=patched)
    return {"libraries": add_closure(root, tree) if tree["closure"] else []}
