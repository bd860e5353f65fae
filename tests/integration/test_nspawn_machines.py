# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nspawn_container and the nspawn connection plugin with real machines.

* On this host (no systemd as PID 1 here): images of every format installed into a scratch machines directory,
  and the connection plugin running a playbook in a machine started with ``systemd-nspawn`` directly.
* On the test fleet, where nesting works: a Debian machine built from a squashfs image boots under
  ``systemd-nspawn@.service`` inside a node, runs a command instead when asked, is replaced only when told, and is
  reached with the connection plugin from this host (the nodes' processes are this host's processes).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
import time
import urllib.request

import pytest

import testbed
from testbed.cgroups import _enter_cgroups, _make_cgroups, _remove_cgroups
from testbed.common import _terminate
from ansible_collections.sciops.fleet.plugins.connection.nspawn import leader_from_processes, nsenter_argv

# Leave out of the machine image what a test machine does not need, and the SSH server: the image has no
# host keys, and a machine sharing the node's network must not take port 22.
IMAGE_EXCLUDES = ("var/cache/apt/*", "var/lib/apt/lists/*", "usr/share/doc/*", "usr/share/man/*",
                  "usr/share/locale/*", ".sciops-root-complete", "etc/systemd/system/multi-user.target.wants/ssh.service",
                  "etc/systemd/system/sshd.service")


def needs(*commands):
    missing = [c for c in commands if not shutil.which(c)]
    return pytest.mark.skipif(bool(missing) or os.geteuid() != 0, reason=f"needs root and {', '.join(commands)}")


def build_squashfs(source, dest, marker, excludes=IMAGE_EXCLUDES):
    """A squashfs image of SOURCE with /etc/sciops-image holding MARKER (zstd, fast level)."""
    subprocess.run(["mksquashfs", source, dest, "-comp", "zstd", "-Xcompression-level", "1", "-noappend", "-quiet",
                    "-no-xattrs", "-p", f"etc/sciops-image f 644 0 0 echo {marker}", "-wildcards", "-e", *excludes],
                   check=True, stdout=subprocess.DEVNULL)
    return dest


# --------------------------------------------------------------------------------------------
# on this host: image formats


@pytest.fixture
def small_tree(tmp_path):
    """A small root tree with what an OS image holds: modes, owners, a link, an executable, a private directory."""
    root = tmp_path / "tree"
    for sub in ("etc", "usr/bin", "var/lib/private"):
        (root / sub).mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n", encoding="utf-8")
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\necho tool\n", encoding="utf-8")
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    os.symlink("usr/bin", root / "bin")
    os.chmod(root / "var" / "lib" / "private", 0o700)
    os.chown(root / "var" / "lib" / "private", 4321, 4321)
    os.chmod(root, 0o700)
    return root


def tree_listing(root):
    listing = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(current, name)
            info = os.lstat(path)
            listing[os.path.relpath(path, root)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                    info.st_uid, info.st_gid,
                                                    os.readlink(path) if os.path.islink(path) else None)
    return listing


def make_image(kind, tree, where):
    if kind == "directory":
        return str(tree)
    if kind == "tar":
        path = str(where / "image.tar.gz")
        with tarfile.open(path, "w:gz") as archive:
            archive.add(str(tree), arcname=".", recursive=True)
        return path
    return build_squashfs(str(tree), str(where / "image.sqfs"), "small", excludes=("none",))


def machine_args(tmp_path, **args):
    return dict({"name": "small", "machines_dir": str(tmp_path / "machines"), "settings_dir": str(tmp_path / "nspawn"),
                 "state_dir": str(tmp_path / "state")}, **args)


@needs("mksquashfs", "unsquashfs", "tar")
@pytest.mark.parametrize("kind", ["directory", "tar", "squashfs"])
def test_an_image_is_installed_in_four_runs_with_owners_and_modes_kept(tmp_path, small_tree, run_module, kind):
    image = make_image(kind, small_tree, tmp_path)
    args = machine_args(tmp_path, image=image, bind_ro=["/etc/hostname:/etc/node-hostname"])
    runs = [run_module("nspawn_container", check=True, diff=True, **args), run_module("nspawn_container", **args),
            run_module("nspawn_container", check=True, diff=True, **args), run_module("nspawn_container", **args)]
    assert [r.get("failed", False) for r in runs] == [False] * 4, runs
    assert [r["changed"] for r in runs] == [True, True, False, False], runs
    tree = tmp_path / "machines" / "small"
    installed = tree_listing(tree)
    expected = tree_listing(small_tree)
    if kind == "squashfs":
        installed.pop("etc/sciops-image")
    assert installed == expected
    assert stat.S_IMODE(os.stat(tree).st_mode) == 0o755  # an OS root must be traversable
    assert (tmp_path / "nspawn" / "small.nspawn").read_text(encoding="utf-8").splitlines()[-6:] == [
        "[Files]", "BindReadOnly=/etc/hostname:/etc/node-hostname", "", "[Network]", "Private=yes",
        "VirtualEthernet=no"]
    assert runs[0]["diff"][0]["after"] == f"image: {runs[1]['image_digest']}\n"
    assert sorted(os.listdir(tmp_path / "machines")) == ["small"]  # no staging left behind


