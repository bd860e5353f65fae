# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Tar extraction that no member can steer outside its destination, whatever the order of its members.

Checking names against the destination before extracting is not enough: a symbolic link made by one member
changes where the names of later members lead. So no link is ever followed while a member is created: every
parent directory is opened one component at a time relative to the directory above it, with ``O_NOFOLLOW``,
and a parent that is a link (or not a directory) refuses the member. Link targets are checked against what
is already on disk, and once more against the finished tree, since a later link can change where an earlier
one leads. Hard links may only name regular files this archive already placed in the same tree. Modes,
owners and times are set through the descriptor of the file just created, or without following links.

Two policies:

- data (release content, pulled directories): no owners, no devices or fifos, no absolute link targets;
  setuid, setgid, sticky and group/other write bits are dropped, and the owner can always read and write.
- tree (an operating system tree for a machine or an environment image): numeric owners, full modes and
  device nodes and fifos are kept when running as root, and absolute link targets are allowed (they are read
  inside the tree, where it is mounted or booted); relative targets must still stay inside it.

Standard library only: this runs on managed nodes.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from typing import Set

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import ArchiveError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINK_HOPS = 40  # what the kernel allows before ELOOP
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _refused(archive, member, reason):
    """The error for a member of ARCHIVE that was refused: it would land, or lead, outside the destination, or is
    not allowed."""
    return ArchiveError(f"archive {archive}: member {member!r} {reason}; the archive is refused and nothing of it "
                        "is kept: rebuild it without that member", archive, member)


def _split(name, archive, member, inside):
    """The components of NAME relative to the root: absolute names and ``..`` above the root are refused."""
    if name.startswith("/"):
        raise _refused(archive, member, f"has the absolute name {name!r}, outside {inside}")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise _refused(archive, member, f"leads with '..' outside {inside}")
            parts.pop()
        else:
            parts.append(part)
    return parts


def _kind(mode):
    for test, word in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISREG, "file")):
        if test(mode):
            return word
    return "special file"


