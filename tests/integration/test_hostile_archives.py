# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile release content on real nodes: a tarball installed with ``install: extract`` never writes, links or
chmods anything outside its release, the install fails naming the member, and ``current`` stays where it was."""

from __future__ import annotations

import gzip
import io
import json
import shlex
import tarfile

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

APP = "hostile"
APP_DIR = f"/var/lib/sciops-fleet/{APP}"
CHAIN = [("l0", "symlink", ".")] + [(f"l{n}", "symlink", f"l{n - 1}/..") for n in range(1, 10)]
UP = "../" * 12  # more than the depth of a release's staging tree below /

# name: (members as (name, kind, data or link target, mode), the member the refusal names, paths that must not appear)
CASES = {
    "symlink_chain_then_file": (CHAIN + [("l9/tmp/sciops-hostile-x", "file", "pwned", 0o644)], "l1",
                                ["/tmp/sciops-hostile-x"]),
    "symlink_chain_then_hard_link_to_a_root_only_file": (
        CHAIN + [("h", "hardlink", "l9/root/sciops-hostile-f", 0o666)], "l1", []),
    "hard_link_up_to_a_root_only_file": ([("h", "hardlink", f"{UP}root/sciops-hostile-f", 0o666)], "h", []),
    "absolute_name": ([("/tmp/sciops-hostile-abs", "file", "pwned", 0o644)], "/tmp/sciops-hostile-abs",
                      ["/tmp/sciops-hostile-abs"]),
    "dot_dot_name": ([(f"{UP}tmp/sciops-hostile-up", "file", "pwned", 0o644)], f"{UP}tmp/sciops-hostile-up",
                     ["/tmp/sciops-hostile-up"]),
    "device_node": ([("null", "chr", "", 0o666)], "null", []),
    "symlink_up_then_file_through_it": ([("up", "symlink", f"{UP}tmp"), ("up/sciops-hostile-through", "file", "x", 0o644)],
                                        "up", ["/tmp/sciops-hostile-through"]),
    "symlink_inside_then_file_through_it": ([("sub", "dir", "", 0o755), ("in", "symlink", "sub"),
                                             ("in/x", "file", "x", 0o644)], "in/x", []),
    "symlink_replaced_by_a_directory": ([("sub", "dir", "", 0o755), ("l", "symlink", "sub"), ("l", "dir", "", 0o755),
                                         ("l/x", "file", "x", 0o644)], "l", []),
    "hard_link_to_a_symlink": ([("s", "symlink", "x"), ("x", "file", "x", 0o644), ("h", "hardlink", "s", 0o666)],
                               "h", []),
}


def _tarball(tmp_path, case, members):
    buffer = io.BytesIO()
    # gzip with a fixed time stamp: the same members give the same artifact, so the good release stays one release.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for entry in members:
            name, kind, value = entry[:3]
            info = tarfile.TarInfo(name)
            info.mode = entry[3] if len(entry) > 3 else 0o777
            body = None
            if kind == "file":
                info.size, body = len(value), io.BytesIO(value.encode())
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, value
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, body)
    path = tmp_path / f"{case}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def _publish(registry, run_module, version, tarball):
    pushed = run_module("oras_push", target=f"{registry.host}/build/{APP}:{version}", files=[{"path": str(tarball)}],
                        plain_http=True)
    assert not pushed.get("failed"), pushed
    release = {
        "schema_version": 1, "application": APP, "version": version, "protocol": "1", "role": "server",
        "artifacts": [{"name": "app", "reference": f"{registry.host}/build/{APP}@{pushed['digest']}", "install": "extract"}],
        "requires": {"os_family": ["debian"], "commands": ["sh"], "disk_mb": 1},
        "health": [{"command": "test -f ${current_dir}/app/good", "timeout": 5}],
    }
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{APP}",
                           channels=[], plain_http=True)
    assert not published.get("failed"), published
    return published


def _on_fleet(ansible, fleet, module, args):
    run = ansible(fleet.inventory_path, module=f"sciops.fleet.{module}", module_args=json.dumps(args))
    return run


@pytest.fixture(autouse=True, scope="module")
def _leave_the_fleet_clean(fleet):
    """The fleet is shared by the whole session: nothing of this application is left on it afterwards."""
    yield
    for node in fleet.names:
        fleet.ssh(node, f"rm -rf {APP_DIR} /etc/ansible/facts.d/sciops_fleet_{APP}.fact /root/sciops-hostile-f", check=False)


@pytest.fixture
def good_release(registry, fleet, ansible, run_module, tmp_path):
    """A good release installed and current on every node, and a root-only file /root/sciops-hostile-f."""
    good = _publish(registry, run_module, "1.0.0", _tarball(tmp_path, "good", [("good", "file", "good\n", 0o644)]))
    name = f"1.0.0-{good['release_id'][7:19]}"
    for node in fleet.names:
        fleet.ssh(node, "umask 077; test -e /root/sciops-hostile-f || echo secret > /root/sciops-hostile-f")
    if any(fleet.ssh(node, f"readlink {APP_DIR}/current", check=False).stdout.strip() != f"releases/{name}"
           for node in fleet.names):
        for module, args in (("release_install", {"release": good["reference"], "plain_http": True}),
                             ("release_switch", {"application": APP, "release": good["release_id"]})):
            run = _on_fleet(ansible, fleet, module, args)
            assert run.rc == 0 and sorted(run.ok) == fleet.names, run
    return name


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_tarball_fails_the_install_naming_the_member_and_changes_nothing_outside(
        registry, fleet, ansible, run_module, tmp_path, good_release, case):
    members, refused, outside = CASES[case]
    version = f"6.6.{sorted(CASES).index(case)}"
    hostile = _publish(registry, run_module, version, _tarball(tmp_path, case, members))
    run = _on_fleet(ansible, fleet, "release_install", {"release": hostile["reference"], "plain_http": True})
    assert run.rc != 0 and sorted(run.failed) == fleet.names, run
    for node in fleet.names:
        message = run.failed[node][0]["msg"]
        assert f"{case}.tar.gz" in message and f"member {refused!r}" in message, message
        for path in outside:
            assert fleet.ssh(node, f"test -e {path}", check=False).returncode != 0, (node, path)
        # The root-only file keeps its mode and its single link; nothing in the release links to it.
        assert fleet.ssh(node, "stat -c '%a %h' /root/sciops-hostile-f").stdout.split() == ["600", "1"], node
        assert fleet.ssh(node, "cat /root/sciops-hostile-f").stdout == "secret\n"
        assert fleet.ssh(node, f"readlink {APP_DIR}/current").stdout.strip() == f"releases/{good_release}", node
        assert fleet.ssh(node, f"test -f {APP_DIR}/current/app/good").returncode == 0
        # No release directory of the hostile release, no staging tree, and no member of it anywhere under releases/.
        entries = fleet.ssh(node, f"cd {APP_DIR}/releases && find . -mindepth 1 -not -path {shlex.quote('./' + good_release + '*')}").stdout.split()
        assert entries == [], entries
        record = json.loads(fleet.ssh(node, f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)
        assert record["current"]["digest"] != hostile["release_id"]
        assert all(entry["digest"] != hostile["release_id"] for entry in record["releases"].values())