@needs("tar")
def test_a_different_image_replaces_the_tree_only_when_told(tmp_path, small_tree, run_module):
    first = run_module("nspawn_container", **machine_args(tmp_path, image=str(small_tree)))
    assert first["changed"], first
    (tmp_path / "machines" / "small" / "var" / "lib" / "written-inside").write_text("x", encoding="utf-8")
    (small_tree / "etc" / "os-release").write_text("ID=test\nVERSION_ID=2\n", encoding="utf-8")
    refused = run_module("nspawn_container", **machine_args(tmp_path, image=str(small_tree)))
    assert refused["failed"] and "set replace: true" in refused["msg"], refused
    assert refused["installed_digest"] == first["image_digest"]
    assert (tmp_path / "machines" / "small" / "etc" / "os-release").read_text(encoding="utf-8") == "ID=test\n"
    replaced = run_module("nspawn_container", **machine_args(tmp_path, image=str(small_tree), replace=True))
    assert replaced["changed"] and replaced["replaced"] and replaced["image_digest"] != first["image_digest"]
    assert "VERSION_ID=2" in (tmp_path / "machines" / "small" / "etc" / "os-release").read_text(encoding="utf-8")
    assert not (tmp_path / "machines" / "small" / "var" / "lib" / "written-inside").exists()
    assert sorted(os.listdir(tmp_path / "machines")) == ["small"]


@needs("tar")
def test_a_broken_image_leaves_nothing_behind(tmp_path, small_tree, run_module):
    installed = run_module("nspawn_container", **machine_args(tmp_path, image=str(small_tree)))
    assert installed["changed"]
    broken = tmp_path / "broken.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(str(small_tree), arcname=".")
    broken.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    result = run_module("nspawn_container", **machine_args(tmp_path, image=str(broken), replace=True))
    assert result["failed"] and "extracting" in result["msg"], result
    assert sorted(os.listdir(tmp_path / "machines")) == ["small"]
    assert (tmp_path / "machines" / "small" / "etc" / "os-release").read_text(encoding="utf-8") == "ID=test\n"
    removed = run_module("nspawn_container", **machine_args(tmp_path, state="absent"))
    assert removed["changed"] and removed["removed"]
    assert os.listdir(tmp_path / "machines") == [] and not (tmp_path / "nspawn" / "small.nspawn").exists()
    assert not run_module("nspawn_container", **machine_args(tmp_path, state="absent"))["changed"]


# --------------------------------------------------------------------------------------------
# on this host: the connection plugin in a machine started without systemd-machined


