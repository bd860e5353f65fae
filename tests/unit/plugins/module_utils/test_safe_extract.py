# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tar extraction that links cannot steer: hostile archives in many member orders, legitimate ones in any order."""

from __future__ import annotations

import io
import itertools
import os
import random
import shutil
import stat
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.archive import ArchiveError, extract_tar


def member(name, kind="file", data=b"", target="", mode=0o644):
    return {"name": name, "kind": kind, "data": data, "target": target, "mode": mode}


def write_tar(path, members, compression=""):
    with tarfile.open(path, f"w:{compression}", format=tarfile.PAX_FORMAT) as tar:
        for spec in members:
            info = tarfile.TarInfo(spec["name"])
            info.mode, info.mtime = spec["mode"], 1_000_000
            body = None
            if spec["kind"] == "file":
                info.size, body = len(spec["data"]), io.BytesIO(spec["data"])
            elif spec["kind"] == "dir":
                info.type = tarfile.DIRTYPE
            elif spec["kind"] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, spec["target"]
            elif spec["kind"] == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, spec["target"]
            elif spec["kind"] == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif spec["kind"] == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, body)
    return str(path)


@pytest.fixture
def world(tmp_path):
    """dest/ to extract into, and outside/ beside it holding a file that must never change."""
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "f"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    return tmp_path, dest, outside


def snapshot(directory):
    found = {}
    for base, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            found[os.path.relpath(path, directory)] = (info.st_mode, info.st_nlink, info.st_size, info.st_mtime_ns)
    return found


def assert_contained(tmp_path, dest, outside, before):
    assert snapshot(outside) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["dest", "outside", "a.tar"])
    root = os.path.realpath(dest)
    outside_inodes = {os.lstat(os.path.join(base, n)).st_ino for base, _dirs, names in os.walk(outside) for n in names}
    for base, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(base, name)
            real = os.path.realpath(path)
            assert real == root or real.startswith(root + os.sep), (path, real)
            assert os.lstat(path).st_ino not in outside_inodes or os.path.islink(path)


CHAIN = [member("l0", "symlink", target=".")] + [member(f"l{n}", "symlink", target=f"l{n - 1}/..") for n in range(1, 10)]

