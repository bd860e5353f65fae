# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install kind ``machine``: what a release may declare of its machine, and the files a slot's machine runs with."""

from __future__ import annotations

import copy
import os
import stat

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import machine as kind
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import ReleaseError, validate_release
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import MachineError

DIGEST = "sha256:" + "cd" * 32
MACHINE = {
    "command": ["/bin/sh", "-c", "exec /bin/busybox httpd -f -p ${port} -h /srv/www"],
    "slots": {"current": {"port": "8301"}, "oldstable": {"port": "8302"}},
    "environment": {"PORT": "${port}", "WHO": "${machine}"},
    "binds": [{"source": "www", "dest": "/srv/www"}],
    "data": "/data",
    "limits": {"memory": "64M", "cpu": "50%", "tasks": 64},
    "capabilities": ["CAP_NET_RAW"],
    "health": [{"command": "test -d /data"}, {"tcp": "${address}:${port}", "timeout": 2}],
}


def manifest(**machine):
    settings = copy.deepcopy(MACHINE)
    settings.update(machine)
    return {"schema_version": 1, "application": "bss", "version": "2.0", "protocol": "2",
            "artifacts": [{"name": "rootfs", "reference": f"127.0.0.1:5000/build/bss@{DIGEST}", "install": "machine",
                           "machine": settings}]}


def problems(data):
    with pytest.raises(ReleaseError) as caught:
        validate_release(data)
    return str(caught.value)


def test_a_machine_release_is_canonical_with_its_settings():
    release = validate_release(manifest())
    settings = release["artifacts"][0]["machine"]
    assert settings["command"] == MACHINE["command"] and settings["boot"] is False
    assert settings["limits"] == {"memory": "64M", "cpu": "50%", "tasks": "64"}
    assert settings["network"] == "host" and settings["volatile"] == "no"
    assert [c.get("command") or c.get("tcp") for c in settings["health"]] == ["test -d /data", "${address}:${port}"]
    assert validate_release(release) == release  # a node validates what it reads with the same rules


def test_a_release_of_another_kind_keeps_its_id():
    release = validate_release({"schema_version": 1, "application": "a", "version": "1", "protocol": "1",
                                "artifacts": [{"name": "b", "reference": f"127.0.0.1:5000/b@{DIGEST}"}]})
    assert "machine" not in release["artifacts"][0]


@pytest.mark.parametrize("change, expected", [
    ({"command": []}, "machine.command: is required unless boot: true"),
    ({"boot": True}, "machine.command: is the program to run instead of booting"),
    ({"command": ["bin/server"]}, "machine.command[0]: 'bin/server' must be an absolute path"),
    ({"command": ["/s", "${prt}"]}, "machine.command[1]: uses ${prt}, which is neither built in nor given"),
    ({"slots": {"current": {"port": "1"}}}, "machine.slots: must give values for both slots"),
    ({"slots": {"current": {"port": "1"}, "oldstable": {"p": "2"}}}, "each slot must be a mapping with the same"),
    ({"slots": {"current": {"port": 1}, "oldstable": {"port": 2}}}, "quote it"),
    ({"slots": {"current": {"port": "1'"}, "oldstable": {"port": "2"}}}, "without ${...}, quotes or backslashes"),
    ({"command": ["/s", "a\\b"]}, "machine.command[1]: argument 'a\\\\b' holds a backslash"),
    ({"environment": {"X": "it's \"q\""}}, "machine.environment.X: argument"),
    ({"binds": [{"source": "../etc/shadow", "dest": "/x"}]}, "must be a relative path inside the release"),
    ({"binds": [{"source": "/etc/shadow", "dest": "/x"}]}, "must be a relative path inside the release"),
    ({"binds": [{"source": ".sciops-files.json", "dest": "/x"}]}, "is the node's own record of the release"),
    ({"binds": [{"source": "www", "dest": "srv"}]}, "must be an absolute path in the machine"),
    ({"binds": [{"source": "w w", "dest": "/srv"}]}, "white space or ':'"),
    ({"data": "/data/../etc"}, "machine.data: '/data/../etc' must be an absolute path in the machine"),
    ({"ports": ["tcp:${port}:80"]}, "they need network: veth"),
    ({"network": "veth", "ports": ["tcp:${port}:eighty"]}, "in slot current, not [tcp:|udp:]HOST_PORT[:MACHINE_PORT]"),
    ({"limits": {"memory": "lots"}}, "machine.limits.memory: 'lots' is not bytes"),
    ({"limits": {"swap": "1G"}}, "machine.limits.swap: unknown limit"),
    ({"capabilities": ["CAP_SYS_MODULE"]}, "'CAP_SYS_MODULE' is not one of the capabilities a command machine drops"),
    ({"volatile": "yes"}, "machine.volatile: 'yes' is not no"),
    ({"health": [{"command": "x", "tcp": "a:1"}]}, "must have exactly one of command, tcp, http"),
    ({"health": [{"http": "http://${host}/"}]}, "uses ${host}"),
    ({"privileged": True}, "machine.privileged: unknown field"),
])
def test_a_wrong_machine_setting_is_named(change, expected):
    assert expected in problems(manifest(**change))