@pytest.fixture(scope="module")
def host_machine(tmp_path_factory):
    """A machine on this host: the cached node root under a volatile overlay (the root itself stays untouched),
    with its own network, running a stub init; started the way the test fleet starts nodes."""
    if os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("nsenter"):
        pytest.skip("needs root, systemd-nspawn and nsenter")
    name = f"sciops-conn-{os.getpid()}"
    log_path = tmp_path_factory.mktemp("machine") / "nspawn.log"
    cgroups = _make_cgroups(name)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["systemd-nspawn", "-D", testbed.node_root(), "--volatile=overlay", "-M", name, "--register=no",
             "--keep-unit", "--private-network", "--quiet", "--as-pid2", "/bin/sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            preexec_fn=_enter_cgroups(cgroups))
    try:
        deadline = time.monotonic() + 30
        while leader_from_processes(name) is None:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(encoding="utf-8")
            time.sleep(0.2)
        yield name
    finally:
        _terminate(proc.pid, "systemd-nspawn")
        _remove_cgroups(cgroups)


CONNECTION_PLAY = """---
- name: Tasks inside a machine
  hosts: all
  gather_facts: true
  tasks:
    - name: Ask for the host name
      ansible.builtin.command: hostname
      register: machine_hostname
      changed_when: false
    - name: Write a file inside
      ansible.builtin.copy:
        dest: /etc/sciops-inside.txt
        content: "written by {{ inventory_hostname }}\\n"
        mode: "0640"
    - name: Fetch it back
      ansible.builtin.fetch:
        src: /etc/sciops-inside.txt
        dest: "{{ fetch_dir }}/"
        flat: true
    - name: Read PID 1 of the machine
      ansible.builtin.slurp:
        src: /proc/1/comm
      register: machine_pid1
"""


def run_connection_play(ansible, tmp_path, machine, pipelining, extra_vars=None):
    inventory = tmp_path / "machines.yml"
    host_vars = dict({"ansible_connection": "sciops.fleet.nspawn", "ansible_python_interpreter": "/usr/bin/python3"},
                     **(extra_vars or {}))
    inventory.write_text(json.dumps({"all": {"hosts": {machine: host_vars}}}), encoding="utf-8")
    playbook = tmp_path / "inside.yml"
    playbook.write_text(CONNECTION_PLAY, encoding="utf-8")
    fetch_dir = tmp_path / "fetched"
    run = ansible(str(inventory), playbook=str(playbook), extravars={"fetch_dir": str(fetch_dir)},
                  envvars={"ANSIBLE_PIPELINING": str(pipelining)})
    assert run.rc == 0, run
    results = run.ok[machine]
    facts = results[0]["ansible_facts"]
    return {"facts": facts, "hostname": results[1]["stdout"], "copy": results[2],
            "fetched": (fetch_dir / "sciops-inside.txt").read_text(encoding="utf-8"),
            "pid1": results[4]["content"]}


@pytest.mark.parametrize("pipelining", [False, True])
def test_the_connection_runs_a_playbook_in_a_machine_started_with_systemd_nspawn(
        ansible, tmp_path, host_machine, pipelining):
    outcome = run_connection_play(ansible, tmp_path, host_machine, pipelining)
    assert outcome["hostname"] == host_machine == outcome["facts"]["ansible_hostname"]
    assert outcome["facts"]["ansible_distribution"] == "Debian"
    # PID 1 of the machine is the stub init of --as-pid2, not this host's init.
    assert base64.b64decode(outcome["pid1"]) == b"(sd-stubinit)\n"
    assert outcome["fetched"] == f"written by {host_machine}\n"
    assert outcome["copy"]["changed"] is (not pipelining)  # the second parametrized run finds the file in place
    # The file went into the machine's volatile overlay: neither this host nor the image it runs from has it.
    assert not os.path.exists("/etc/sciops-inside.txt")
    assert not os.path.exists(os.path.join(testbed.node_root(), "etc", "sciops-inside.txt"))


def test_the_connection_says_when_there_is_no_such_machine(ansible, tmp_path):
    inventory = tmp_path / "machines.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"sciops-no-such-machine": {
        "ansible_connection": "sciops.fleet.nspawn"}}}}), encoding="utf-8")
    run = ansible(str(inventory), module="ansible.builtin.ping")
    assert sorted(run.unreachable) == ["sciops-no-such-machine"], run
    assert "no running systemd-nspawn machine named sciops-no-such-machine" in run.unreachable[
        "sciops-no-such-machine"][0]["msg"]


# --------------------------------------------------------------------------------------------
# on the test fleet: machines inside nodes