HOSTILE = {
    "symlink_chain_then_file": CHAIN + [member("l9/outside/x", data=b"pwned")],
    "symlink_chain_then_hard_link": CHAIN + [member("h", "hardlink", target="l9/outside/f", mode=0o666)],
    "absolute_name": [member("/tmp/sciops-absolute-x", data=b"pwned")],
    "dot_dot_name": [member("../outside/x", data=b"pwned")],
    "dot_dot_inside_then_above": [member("a/../../outside/x", data=b"pwned")],
    "device_node": [member("null", "chr")],
    "fifo": [member("pipe", "fifo")],
    "symlink_out_then_file_through_it": [member("out", "symlink", target="../outside"), member("out/x", data=b"pwned")],
    "symlink_in_then_file_through_it": [member("sub", "dir"), member("in", "symlink", target="sub"),
                                        member("in/x", data=b"through a link")],
    "absolute_symlink": [member("etc", "symlink", target="/etc")],
    "symlink_replaced_by_dir": [member("sub", "dir"), member("l", "symlink", target="sub"), member("l", "dir"),
                                member("l/x", data=b"x")],
    "file_replaced_by_symlink": [member("x", data=b"x"), member("x", "symlink", target="../outside/f")],
    "hard_link_to_symlink": [member("s", "symlink", target="x"), member("x", data=b"x"),
                             member("h", "hardlink", target="s")],
    "hard_link_outside": [member("h", "hardlink", target="../outside/f")],
    "hard_link_to_unextracted": [member("h", "hardlink", target="etc/passwd")],
    "later_link_changes_earlier_one": [member("a", "symlink", target="p/q/../.."), member("p", "symlink", target=".")],
    "link_loop": [member("a", "symlink", target="b"), member("b", "symlink", target="a"),
                  member("c", "symlink", target="a/..")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_naming_the_member_and_leaves_nothing(world, case):
    tmp_path, dest, outside = world
    before = snapshot(outside)
    archive = write_tar(tmp_path / "a.tar", HOSTILE[case])
    with pytest.raises(ArchiveError) as caught:
        extract_tar(archive, str(dest))
    assert "a.tar" in str(caught.value) and caught.value.member in {m["name"] for m in HOSTILE[case]}
    assert f"member {caught.value.member!r}" in str(caught.value)
    assert os.listdir(dest) == []
    assert_contained(tmp_path, dest, outside, before)
    assert not os.path.exists("/tmp/sciops-absolute-x")


@pytest.mark.parametrize("case", ["symlink_chain_then_file", "symlink_chain_then_hard_link",
                                  "later_link_changes_earlier_one", "hard_link_to_symlink"])
def test_no_member_order_of_a_hostile_archive_writes_outside(world, case):
    tmp_path, dest, outside = world
    before = snapshot(outside)
    orders = list(itertools.islice(itertools.permutations(HOSTILE[case]), 200))
    random.Random(12).shuffle(orders)
    orders += [random.Random(seed).sample(HOSTILE[case], len(HOSTILE[case])) for seed in range(200)]
    for order in orders:
        archive = write_tar(tmp_path / "a.tar", order)
        try:
            extract_tar(archive, str(dest))
        except ArchiveError:
            assert os.listdir(dest) == []
        assert_contained(tmp_path, dest, outside, before)
        for name in os.listdir(dest):
            path = dest / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


LEGIT = [member("app", "dir", mode=0o750), member("app/bin", "dir"),
         member("app/bin/run", data=b"#!/bin/sh\n", mode=0o4777),
         member("app/bin/again", "hardlink", target="app/bin/run", mode=0o666),
         member("app/lib", "symlink", target="bin"), member("app/up", "symlink", target="lib/.."),
         member("app/share/doc/README", data=b"read me\n", mode=0o600)]


def test_a_legitimate_archive_extracts_the_same_in_any_valid_order(world):
    tmp_path, dest, _outside = world
    results = set()
    orders = list(itertools.permutations(LEGIT))
    for order in random.Random(7).sample(orders, 400):
        names = [m["name"] for m in order]
        # A hard link can only come after its file.
        if names.index("app/bin/again") < names.index("app/bin/run"):
            continue
        archive = write_tar(tmp_path / "a.tar", order)
        assert extract_tar(archive, str(dest)) == len(LEGIT)
        results.add(tuple(sorted((k, v[0], v[1]) for k, v in snapshot(dest).items())))
        shutil.rmtree(dest)
        dest.mkdir()
    assert len(results) == 1
    tree = {key: (mode, links) for key, mode, links in results.pop()}
    # setuid and group/other write are dropped; the hard link's header does not change the file's mode.
    assert stat.S_IMODE(tree["app/bin/run"][0]) == 0o755 and tree["app/bin/run"][1] == 2
    assert stat.S_IMODE(tree["app"][0]) == 0o750
    assert stat.S_ISLNK(tree["app/up"][0])
    assert stat.S_IMODE(tree["app/share/doc/README"][0]) == 0o600


def test_compressed_archives_and_their_times_are_read(world, tmp_path):
    _base, dest, _outside = world
    for compression in ("gz", "xz", "bz2"):
        archive = write_tar(tmp_path / "a.tar", [member("x", data=b"hello")], compression)
        extract_tar(archive, str(dest))
        assert (dest / "x").read_bytes() == b"hello" and os.stat(dest / "x").st_mtime == 1_000_000
        (dest / "x").unlink()


def test_a_zstd_archive_is_read_through_the_zstd_program(world, tmp_path):
    _base, dest, _outside = world
    plain = write_tar(tmp_path / "plain.tar", [member("d", "dir"), member("d/x", data=b"zst")])
    os.system(f"zstd -q -f '{plain}' -o '{tmp_path}/a.tar.zst'")  # noqa: S605 - test data
    extract_tar(f"{tmp_path}/a.tar.zst", str(dest))
    assert (dest / "d" / "x").read_bytes() == b"zst"


def test_the_tree_policy_keeps_absolute_links_and_full_modes_but_not_escapes(world, tmp_path):
    _base, dest, _outside = world
    archive = write_tar(tmp_path / "a.tar", [member("etc", "dir"), member("etc/localtime", "symlink", target="/usr/share/zoneinfo/UTC"),
                                             member("bin", "symlink", target="usr/bin"),
                                             member("usr/bin/su", data=b"su", mode=0o4755), member("run", "fifo")])
    extract_tar(archive, str(dest), tree=True)
    assert os.readlink(dest / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"
    assert stat.S_IMODE(os.stat(dest / "usr/bin/su").st_mode) == 0o4755
    assert stat.S_ISFIFO(os.lstat(dest / "run").st_mode)
    escaping = write_tar(tmp_path / "b.tar", [member("x", "symlink", target="../../etc")])
    with pytest.raises(ArchiveError, match="'x'"):
        extract_tar(escaping, str(dest), tree=True)
    assert not os.path.lexists(dest / "x")
    through = write_tar(tmp_path / "c.tar", [member("bin/sh", data=b"sh")])
    with pytest.raises(ArchiveError, match="'bin/sh'"):
        extract_tar(through, str(dest), tree=True)
    assert not (dest / "usr" / "bin" / "sh").exists()