def test_machines_need_a_short_application_name_and_one_machine_artifact():
    data = manifest()
    data["application"] = "b.s.s"
    assert "names machines b.s.s-current and b.s.s-oldstable" in problems(data)
    data = manifest()
    data["artifacts"].append(dict(data["artifacts"][0], name="second"))
    assert "artifacts[1].install: a release runs one machine per slot" in problems(data)
    data = manifest()
    del data["artifacts"][0]["machine"]
    assert "artifacts[0].machine: is required for install: machine" in problems(data)
    data = manifest()
    data["artifacts"][0]["install"] = "files"
    assert "artifacts[0].machine: belongs to install kinds machine, not 'files'" in problems(data)


@pytest.fixture
def installed(tmp_path):
    """Release 2.0 of bss installed under a scratch state root: its tree and its rendered www directory."""
    state = AppState("bss", str(tmp_path / "state"), str(tmp_path / "facts"))
    release = validate_release(manifest())
    release_dir = state.release_path("2.0-cdcdcdcdcdcd")
    os.makedirs(os.path.join(release_dir, "rootfs", "usr"))
    os.makedirs(os.path.join(release_dir, "www"))
    return state, release, release_dir


def test_each_slot_machine_runs_the_release_tree_with_its_own_values(installed):
    state, release, release_dir = installed
    settings, dropin = kind.desired_files(state, release, "2.0-cdcdcdcdcdcd", "oldstable")
    lines = settings.splitlines()
    assert lines[0] == kind.HEADER
    assert "Parameters=/bin/sh -c 'exec /bin/busybox httpd -f -p 8302 -h /srv/www'" in lines
    assert "Environment=PORT=8302" in lines and "Environment=WHO=bss-oldstable" in lines
    assert "Environment=SCIOPS_SLOT=oldstable" in lines
    assert f"BindReadOnly={release_dir}/www:/srv/www" in lines
    assert f"Bind={os.path.dirname(state.app_dir)}/_data/bss:/data" in lines
    assert "ReadOnly=yes" in lines and "NoNewPrivileges=yes" in lines and "Private=no" in lines
    dropped = next(line for line in lines if line.startswith("DropCapability=")).split("=", 1)[1].split()
    assert "CAP_SYS_ADMIN" in dropped and "CAP_NET_RAW" not in dropped  # kept as the release asked
    assert f"--machine=bss-oldstable --directory={release_dir}/rootfs" in dropin
    assert "\nExecStart=\n" in dropin and "MemoryMax=64M" in dropin and "CPUQuota=50%" in dropin and "TasksMax=64" in dropin
    current, _dropin = kind.desired_files(state, release, "2.0-cdcdcdcdcdcd", "current")
    assert "Environment=PORT=8301" in current.splitlines()


def test_a_bind_source_through_a_link_is_refused(installed, tmp_path):
    state, release, release_dir = installed
    os.rmdir(os.path.join(release_dir, "www"))
    os.symlink("/etc", os.path.join(release_dir, "www"))
    with pytest.raises(MachineError, match="bind source www .* is or passes through a symbolic link"):
        kind.desired_files(state, release, "2.0-cdcdcdcdcdcd", "current")
    os.unlink(os.path.join(release_dir, "www"))
    with pytest.raises(MachineError, match="bind source www is not in the release"):
        kind.desired_files(state, release, "2.0-cdcdcdcdcdcd", "current")


def test_a_booted_machine_keeps_its_capabilities():
    release = validate_release(manifest(boot=True, command=[], capabilities=[]))
    assert release["artifacts"][0]["machine"]["boot"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
def test_a_device_node_other_than_the_harmless_ones_is_refused(tmp_path):
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    os.mknod(tree / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    kind.refuse_devices(str(tree), "image")
    os.mknod(tree / "dev" / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    with pytest.raises(NodeError, match=r"image: dev/sda is a block device node \(8:0\)"):
        kind.refuse_devices(str(tree), "image")
    os.unlink(tree / "dev" / "sda")
    os.mknod(tree / "dev" / "mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    with pytest.raises(NodeError, match=r"dev/mem is a character device node \(1:1\)"):
        kind.refuse_devices(str(tree), "image")
