# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The files record of an installed release (``.sciops-files.json``): every file's digest, size and mode as it was
installed, written once when the release is placed and read back to verify the release and to find drift."""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, Optional, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import fsync_dir, fsync_file
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (
    RELEASE_FILE,
    ReleaseError,
    release_dir_name,
    validate_release,
)
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import FILES_RECORD, AppState

FileEntry = Dict[str, Any]


def _mode(path: str) -> str:
    return "%04o" % (os.stat(path).st_mode & 0o7777)


def special_kind(mode: int) -> str:
    """What a file that is neither regular nor a link is, for the files record."""
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


def special_matches(path: str, entry: FileEntry) -> bool:
    """Whether PATH is still the special file ENTRY records (checked without opening it)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode) and special_kind(info.st_mode) == entry["type"]


def record_files(root: str, known: Optional[Dict[str, FileEntry]] = None) -> Dict[str, FileEntry]:
    """Digest, size and mode of every file below ROOT (for drift checks), each file flushed to disk.

    KNOWN maps paths relative to ROOT to the digest and size they were verified with when placed (and flushed);
    they are not read again."""
    known = known or {}
    files: Dict[str, FileEntry] = {}
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                files[relative] = {"link": os.readlink(path)}
                continue
            if not stat.S_ISREG(info.st_mode):  # a fifo or device of an unpacked tree: opening it could block
                files[relative] = {"type": special_kind(info.st_mode), "mode": "%04o" % (info.st_mode & 0o7777)}
                continue
            if relative in known:
                files[relative] = dict(known[relative], mode=_mode(path))
                continue
            fsync_file(path)
            digest, size = digest_file(path)
            files[relative] = {"digest": digest, "size": size, "mode": _mode(path)}
        for name in dirs:
            fsync_dir(os.path.join(base, name))
    return files


def verify_release_dir(state: AppState, name: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(release dict or None, reason)``: release NAME is complete when its files record names the release id of
    NAME, its release.json validates, and every recorded file is there with its size and digest (links too)."""
    root = state.release_path(name)
    try:
        with open(os.path.join(root, FILES_RECORD), encoding="utf-8") as handle:
            files_record = json.load(handle)
        digest, files = files_record["digest"], files_record["files"]
        with open(os.path.join(root, RELEASE_FILE), encoding="utf-8") as handle:
            release = validate_release(json.load(handle), os.path.join(root, RELEASE_FILE))
    except (OSError, ValueError, KeyError, TypeError, ReleaseError) as exc:
        return None, f"its files record or {RELEASE_FILE} cannot be read ({exc})"
    if not isinstance(digest, str) or not is_digest(digest) or release_dir_name(release, digest) != name:
        return None, f"its files record names release {digest!r}, which is not the release {name}"
    for relative, entry in sorted(files.items()):
        path = os.path.join(root, relative)
        if "link" in entry:
            if not os.path.islink(path) or os.readlink(path) != entry["link"]:
                return None, f"{relative} is not the link the files record names"
        elif "type" in entry:
            if not special_matches(path, entry):
                return None, f"{relative} is not the {entry['type']} the files record names"
        elif os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) != entry.get("size"):
            return None, f"{relative} is missing or has another size than its files record says"
    for relative, entry in sorted(files.items()):  # sizes first: a short file fails without being read
        if "link" not in entry and "type" not in entry and digest_file(os.path.join(root, relative))[0] != entry.get("digest"):
            return None, f"{relative} does not have the digest its files record names"
    return dict(release, digest=digest), None


def drift(state: AppState, name: str) -> Dict[str, Any]:
    """How release NAME on disk differs from what was installed: changed, missing and added files."""
    root = state.release_path(name)
    try:
        with open(os.path.join(root, FILES_RECORD), encoding="utf-8") as handle:
            recorded = json.load(handle)["files"]
    except (OSError, ValueError, KeyError):
        return {"changed": [], "missing": [], "added": [], "error": f"{root} has no readable files record"}
    changed, missing, seen = [], [], set()
    for relative, entry in sorted(recorded.items()):
        path = os.path.join(root, relative)
        seen.add(relative)
        if "link" in entry:
            if not os.path.islink(path) or os.readlink(path) != entry["link"]:
                (missing if not os.path.lexists(path) else changed).append(relative)
            continue
        if "type" in entry:
            if not special_matches(path, entry):
                (missing if not os.path.lexists(path) else changed).append(relative)
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            missing.append(relative)
        elif os.path.getsize(path) != entry["size"] or digest_file(path)[0] != entry["digest"]:
            changed.append(relative)
        elif _mode(path) != entry["mode"]:
            changed.append(relative)
    added = []
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(base, d))]  # a mounted image is read-only
        for file_name in names:
            relative = os.path.relpath(os.path.join(base, file_name), root)
            if relative not in seen and relative != FILES_RECORD:
                added.append(relative)
    return {"changed": changed, "missing": missing, "added": sorted(added)}