@pytest.fixture(scope="module")
def fleet_images(tmp_path_factory):
    if not shutil.which("mksquashfs"):
        pytest.skip("needs mksquashfs (squashfs-tools) on this host")
    where = tmp_path_factory.mktemp("images")
    root = testbed.node_root()
    return {version: build_squashfs(root, str(where / f"env-{version}.sqfs"), version) for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def machine_nodes(fleet):
    """The nodes that run machines (two are enough to show it on more than one)."""
    nodes = fleet.names[:2]
    yield nodes
    for name in nodes:
        fleet.ssh(name, "for m in sciops-env sciops-cmd; do systemctl disable --now systemd-nspawn@$m.service; "
                        "rm -rf /var/lib/machines/$m /etc/systemd/nspawn/$m.nspawn /var/lib/sciops-fleet/_machines/$m.json; "
                        "done; rm -f /var/tmp/sciops-env-*.sqfs", check=False, timeout=120)


def copy_image(fleet, ansible, nodes, image, dest):
    run = ansible(fleet.inventory_path, hosts=":".join(nodes), module="ansible.builtin.copy",
                  module_args=json.dumps({"src": image, "dest": dest, "mode": "0644"}))
    assert sorted(run.ok) == sorted(nodes), run


def nspawn(fleet, ansible, nodes, **args):
    return ansible(fleet.inventory_path, hosts=":".join(nodes), module="sciops.fleet.nspawn_container",
                   module_args=json.dumps(args))


def inside(fleet, node, machine, command):
    """Run COMMAND in MACHINE on NODE through systemd (systemd-run -M), as an operator would."""
    return fleet.ssh(node, f"systemd-run -M {machine} --wait --pipe --quiet /bin/sh -c {shlex.quote(command)}",
                     timeout=60).stdout


ENV_ARGS = {"name": "sciops-env", "image": "/var/tmp/sciops-env-v1.sqfs", "bind_ro": ["/etc/hostname:/etc/node-hostname"],
            "enabled": True, "state": "started"}


def boot_env_machine(fleet, ansible, fleet_images, nodes):
    """Machine sciops-env from image v1, booted on NODES; returns the module's run."""
    copy_image(fleet, ansible, nodes, fleet_images["v1"], "/var/tmp/sciops-env-v1.sqfs")
    run = nspawn(fleet, ansible, nodes, **ENV_ARGS)
    assert sorted(run.ok) == sorted(nodes), run
    return run


@pytest.mark.fleet
def test_a_machine_boots_from_a_squashfs_image_inside_a_node(fleet, ansible, fleet_images, machine_nodes):
    run = boot_env_machine(fleet, ansible, fleet_images, machine_nodes)
    for node in machine_nodes:
        result = run.ok[node][0]
        assert result["image_changed"] and result["started"] and result["enabled_changed"], result
        # The nodes have no unsquashfs: the image went through squashfuse.
        assert fleet.ssh(node, "command -v unsquashfs", check=False).returncode != 0
        assert fleet.ssh(node, "machinectl show -p State --value sciops-env").stdout.strip() == "running"
        assert fleet.ssh(node, "systemctl is-enabled systemd-nspawn@sciops-env.service").stdout.strip() == "enabled"
        out = inside(fleet, node, "sciops-env", "hostname; cat /etc/node-hostname /etc/sciops-image; "
                     "systemctl is-system-running --wait; cat /proc/1/comm").split()
        assert out == ["sciops-env", node, "v1", "running", "systemd"], out
    again = nspawn(fleet, ansible, machine_nodes, **ENV_ARGS)
    for node in machine_nodes:
        assert again.ok[node][0]["changed"] is False, again


@pytest.mark.fleet
def test_the_connection_plugin_reaches_a_booted_machine_inside_a_node(
        fleet, ansible, tmp_path, fleet_images, machine_nodes):
    boot_env_machine(fleet, ansible, fleet_images, machine_nodes)
    node = machine_nodes[0]
    # The node's processes are this host's processes: the plugin finds the machine's systemd-nspawn among them
    # and enters the machine from here. The machine name is the same on every node, so name the leader.
    node_leader = int(fleet.ssh(node, "machinectl show -p Leader --value sciops-env").stdout)
    host_leader = host_pid_of(fleet, node, node_leader)
    outcome = run_connection_play(ansible, tmp_path, "sciops-env", False, {"ansible_nspawn_leader": host_leader})
    assert outcome["hostname"] == "sciops-env"
    assert "systemd-nspawn" in outcome["facts"]["ansible_virtualization_tech_guest"]
    assert outcome["facts"]["ansible_service_mgr"] == "systemd"
    assert outcome["fetched"] == "written by sciops-env\n"
    assert inside(fleet, node, "sciops-env", "cat /etc/sciops-inside.txt") == "written by sciops-env\n"
    assert fleet.ssh(node, "test -e /etc/sciops-inside.txt", check=False).returncode == 1
    # On the node itself, with machined's answer for the leader, the plugin's command line does the same.
    argv = nsenter_argv("nsenter", node_leader, ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"],
                        ["/bin/sh", "-c", "hostname; cat /etc/sciops-inside.txt; systemctl is-system-running"])
    out = fleet.ssh(node, shlex.join(argv)).stdout.split("\n")
    assert out[:3] == ["sciops-env", "written by sciops-env", "running"], out


def host_pid_of(fleet, node, pid):
    """This host's PID of process PID of NODE (NSpid in /proc/PID/status lists it in every PID namespace)."""
    target = fleet.ssh(node, f"readlink /proc/{pid}/ns/pid").stdout.strip()
    start = fleet.ssh(node, f"cut -d' ' -f22 /proc/{pid}/stat").stdout.strip()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8") as handle:
                nspids = next(line.split()[1:] for line in handle if line.startswith("NSpid:"))
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                started = handle.read().rsplit(")", 1)[1].split()[19]
        except (OSError, StopIteration, IndexError):
            continue
        if len(nspids) >= 2 and nspids[1] == str(pid) and started == start and os.readlink(f"/proc/{entry}/ns/pid") == target:
            return int(entry)
    raise AssertionError(f"no host process for pid {pid} of {node}")


@pytest.mark.fleet
def test_replacing_the_image_of_a_running_machine_is_explicit(fleet, ansible, fleet_images, machine_nodes):
    boot_env_machine(fleet, ansible, fleet_images, machine_nodes)
    copy_image(fleet, ansible, machine_nodes, fleet_images["v2"], "/var/tmp/sciops-env-v2.sqfs")
    for node in machine_nodes:
        inside(fleet, node, "sciops-env", "echo kept-until-replaced > /var/tmp/inside")
    args = {"name": "sciops-env", "image": "/var/tmp/sciops-env-v2.sqfs", "state": "started",
            "bind_ro": ["/etc/hostname:/etc/node-hostname"]}
    leaders = {node: fleet.ssh(node, "machinectl show -p Leader --value sciops-env").stdout for node in machine_nodes}
    refused = nspawn(fleet, ansible, machine_nodes, **args)
    assert sorted(refused.failed) == sorted(machine_nodes), refused
    for node in machine_nodes:
        assert "set replace: true" in refused.failed[node][0]["msg"]
        assert fleet.ssh(node, "machinectl show -p Leader --value sciops-env").stdout == leaders[node]
        assert inside(fleet, node, "sciops-env", "cat /etc/sciops-image /var/tmp/inside").split() == [
            "v1", "kept-until-replaced"]
    replaced = nspawn(fleet, ansible, machine_nodes, replace=True, **args)
    assert sorted(replaced.ok) == sorted(machine_nodes), replaced
    for node in machine_nodes:
        result = replaced.ok[node][0]
        assert result["replaced"] and result["restarted"], result
        assert fleet.ssh(node, "machinectl show -p Leader --value sciops-env").stdout != leaders[node]
        state = inside(fleet, node, "sciops-env", "cat /etc/sciops-image; systemctl is-system-running --wait; "
                       "test -e /var/tmp/inside || echo gone")
        assert state.split() == ["v2", "running", "gone"]
    assert all(not r[0]["changed"] for r in nspawn(fleet, ansible, machine_nodes, replace=True, **args).ok.values())


@pytest.mark.fleet
def test_a_machine_runs_a_command_instead_of_booting(fleet, ansible, fleet_images, machine_nodes):
    copy_image(fleet, ansible, machine_nodes, fleet_images["v1"], "/var/tmp/sciops-env-v1.sqfs")
    # The node's network, so the command's server answers on the node's address; a read-only tree.
    run = nspawn(fleet, ansible, machine_nodes, name="sciops-cmd", image="/var/tmp/sciops-env-v1.sqfs", boot=False,
                 command=["/usr/bin/python3", "-m", "http.server", "--bind", "{{ ansible_host }}", "8401",
                          "--directory", "/etc"],
                 network="host", read_only=True, state="started")
    assert sorted(run.ok) == sorted(machine_nodes), run
    for node in machine_nodes:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{fleet.address(node)}:8401/sciops-image", timeout=5) as reply:
                    assert reply.read() == b"v1\n"
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert fleet.ssh(node, "test -e /etc/sciops-image", check=False).returncode == 1  # the machine's /etc
    removed = nspawn(fleet, ansible, machine_nodes, name="sciops-cmd", state="absent")
    for node in machine_nodes:
        assert removed.ok[node][0]["removed"] and removed.ok[node][0]["stopped"], removed
        assert fleet.ssh(node, "test -e /var/lib/machines/sciops-cmd", check=False).returncode == 1
        assert "sciops-cmd" not in fleet.ssh(node, "machinectl list --no-legend").stdout


@pytest.mark.fleet
def test_a_machine_that_cannot_start_fails_with_its_journal(fleet, ansible, fleet_images, machine_nodes):
    copy_image(fleet, ansible, machine_nodes, fleet_images["v1"], "/var/tmp/sciops-env-v1.sqfs")
    run = nspawn(fleet, ansible, machine_nodes, name="sciops-cmd", image="/var/tmp/sciops-env-v1.sqfs", boot=False,
                 command=["/usr/bin/sciops-no-such-program"], state="started")
    assert sorted(run.failed) == sorted(machine_nodes), run
    for node in machine_nodes:
        failure = run.failed[node][0]
        assert failure["msg"].startswith("systemd-nspawn@sciops-cmd.service did not start"), failure
        assert any("sciops-no-such-program" in line for line in failure["journal"]), failure
    nspawn(fleet, ansible, machine_nodes, name="sciops-cmd", state="absent")
