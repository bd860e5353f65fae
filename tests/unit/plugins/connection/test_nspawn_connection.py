# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the nspawn connection finds a machine's leader and builds the command that enters it."""

from __future__ import annotations

import os

import pytest

from ansible_collections.sciops.fleet.plugins.connection.nspawn import (
    leader_from_processes,
    machine_of_argv,
    namespace_flags,
    nsenter_argv,
)


@pytest.mark.parametrize("argv, name", [
    (["systemd-nspawn", "--quiet", "--keep-unit", "--boot", "--settings=override", "--machine=analysis"], "analysis"),
    (["/usr/bin/systemd-nspawn", "-M", "analysis", "-D", "/srv/trees/x"], "analysis"),
    (["systemd-nspawn", "-Manalysis", "-b"], "analysis"),
    (["systemd-nspawn", "-D", "/var/lib/machines/env1/", "-b"], "env1"),
    (["systemd-nspawn", "--directory=/srv/env2", "/bin/sh", "-M", "other"], "env2"),
    (["systemd-nspawn", "-q", "--", "-M", "x"], None),
])
def test_the_machine_name_is_read_from_a_systemd_nspawn_command_line(argv, name):
    assert machine_of_argv(argv) == name


def fake_process(proc, pid, argv, children=(), namespaces=None):
    (proc / str(pid) / "task" / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / str(pid) / "task" / str(pid) / "children").write_text(" ".join(map(str, children)), encoding="ascii")
    if namespaces:
        (proc / str(pid) / "ns").mkdir()
        for namespace, target in namespaces.items():
            os.symlink(target, proc / str(pid) / "ns" / namespace)


def test_the_leader_is_the_child_of_the_systemd_nspawn_running_the_machine(tmp_path):
    proc = tmp_path / "proc"
    fake_process(proc, 100, ["sshd", "-D"], children=[101])
    fake_process(proc, 200, ["systemd-nspawn", "-M", "other", "-b"], children=[201])
    fake_process(proc, 300, ["systemd-nspawn", "--machine=analysis", "-b"], children=[301])
    (proc / "self").mkdir()
    assert leader_from_processes("analysis", str(proc)) == 301
    assert leader_from_processes("missing", str(proc)) is None


def test_cgroup_and_user_namespaces_are_entered_only_when_the_machine_has_its_own(tmp_path):
    proc = tmp_path / "proc"
    fake_process(proc, 1, ["init"], namespaces={"user": "user:[1]", "cgroup": "cgroup:[1]"})
    fake_process(proc, 2, ["init"], namespaces={"user": "user:[1]", "cgroup": "cgroup:[2]"})
    fake_process(proc, 3, ["init"], namespaces={"user": "user:[3]", "cgroup": "cgroup:[3]"})
    base = ["--mount", "--uts", "--ipc", "--net", "--pid"]
    assert namespace_flags(1, str(proc), self_pid=1) == base
    assert namespace_flags(2, str(proc), self_pid=1) == base + ["--cgroup"]
    assert namespace_flags(3, str(proc), self_pid=1) == base + ["--cgroup", "--user"]


def test_the_command_runs_in_the_machines_root():
    argv = nsenter_argv("/usr/bin/nsenter", 4242, ["--mount", "--pid"], ["/bin/sh", "-c", "echo hi"])
    assert argv == ["/usr/bin/nsenter", "--target", "4242", "--mount", "--pid", "--root", "--wd", "--",
                    "/bin/sh", "-c", "echo hi"]
