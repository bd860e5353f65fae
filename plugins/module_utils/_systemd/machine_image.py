# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Machine images: what format an image is, how its tree is laid out in a directory, and what identifies it.

An image is a directory tree, a tar archive (plain or compressed), a squashfs image, or the layers of an OCI container
image. nspawn_container installs machines from them, and releases install environment images with the same routines.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any, Callable, List, Set, Tuple

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


# The OCI image spec's whiteouts: ".wh.NAME" removes NAME of the layers below, the opaque whiteout all of its directory.
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
# Other names with this prefix are aufs's own bookkeeping, not changes to the tree.
AUFS_META_PREFIX = ".wh..wh."


def _lstat(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_up(path, mode):
    """Give the owner full access to the real directory PATH (of MODE) unless running as root, whom modes do not bind:
    a layer may hold directories its owner cannot write, and they are written to or emptied all the same."""
    if os.geteuid() != 0 and mode & 0o700 != 0o700:
        os.chmod(path, stat.S_IMODE(mode) | 0o700)


def _remove(path):
    """Remove PATH, never following a link: a real directory with all it holds, anything else by unlink."""
    info = _lstat(path)
    if info is None:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    _open_up(path, info.st_mode)
    for base, dirs, _files in os.walk(path):
        for name in dirs:
            sub = os.path.join(base, name)
            found = os.lstat(sub)
            if stat.S_ISDIR(found.st_mode):  # os.walk lists links to directories too; they are not followed
                _open_up(sub, found.st_mode)
    shutil.rmtree(path)


class _Changeset:
    """One layer, extracted to a scratch directory, merged into the image's tree."""

    def __init__(self, where: str, directories: Set[str]) -> None:
        self.where = where
        self.directories = directories  # the directories the layer has members for, not only implies

    def refused(self, member, reason):
        return MachineError(f"{self.where}: member {member!r} {reason}; the image is refused")

    def merge(self, source, target, relative):
        """Apply the extracted directory SOURCE (RELATIVE in the layer) to TARGET, a real directory of the tree:
        whiteouts hide what lower layers put there, then each entry is added, replaced or merged."""
        _open_up(source, os.lstat(source).st_mode)
        _open_up(target, os.lstat(target).st_mode)
        names = sorted(os.listdir(source))
        for name in names:
            if name.startswith(WHITEOUT_PREFIX):
                self.whiteout(target, f"{relative}{name}", name)
        for name in names:
            if not name.startswith(WHITEOUT_PREFIX):
                self.place(os.path.join(source, name), os.path.join(target, name), f"{relative}{name}")

    def whiteout(self, target, member, name):
        if name == OPAQUE_WHITEOUT:
            for entry in os.listdir(target):
                _remove(os.path.join(target, entry))
        elif not name.startswith(AUFS_META_PREFIX):
            hidden = name[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise self.refused(member, "is a whiteout that names no entry of its directory")
            _remove(os.path.join(target, hidden))

    def place(self, source, target, member):
        info = os.lstat(source)
        existing = _lstat(target)
        if not stat.S_ISDIR(info.st_mode):
            _remove(target)
            os.rename(source, target)
            return
        explicit = member in self.directories
        if existing is not None and stat.S_ISLNK(existing.st_mode) and not explicit:
            inner = sorted(os.listdir(source))
            raise self.refused(f"{member}/{inner[0]}" if inner else member,
                               f"would be written through {member!r}, a symbolic link a lower layer put in the tree")
        created = existing is None or not stat.S_ISDIR(existing.st_mode)
        if created:
            _remove(target)
            os.mkdir(target, 0o700)
        self.merge(source, target, member + "/")
        if created or explicit:
            # The directory's own member gives its owner, mode and time; one it only implies keeps those below it.
            if os.geteuid() == 0:
                os.lchown(target, info.st_uid, info.st_gid)
            os.chmod(target, stat.S_IMODE(info.st_mode))
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
        elif stat.S_IMODE(os.lstat(target).st_mode) != stat.S_IMODE(existing.st_mode):
            os.chmod(target, stat.S_IMODE(existing.st_mode))


def apply_layers(layers: List[Tuple[str, str]], dest: str, what: str) -> None:
    """Fill the empty directory DEST with the tree of the container image WHAT from its LAYERS, (path of the layer's
    tar archive, name of the layer in messages) bottom first, as the OCI image spec applies changesets.

    Each layer is extracted under the operating-system-tree policy of extract_tar to a scratch directory beside DEST,
    then moved in: its whiteouts remove what lower layers put in its directories, a directory merges into a
    directory, and anything else replaces what is there. No link in DEST is followed: a member under a symbolic link
    of a lower layer (other than a directory replacing it) is refused, as is a whiteout that names no entry. On a
    MachineError or any other error DEST may hold part of the image (the caller removes it); the scratch directory
    is removed whatever happens."""
    root = os.path.realpath(dest)
    for path, layer in layers:
        where = f"{what}, {layer}"
        scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.layer-", dir=os.path.dirname(root))
        try:
            directories: Set[str] = set()
            extract_tar(path, scratch, tree=True, name=where, inside=f"the tree of {what}", directories=directories)
            _Changeset(where, directories).merge(scratch, root, "")
        except ArchiveError as exc:
            raise MachineError(str(exc)) from None
        except OSError as exc:
            raise MachineError(f"{where} cannot be applied to {dest}: {exc}") from None
        finally:
            try:
                _remove(scratch)
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)


def file_identity(path: str) -> List[int]:
    """``[size, mtime_ns, inode]`` of file PATH: unchanged only if nobody rewrote or replaced the file."""
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def image_digest(path: str, image_format: str) -> str:
    return tree_digest(path) if image_format == "directory" else digest_file(path)[0]