class _Extraction:
    """One extraction into ROOT: the directory descriptors, what was created, and what is left to do at the end."""

    def __init__(self, root, archive, tree, inside):
        self.root = root
        self.inside = inside
        self.archive = archive
        self.tree = tree
        self.privileged = tree and os.geteuid() == 0
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.created = []  # (parts, is_dir) in creation order, for the cleanup after a refusal
        self.regular = {}  # "a/b" -> (st_dev, st_ino) of regular files this archive placed
        self.links = []  # (parts, target, member name) of relative symbolic links, checked again at the end
        self.directories = []  # (parts, member) whose metadata is set once their content is in place

    def close(self):
        os.close(self.root_fd)

    def open_parent(self, parts, name, create=True):
        """A descriptor of the directory holding PARTS[-1]; missing directories are created, links refused."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts[:-1]):
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.created.append((parts[:depth + 1], True))
                    self.directories.append((parts[:depth + 1], None))
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[:depth + 1])
                    raise _refused(self.archive, name,
                                   f"would be written through {where!r}, which is not a directory "
                                   "(a symbolic link or a file)") from None
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def existing(fd, leaf):
        try:
            return os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def clear_for(self, fd, leaf, member, wanted):
        """Make room for a member of kind WANTED at LEAF: a file may replace a file; anything else is refused."""
        info = self.existing(fd, leaf)
        if info is None:
            return
        if wanted == "directory" and stat.S_ISDIR(info.st_mode):
            return
        if wanted == "file" and stat.S_ISREG(info.st_mode):
            os.unlink(leaf, dir_fd=fd)
            return
        raise _refused(self.archive, member.name, f"would replace the {_kind(info.st_mode)} already at that path")

    def lstat_parts(self, parts):
        try:
            # Every component but the last is a real directory (links were resolved on the way): nothing is followed.
            return os.lstat(os.path.join(self.root, *parts)) if parts else os.lstat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def escapes(self, start, target):
        """Why TARGET, read from the directory START (parts), leads outside the root; None when it stays inside."""
        if target.startswith("/"):
            if not self.tree:
                return f"is a symbolic link to the absolute path {target!r}, outside {self.inside}"
            start = []
        resolved = list(start)
        pending = target.split("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    return f"is a symbolic link to {target!r}, which leads outside {self.inside}"
                resolved.pop()
                continue
            resolved.append(part)
            info = self.lstat_parts(resolved)
            if info is None or not stat.S_ISLNK(info.st_mode):
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return f"is a symbolic link to {target!r}, which loops"
            inner = os.readlink(os.path.join(self.root, *resolved))
            resolved.pop()
            if inner.startswith("/"):
                if not self.tree:
                    return (f"is a symbolic link to {target!r}, which leads through the absolute link {inner!r} "
                            f"outside {self.inside}")
                resolved = []
            pending = inner.split("/") + pending
        return None

    def mode_for(self, member):
        mode = member.mode & 0o7777
        if self.tree:
            return mode
        mode &= 0o755
        if member.isdir():
            return mode | 0o700
        if not mode & 0o100:
            mode &= ~0o011
        return mode | 0o600

    def finish_fd(self, fd, member):
        """Owner, mode and time of the object open as FD (never a link)."""
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, self.mode_for(member))  # after chown, which clears setuid
        os.utime(fd, ns=(int(member.mtime * 1e9),) * 2)

    def add(self, tar, member):
        parts = _split(member.name, self.archive, member.name, self.inside)
        if not parts:
            if not member.isdir():
                raise _refused(self.archive, member.name, f"names {self.inside} itself and is not a directory")
            return  # the destination's own entry: its metadata is the caller's
        fd = self.open_parent(parts, member.name)
        leaf = parts[-1]
        try:
            if member.isdir():
                self.add_directory(fd, leaf, parts, member)
            elif member.isreg():
                self.add_file(fd, leaf, parts, tar, member)
            elif member.islnk():
                self.add_hard_link(fd, leaf, parts, member)
            elif member.issym():
                self.add_symlink(fd, leaf, parts, member)
            elif member.ischr() or member.isblk() or member.isfifo():
                self.add_special(fd, leaf, parts, member)
            else:
                raise _refused(self.archive, member.name, "is of a type this collection does not extract")
        finally:
            os.close(fd)

    def add_directory(self, fd, leaf, parts, member):
        self.clear_for(fd, leaf, member, "directory")
        try:
            os.mkdir(leaf, 0o700, dir_fd=fd)
            self.created.append((parts, True))
        except FileExistsError:
            pass
        self.directories.append((parts, member))

    def add_file(self, fd, leaf, parts, tar, member):
        self.clear_for(fd, leaf, member, "file")
        out = os.open(leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=fd)
        self.created.append((parts, False))
        try:
            source = tar.extractfile(member)
            with os.fdopen(os.dup(out), "wb") as sink:
                shutil.copyfileobj(source, sink, 1024 * 1024)
            self.finish_fd(out, member)
            info = os.fstat(out)
        finally:
            os.close(out)
        self.regular["/".join(parts)] = (info.st_dev, info.st_ino)

    def add_hard_link(self, fd, leaf, parts, member):
        target = _split(member.linkname, self.archive, member.name, self.inside)
        key = "/".join(target)
        if key not in self.regular:
            raise _refused(self.archive, member.name,
                           f"is a hard link to {member.linkname!r}, which is not a regular file this archive "
                           "placed before it")
        try:
            source_fd = self.open_parent(target, member.name, create=False)
        except FileNotFoundError:
            source_fd = None
        try:
            info = self.existing(source_fd, target[-1]) if source_fd is not None else None
            if info is None or not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != self.regular[key]:
                raise _refused(self.archive, member.name,
                               f"is a hard link to {member.linkname!r}, which is no longer the file this "
                               "archive placed there")
            self.clear_for(fd, leaf, member, "file")
            # The linked file keeps its own mode and owner: the header of a hard link changes nothing.
            os.link(target[-1], leaf, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            if source_fd is not None:
                os.close(source_fd)
        self.created.append((parts, False))
        self.regular["/".join(parts)] = self.regular[key]

    def add_symlink(self, fd, leaf, parts, member):
        reason = self.escapes(parts[:-1], member.linkname)
        if reason:
            raise _refused(self.archive, member.name, reason)
        self.clear_for(fd, leaf, member, "symbolic link")
        os.symlink(member.linkname, leaf, dir_fd=fd)
        self.created.append((parts, False))
        if self.privileged:
            os.chown(leaf, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
        os.utime(leaf, ns=(int(member.mtime * 1e9),) * 2, dir_fd=fd, follow_symlinks=False)
        self.links.append((parts, member.linkname, member.name))

    def add_special(self, fd, leaf, parts, member):
        if not self.tree:
            raise _refused(self.archive, member.name, f"is a device node or fifo, which may not be placed in {self.inside}")
        if not self.privileged and not member.isfifo():
            raise _refused(self.archive, member.name, "is a device node; only root can create it")
        self.clear_for(fd, leaf, member, "special file")
        kind = stat.S_IFIFO if member.isfifo() else stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(leaf, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=fd)
        self.created.append((parts, False))
        # O_PATH gives a descriptor of the node itself without opening the device or blocking on the fifo.
        node = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            if self.privileged:
                os.chown(f"/proc/self/fd/{node}", member.uid, member.gid)
            os.chmod(f"/proc/self/fd/{node}", self.mode_for(member))
            os.utime(f"/proc/self/fd/{node}", ns=(int(member.mtime * 1e9),) * 2)
        finally:
            os.close(node)

    def finish(self):
        """Check every link against the finished tree, then set directory metadata, deepest first."""
        for parts, target, name in self.links:
            reason = self.escapes(parts[:-1], target)
            if reason:
                raise _refused(self.archive, name, reason + " once the archive is extracted")
        for parts, member in sorted(self.directories, key=lambda item: -len(item[0])):
            fd = self.open_parent(parts + [""], "/".join(parts), create=False)
            try:
                if member is None:
                    os.fchmod(fd, 0o755)
                else:
                    self.finish_fd(fd, member)
            finally:
                os.close(fd)

    def remove_created(self):
        """Remove what this extraction created, newest first, never following a link."""
        for parts, is_dir in reversed(self.created):
            try:
                fd = self.open_parent(parts, "/".join(parts), create=False)
            except (OSError, ArchiveError):
                continue
            try:
                if is_dir:  # its own content was created later, so it is gone by now
                    os.rmdir(parts[-1], dir_fd=fd)
                else:
                    os.unlink(parts[-1], dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)


def _open_archive(path, archive):
    """A TarFile over PATH (plain, gzip, bzip2, xz; zstd through the zstd program) and the process to wait for."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != _ZSTD_MAGIC:
        try:
            return tarfile.open(path, "r:*"), None
        except tarfile.TarError as exc:
            raise ArchiveError(f"archive {archive} cannot be read as a tar archive: {exc}") from None
    program = shutil.which("zstd")
    if not program:
        raise ArchiveError(f"archive {archive} is compressed with zstd, and this node has no zstd program to read it; "
                           "install zstd, or compress the archive with gzip or xz")
    process = subprocess.Popen([program, "-dcq", "--", path], stdout=subprocess.PIPE)  # pylint: disable=consider-using-with
    return tarfile.open(fileobj=process.stdout, mode="r|"), process


