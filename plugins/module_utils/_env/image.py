# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The image formats: a squashfs written by mksquashfs, a tar.zst, a directory; reading a member back."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from typing import List

from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._env.listing import tree_entries
from ansible_collections.sciops.fleet.plugins.module_utils._env.tools import require_tool

FORMATS = ("squashfs", "tar.zst", "directory")
COMPRESSIONS = ("zstd", "gzip", "xz", "lz4", "lzo")
_BLOCK_RE = re.compile(r"^([0-9]+)([KkMm]?)$")


def parse_block_size(value: str | int) -> int:
    """Bytes of a block size given as 131072, '128K' or '1M'; mksquashfs takes 4K to 1M, a power of two."""
    match = _BLOCK_RE.match(str(value).strip())
    if not match:
        raise EnvBuildError(f"block_size {value!r} is not a size; write it as 131072, 128K or 1M")
    size = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if size < 4096 or size > 1024 * 1024 or size & (size - 1):
        raise EnvBuildError(f"block_size {value!r} must be a power of two from 4K to 1M (mksquashfs's range)")
    return size


def mksquashfs_argv(source: str, image: str, compression: str = "zstd", level: int | None = None,
                    block_size: int = 1024 * 1024, epoch: int = 0, processors: int | None = None) -> List[str]:
    """The mksquashfs command line of a reproducible image: fixed times, root owners, no xattrs, no append."""
    argv = [shutil.which("mksquashfs") or "mksquashfs", source, image, "-noappend", "-no-progress", "-quiet",
            "-comp", compression, "-b", str(block_size), "-all-root", "-no-xattrs",
            "-mkfs-time", str(epoch), "-all-time", str(epoch)]
    if level is not None:
        argv += ["-Xcompression-level", str(level)]
    if processors:
        argv += ["-processors", str(processors)]
    return argv


def write_tar_zst(root: str, image: str, epoch: int, level: int | None = None) -> None:
    """A tar of ROOT with sorted entries, root owners and the fixed time, compressed with zstd."""
    zstd = require_tool("zstd", "format tar.zst needs it", "zstd")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, kind, mode, size, target in tree_entries(root):
            info = tarfile.TarInfo(relative)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, epoch, 0, 0, "root", "root"
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = size
                with open(os.path.join(root, relative), "rb") as handle:
                    tar.addfile(info, handle)
    argv = [zstd, "-q", "-f", "--no-progress", "-T1", f"-{level or 19}", "-o", image]
    proc = subprocess.run(argv, input=buffer.getvalue(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise EnvBuildError(f"zstd exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")


def fix_times(root: str, epoch: int) -> None:
    """Every entry gets the fixed time (links too), deepest first so that directories keep it."""
    for base, dirs, names in os.walk(root, topdown=False):
        for name in dirs + names:
            os.utime(os.path.join(base, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def read_member(dest: str, image_format: str, member: str) -> bytes:
    """The bytes of MEMBER (e.g. meta/env.json) of the image at DEST."""
    if image_format == "directory":
        with open(os.path.join(dest, member), "rb") as handle:
            return handle.read()
    if image_format == "squashfs":
        argv = [require_tool("unsquashfs", "reading the image's metadata needs it", "squashfs-tools"), "-cat", dest, member]
    else:
        argv = ["tar", "--zstd", "-xOf", dest, member]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise EnvBuildError(f"cannot read {member} of {dest}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
