# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The ELF closure of a tree: the shared libraries its programs need, copied in and found through $ORIGIN."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from typing import Any, Dict, List, Sequence

from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._env.listing import tree_entries
from ansible_collections.sciops.fleet.plugins.module_utils._env.tools import require_tool, run_tool

# The C library and its loader come from the node: a copied libc would not match the node's loader.
SYSTEM_LIBRARIES = ("ld-linux*.so*", "ld64.so*", "libc.so*", "libm.so*", "libpthread.so*", "libdl.so*", "librt.so*",
                    "libresolv.so*", "libutil.so*", "libanl.so*", "libnsl.so*", "libmvec.so*", "linux-vdso.so*",
                    "linux-gate.so*")
_ELF_MAGIC = b"\x7fELF"


def is_elf(path: str) -> bool:
    """True when PATH is a readable ELF file."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _ELF_MAGIC
    except OSError:
        return False


def elf_files(root: str) -> List[str]:
    """Regular ELF files below ROOT (executables and shared libraries), sorted."""
    found = []
    for relative, kind, _mode, _size, _digest in tree_entries(root):
        if kind == "file" and is_elf(os.path.join(root, relative)):
            found.append(relative)
    return found


def _is_system_library(name: str, extra: Sequence[str]) -> bool:
    """True when the library NAME comes from the node: the C library, or a pattern of EXTRA."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in SYSTEM_LIBRARIES + tuple(extra))


def _ldd(path: str, library_path: Sequence[str]) -> Dict[str, str | None]:
    """``{soname: resolved path or None}`` of every library PATH needs, directly or not (ldd's view)."""
    env = dict(os.environ, LC_ALL="C")
    if library_path:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    proc = subprocess.run([shutil.which("ldd") or "ldd", path], capture_output=True, text=True, check=False, env=env)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "not a dynamic executable" in text:
        return {}
    needed = {}
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"^(\S+)\s+=>\s+(not found|(\S+))", line)
        if match:
            needed[match.group(1)] = None if match.group(2) == "not found" else match.group(3)
    return needed


def closure_libraries(root: str, tree: Dict[str, Any]) -> Dict[str, str]:
    """``{soname: path on the build host}`` of the shared libraries the ELF files below ROOT need, without the
    C library (which comes from the node) and without libraries the tree itself holds."""
    require_tool("ldd", "the tree backend's closure option needs it to find the libraries", "libc-bin")
    inside = {os.path.basename(p) for p in elf_files(root)}
    wanted, missing = {}, []
    for relative in elf_files(root):
        for soname, path in _ldd(os.path.join(root, relative), tree["_library_path"]).items():
            if _is_system_library(soname, tree["exclude_libraries"]) or soname in inside:
                continue
            if path is None:
                missing.append(f"{soname} (needed by {relative})")
            else:
                wanted[soname] = os.path.realpath(path)
    if missing:
        raise EnvBuildError(f"tree.closure: no library found for {', '.join(sorted(set(missing)))}; "
                            "add the directory that holds it to tree.library_path")
    return dict(sorted(wanted.items()))


def add_closure(root: str, tree: Dict[str, Any]) -> List[str]:
    """Copy the closure's libraries into ROOT/lib and make every ELF file find them there ($ORIGIN RUNPATH).

    Returns the list of sonames copied in."""
    libraries = closure_libraries(root, tree)
    if not libraries:
        return []
    patchelf = require_tool("patchelf", "the tree backend's closure option needs it to point the programs at lib/", "patchelf")
    lib_dir = os.path.join(root, "lib")
    os.makedirs(lib_dir, exist_ok=True)
    for soname, path in libraries.items():
        target = os.path.join(lib_dir, soname)
        shutil.copyfile(path, target)
        os.chmod(target, 0o755)
    for relative in elf_files(root):
        path = os.path.join(root, relative)
        if not _ldd(path, [lib_dir] + tree["_library_path"]):
            continue  # static, or not dynamically linked
        origin = os.path.relpath(lib_dir, os.path.dirname(path))
        runpath = "$ORIGIN" if origin == "." else f"$ORIGIN/{origin}"
        run_tool([patchelf, "--set-rpath", runpath, path], f"tree.closure: patchelf {relative}")
    return list(libraries)