def extract_tar(path: str, dest: str, tree: bool = False, name: str | None = None,
                inside: str = "the destination", directories: Set[str] | None = None) -> int:
    """Extract the tar archive PATH into the existing directory DEST, refusing any member that could land or
    lead outside it (see the module docstring; TREE selects the operating-system-tree policy).

    On a refusal (ArchiveError, naming NAME or the archive's base name, and the member; INSIDE names DEST in
    messages) or any other error, everything the extraction created is removed again. Returns the number of
    members extracted. When a set DIRECTORIES is given, the relative paths ("a/b") of the directories the archive
    has members for are added to it; the parents it only implies, created with mode 0755, are not."""
    archive = name or os.path.basename(path)
    root = os.path.realpath(dest)
    job = _Extraction(root, archive, tree, inside)
    tar, process = None, None
    count = 0
    try:
        tar, process = _open_archive(path, archive)
        try:
            for member in tar:
                job.add(tar, member)
                count += 1
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"archive {archive} is damaged after {count} members: {exc}") from None
        job.finish()
        if directories is not None:
            directories.update("/".join(parts) for parts, member in job.directories if member is not None)
        if process is not None and process.wait() != 0:
            raise ArchiveError(f"archive {archive}: zstd could not decompress it (exit code {process.returncode})")
    except BaseException:
        job.remove_created()
        raise
    finally:
        if tar is not None:
            tar.close()
        if process is not None:
            process.stdout.close()
            process.wait()
        job.close()
    return count
