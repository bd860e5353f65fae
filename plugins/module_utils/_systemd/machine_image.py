# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Machine images: what format an image is, how its tree is laid out in a directory, and what identifies it.

An image is a directory tree, a tar archive (plain or compressed) or a squashfs image. nspawn_container installs
machines from them, and releases install environment images with the same routines.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.archive import extract_tar
from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import ArchiveError
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file, tree_digest
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MachineError


def detect_format(path: str) -> str:
    """``directory``, ``squashfs`` or ``tar`` (plain or compressed with gzip, bzip2, xz or zstd), from the content."""
    if os.path.isdir(path):
        return "directory"
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except FileNotFoundError:
        raise MachineError(f"image {path} does not exist on the node") from None
    except OSError as exc:
        raise MachineError(f"image {path} cannot be read: {exc.strerror}") from None
    if head[:4] == b"hsqs":
        return "squashfs"
    compressed = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
    if head.startswith(compressed) or head[257:262] == b"ustar":
        return "tar"
    raise MachineError(f"image {path} is neither a directory, a squashfs image nor a tar archive; "
                       "set image_format if it is one of them")


def extract_image(image: str, image_format: str, dest: str, run_tool: Callable[[List[str], str], Any],
                  which: Callable[[str], str | None], scratch_dir: str) -> None:
    """Fill the empty directory DEST with IMAGE's tree (a directory, a tar archive or a squashfs image), owners,
    modes and special files kept. A squashfs image needs unsquashfs, or squashfuse (mounted in a temporary
    directory under SCRATCH_DIR and copied). RUN_TOOL(argv, what) raises on failure; WHICH(name) finds a tool."""
    if image_format == "directory":
        run_tool(["cp", "-a", "--", os.path.join(image, "."), dest], f"copying {image}")
    elif image_format == "tar":
        try:
            extract_tar(image, dest, tree=True)
        except ArchiveError as exc:
            raise MachineError(f"extracting {image}: {exc}") from None
    elif which("unsquashfs"):
        # unsquashfs creates the destination itself.
        os.rmdir(dest)
        run_tool([which("unsquashfs"), "-no-progress", "-dest", dest, image], f"unsquashfs {image}")
    elif which("squashfuse"):
        mountpoint = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.mnt-", dir=scratch_dir)
        try:
            run_tool([which("squashfuse"), image, mountpoint], f"squashfuse {image}")
            try:
                run_tool(["cp", "-a", "--", os.path.join(mountpoint, "."), dest], f"copying {image}")
            finally:
                unmount = which("fusermount3") or which("fusermount")
                run_tool([unmount, "-u", mountpoint] if unmount else ["umount", mountpoint], f"unmounting {mountpoint}")
        finally:
            try:
                os.rmdir(mountpoint)
            except OSError:
                pass
    else:
        raise MachineError(f"image {image} is a squashfs image, and this node has neither unsquashfs "
                           "(squashfs-tools) nor squashfuse to read it; install one, or use a tarball")


def file_identity(path: str) -> List[int]:
    """``[size, mtime_ns, inode]`` of file PATH: unchanged only if nobody rewrote or replaced the file."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def image_digest(path: str, image_format: str) -> str:
    return tree_digest(path) if image_format == "directory" else digest_file(path)[0]
