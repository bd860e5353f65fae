# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container image layers applied to a tree: whiteouts, replacements, and layers that try to reach outside it."""

from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MachineError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.machine_image import apply_layers


def write_layer(path, members, compression=""):
    """A tar layer at PATH from (name, kind, data or link target, mode) tuples."""
    with tarfile.open(path, f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1_000_000
            body = None
            if kind == "file":
                info.size, body = len(content), io.BytesIO(content)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, content
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, body)
    return str(path)


def f(name, data=b"", mode=0o644):
    return (name, "file", data, mode)


def d(name, mode=0o755):
    return (name, "dir", b"", mode)


def ln(name, target):
    return (name, "symlink", target, 0o777)


@pytest.fixture
def world(tmp_path):
    """layers/ for the archives, dest/ to fill, and outside/ beside it, which must stay empty."""
    for name in ("layers", "dest", "outside"):
        (tmp_path / name).mkdir()
    return tmp_path


def listing(root):
    """Every path under ROOT: the target of a link, the content of a file, or the mode of a directory."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[key] = ("->", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[key] = ("dir", oct(stat.S_IMODE(info.st_mode)))
            else:
                with open(path, "rb") as handle:
                    found[key] = (handle.read(), oct(stat.S_IMODE(info.st_mode)))
    return found


def apply(world, *layers, compression=""):
    paths = []
    for number, members in enumerate(layers):
        suffix = ".tar.gz" if compression else ".tar"
        paths.append((write_layer(world / "layers" / f"{number}{suffix}", members, compression), f"layer {number} (sha256:{number})"))
    apply_layers(paths, str(world / "dest"), "image example:1")


def assert_contained(world):
    """Nothing beside DEST but what the test made: no scratch directory left, nothing written outside."""
    assert sorted(os.listdir(world)) == ["dest", "layers", "outside"]
    assert os.listdir(world / "outside") == []


@pytest.mark.parametrize("compression", ["", "gz"])
def test_layers_give_the_tree_the_image_spec_describes(world, compression):
    lower = [
        d("etc"), f("etc/hostname", b"lower\n"), f("etc/motd", b"hello\n"), ln("etc/localtime", "/usr/share/zoneinfo/UTC"),
        d("var", 0o755), d("var/cache"), f("var/cache/a", b"a"), d("var/cache/sub"), f("var/cache/sub/b", b"b"),
        d("opt"), f("opt/tool", b"#!/bin/sh\n", 0o755), d("opt/plugins"), f("opt/plugins/p", b"p"),
        f("srv", b"a file that becomes a directory"), d("home", 0o700), f("home/keep", b"keep"),
    ]
    upper = [
        d("etc"), f("etc/hostname", b"upper\n", 0o600), f("etc/.wh.motd"), f("etc/.wh.localtime"), f("etc/new", b"new"),
        d("var/cache", 0o750), f("var/cache/.wh..wh..opq"), f("var/cache/fresh", b"fresh"),
        f("opt/plugins", b"a directory became this file", 0o640), f(".wh.home"),
        d("srv", 0o711), f("srv/index", b"index"),
    ]
    apply(world, lower, upper, compression=compression)
    assert listing(world / "dest") == {
        "etc": ("dir", "0o755"),
        "etc/hostname": (b"upper\n", "0o600"),
        "etc/new": (b"new", "0o644"),
        "var": ("dir", "0o755"),
        "var/cache": ("dir", "0o750"),
        "var/cache/fresh": (b"fresh", "0o644"),
        "opt": ("dir", "0o755"),
        "opt/tool": (b"#!/bin/sh\n", "0o755"),
        "opt/plugins": (b"a directory became this file", "0o640"),
        "srv": ("dir", "0o711"),
        "srv/index": (b"index", "0o644"),
    }
    assert_contained(world)


def test_a_whiteout_hides_only_lower_layers_and_an_implied_directory_keeps_its_mode(world):
    lower = [d("data", 0o750), f("data/old", b"old"), f("data/gone", b"gone")]
    upper = [f("data/.wh..wh..opq"), f("data/new", b"new"), f("data/.wh.new"), f("data/.wh.missing")]
    apply(world, lower, upper)
    assert listing(world / "dest") == {"data": ("dir", "0o750"), "data/new": (b"new", "0o644")}
    assert_contained(world)


def test_directories_their_owner_cannot_write_are_merged_and_keep_their_mode(world):
    lower = [d("ro", 0o555), f("ro/old", b"old"), d("ro/sub", 0o500), f("ro/sub/x", b"x"), d("gone", 0o500), f("gone/y", b"y")]
    upper = [f("ro/.wh.old"), f("ro/.wh.sub"), f("ro/new", b"new"), f(".wh.gone")]
    apply(world, lower, upper)
    assert listing(world / "dest") == {"ro": ("dir", "0o555"), "ro/new": (b"new", "0o644")}
    assert_contained(world)


def test_a_directory_the_layer_names_replaces_a_lower_link(world):
    outside = str(world / "outside")
    apply(world, [ln("etc", outside)], [d("etc", 0o755), f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")])
    assert listing(world / "dest") == {"etc": ("dir", "0o755"), "etc/passwd": (b"root:x:0:0::/root:/bin/sh\n", "0o644")}
    assert_contained(world)


# Each case: the layers, bottom first, given the directory outside the tree that must not change.
HOSTILE = {
    "a parent name": lambda out: [[f("../x", b"x")]],
    "an absolute name": lambda out: [[f("/etc/x", b"x")]],
    "a relative link out of the tree": lambda out: [[d("d"), ln("d/up", "../../outside")]],
    "a file through a lower link": lambda out: [[ln("etc", out)], [f("etc/passwd", b"x")]],
    "a link through a lower link": lambda out: [[ln("etc", out)], [ln("etc/l", "/")]],
    "a whiteout through a lower link": lambda out: [[ln("etc", out)], [f("etc/.wh.keep")]],
    "an opaque whiteout through a lower link": lambda out: [[ln("etc", out)], [f("etc/.wh..wh..opq")]],
    "the whiteout .wh...": lambda out: [[f("a", b"a")], [f(".wh...")]],
    "the whiteout .wh..": lambda out: [[d("d"), f("d/a", b"a")], [f("d/.wh..")]],
    "the whiteout d/.wh.": lambda out: [[d("d"), f("d/a", b"a")], [f("d/.wh.")]],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_and_nothing_outside_changes(world, case):
    (world / "outside" / "keep").write_bytes(b"keep")
    layers = HOSTILE[case](str(world / "outside"))
    with pytest.raises(MachineError, match=rf"image example:1, layer {len(layers) - 1} \(sha256:\d\).*member"):
        apply(world, *layers)
    assert os.listdir(world / "outside") == ["keep"] and (world / "outside" / "keep").read_bytes() == b"keep"
    assert sorted(os.listdir(world)) == ["dest", "layers", "outside"]


def test_a_file_through_a_lower_link_names_the_member(world):
    with pytest.raises(MachineError, match=r"member 'etc/passwd' would be written through 'etc', a symbolic link"):
        apply(world, [ln("etc", str(world / "outside"))], [f("etc/passwd", b"x")])
    assert_contained(world)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may create device nodes")
def test_a_device_node_is_refused_unless_root(world):
    with pytest.raises(MachineError, match="'dev/null'.*device node"):
        apply(world, [d("dev"), ("dev/null", "chr", b"", 0o666)])
    assert_contained(world)


def test_a_layer_that_is_not_a_tar_archive_is_refused(world):
    good = write_layer(world / "layers" / "0.tar", [f("a", b"a")])
    (world / "layers" / "1.tar").write_bytes(b"this is no tar archive\n" * 40)
    with pytest.raises(MachineError, match=r"image example:1, layer 1 \(sha256:1\) cannot be read as a tar archive"):
        apply_layers([(good, "layer 0 (sha256:0)"), (str(world / "layers" / "1.tar"), "layer 1 (sha256:1)")],
                     str(world / "dest"), "image example:1")
    assert_contained(world)
