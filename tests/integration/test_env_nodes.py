# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Environment images built here, pushed to the real registry, rolled out to real nodes over SSH and run there.

The nodes have no loop devices: a mounted image is mounted through squashfuse by a systemd .mount unit. One test
lends a node the host's loop devices, and the same unit then mounts the image with the kernel's squashfs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest

import envkit

pytestmark = [pytest.mark.fleet, pytest.mark.registry,
              pytest.mark.skipif(not shutil.which("mksquashfs"), reason="needs mksquashfs (squashfs-tools)")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT = os.path.join(REPO, "playbooks", "rollout.yml")


APPS = ("envgreeter", "bare", "cowsay", "loopgreeter")


@pytest.fixture(autouse=True)
def remove_environments(fleet):
    """Each test leaves the nodes without its applications: mount units stopped and removed, releases, links and
    records gone (a mounted image would also keep later tests from removing the release directory)."""
    yield
    for app in APPS:
        script = (f"for unit in /etc/systemd/system/var-lib-sciops*fleet-{app}-*.mount; do "
                  f"[ -e \"$unit\" ] && systemctl disable --now \"$(basename \"$unit\")\" && rm -f \"$unit\"; done; "
                  f"systemctl daemon-reload; rm -rf /var/lib/sciops-fleet/{app} /etc/ansible/facts.d/sciops_fleet_{app}.fact")
        for name in fleet.names:
            fleet.ssh(name, script, check=False)
    for name in fleet.names:
        fleet.ssh(name, "rm -rf /opt/envs", check=False)


def _publish_env(registry, run_module, image, app, version, install, mount_point):
    """Push IMAGE, publish a release that installs it with INSTALL, return the release reference."""
    pushed = run_module("oras_push", target=f"{registry.host}/build/{app}:{version}",
                        files=[{"path": str(image), "media_type": "application/vnd.sciops.fleet.env.squashfs"}],
                        plain_http=True)
    assert not pushed.get("failed"), pushed
    release = {"schema_version": 1, "application": app, "version": version, "protocol": "1",
               "artifacts": [{"name": "env", "reference": f"{registry.host}/build/{app}@{pushed['digest']}",
                              "install": install, "mount_point": mount_point}]}
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{app}",
                           channels=["stable"], plain_http=True)
    assert not published.get("failed"), published
    return published["reference"]


def _rollout(ansible, fleet, release):
    run = ansible(fleet.inventory_path, playbook=ROLLOUT, extravars={
        "rollout_release": release, "rollout_plain_http": True, "rollout_batches": ["100%"]})
    assert run.rc == 0, run
    return run


def _run_on(fleet, name, command):
    return fleet.ssh(name, command, check=False)


def test_a_tree_image_with_its_library_closure_runs_on_nodes_that_lack_the_library(
        registry, fleet, ansible, run_module, tmp_path):
    with_closure = tmp_path / "with"
    without = tmp_path / "without"
    for base, closure in ((with_closure, True), (without, False)):
        base.mkdir()
        recipe = envkit.greeter_recipe(base, closure=closure)
        built = run_module("env_build", recipe=str(recipe), dest=str(base / "greeter.squashfs"))
        assert not built.get("failed"), built
    # No node has the library anywhere.
    for name in fleet.names:
        assert _run_on(fleet, name, "ldconfig -p | grep -c libgreet; find / -xdev -name 'libgreet*' | wc -l").stdout.split()[-1] == "0"

    good = _publish_env(registry, run_module, with_closure / "greeter.squashfs", "envgreeter", "1.0.0", "mount", "/opt/envs/greeter")
    _rollout(ansible, fleet, good)
    for name in fleet.names:
        ran = _run_on(fleet, name, "/opt/envs/greeter/bin/greeter node")
        assert ran.returncode == 0 and ran.stdout == "hello from libgreet 1, node\n", (name, ran)
        # Mounted read-only through squashfuse by a .mount unit, and the image's own metadata is there.
        mounts = _run_on(fleet, name, "findmnt -n -o FSTYPE,OPTIONS --target /var/lib/sciops-fleet/envgreeter/current/env/bin").stdout
        assert mounts.startswith("fuse.squashfuse") and "ro" in mounts.split()[1].split(","), mounts
        meta = json.loads(_run_on(fleet, name, "cat /opt/envs/greeter/meta/env.json").stdout)
        envkit.assert_uenv_meta(meta)
        assert meta["mount"] == "/opt/envs/greeter"
        units = _run_on(fleet, name, "systemctl list-units --type=mount --state=active --no-legend | grep -c greeter").stdout
        assert units.strip() == "1"

    # The same program without the closure, unpacked instead of mounted: it cannot find its library.
    bare = _publish_env(registry, run_module, without / "greeter.squashfs", "bare", "1.0.0", "unpack", "/opt/envs/bare")
    _rollout(ansible, fleet, bare)
    for name in fleet.names:
        ran = _run_on(fleet, name, "/opt/envs/bare/bin/greeter node")
        assert ran.returncode == 127 and "libgreet.so.1: cannot open shared object file" in ran.stderr, (name, ran)
        assert _run_on(fleet, name, "test -f /var/lib/sciops-fleet/bare/current/env/meta/manifest.json").returncode == 0

    # A rerun changes nothing; a newer release replaces the mounted one, and the old mount goes with its release.
    again = _rollout(ansible, fleet, good)
    assert all(stats == 0 for stats in again.stats.get("changed", {}).values()), again.stats
    (with_closure / "stage" / "bin" / "greeter-2").write_bytes((with_closure / "stage" / "bin" / "greeter").read_bytes())
    (with_closure / "stage" / "bin" / "greeter-2").chmod(0o755)
    rebuilt = run_module("env_build", recipe=str(with_closure / "recipe.yaml"), dest=str(with_closure / "greeter.squashfs"))
    assert rebuilt["changed"]
    second = _publish_env(registry, run_module, with_closure / "greeter.squashfs", "envgreeter", "2.0.0", "mount", "/opt/envs/greeter")
    _rollout(ansible, fleet, second)
    for name in fleet.names:
        ran = _run_on(fleet, name, "/opt/envs/greeter/bin/greeter-2 again")
        assert ran.returncode == 0 and ran.stdout == "hello from libgreet 1, again\n", (name, ran)


def test_a_venv_image_runs_its_console_script_from_the_mount_point(registry, fleet, ansible, run_module, tmp_path):
    # cowsay 6.1: pure Python, one small wheel with a console script, fetched by pip from the configured index.
    recipe = tmp_path / "cowsay.yaml"
    recipe.write_text(json.dumps({"name": "cowsay", "version": "6.1.0", "mount": "/opt/envs/cowsay",
                                  "source_date_epoch": 1700000000, "backend": "venv",
                                  "venv": {"requirements": ["cowsay==6.1"]}}))
    first = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "cowsay.squashfs"))
    assert not first.get("failed"), first
    second = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "cowsay-2.squashfs"))
    assert second["sha256"] == first["sha256"]  # a venv build is reproducible too
    assert first["meta"]["views"]["default"]["env"]["values"]["scalar"] == {"VIRTUAL_ENV": "/opt/envs/cowsay"}

    release = _publish_env(registry, run_module, tmp_path / "cowsay.squashfs", "cowsay", "6.1.0", "mount", "/opt/envs/cowsay")
    _rollout(ansible, fleet, release)
    for name in fleet.names:
        assert _run_on(fleet, name, "test -e /usr/local/bin/cowsay || python3 -c 'import cowsay'").returncode != 0
        ran = _run_on(fleet, name, "/opt/envs/cowsay/bin/cowsay -t moo")
        assert ran.returncode == 0 and "| moo |" in ran.stdout, (name, ran)
        where = _run_on(fleet, name, "/opt/envs/cowsay/bin/python -c 'import cowsay, sys; print(sys.prefix, cowsay.__file__)'")
        assert where.stdout.split() == ["/opt/envs/cowsay", "/opt/envs/cowsay/lib/python3.11/site-packages/cowsay/__init__.py"]


@pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="the host has no loop devices to lend a node")
def test_a_node_with_loop_devices_mounts_the_image_with_the_kernels_squashfs(registry, fleet, ansible, run_module, tmp_path):
    # A node that is a VM or a machine has loop devices; the test nodes do not. node1 gets the host's (device nodes
    # of the same numbers) for this test: the .mount unit then mounts through a loop device, not through squashfuse.
    node = fleet.names[0]
    make = "mknod -m 660 /dev/loop-control c 10 237; for i in $(seq 0 63); do mknod -m 660 /dev/loop$i b 7 $i; done"
    assert _run_on(fleet, node, make).returncode == 0
    try:
        recipe = envkit.greeter_recipe(tmp_path, closure=True)
        built = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "greeter.squashfs"))
        assert not built.get("failed"), built
        release = _publish_env(registry, run_module, tmp_path / "greeter.squashfs", "loopgreeter", "1.0.0", "mount",
                               "/opt/envs/loopgreeter")
        run = ansible(fleet.inventory_path, playbook=ROLLOUT, extravars={
            "rollout_release": release, "rollout_plain_http": True, "rollout_batches": ["100%"], "rollout_hosts": node})
        assert run.rc == 0, run
        ran = _run_on(fleet, node, "/opt/envs/loopgreeter/bin/greeter loop")
        assert ran.returncode == 0 and ran.stdout == "hello from libgreet 1, loop\n", ran
        mounted = _run_on(fleet, node, "findmnt -n -o FSTYPE,SOURCE,OPTIONS "
                                       "--target /var/lib/sciops-fleet/loopgreeter/current/env/bin").stdout.split()
        assert mounted[0] == "squashfs" and mounted[1].startswith("/dev/loop") and "ro" in mounted[2].split(","), mounted
        backing = _run_on(fleet, node, f"losetup -n -O BACK-FILE {mounted[1]}").stdout.strip()
        assert backing.startswith("/var/lib/sciops-fleet/loopgreeter/releases/") and backing.endswith("/.images/env.squashfs"), backing
        # Retiring the release's mount gives the loop device back.
        unit = _run_on(fleet, node, "systemctl list-units --type=mount --state=active --no-legend --plain "
                                    "| awk '/loopgreeter/ {print $1}'").stdout.split()
        assert len(unit) == 1, unit
        assert _run_on(fleet, node, f"systemctl disable --now {shlex.quote(unit[0])}").returncode == 0
        assert _run_on(fleet, node, f"losetup -n -O BACK-FILE {mounted[1]}").stdout.strip() == ""
    finally:
        _run_on(fleet, node, "rm -f /dev/loop-control /dev/loop[0-9]*")


def test_the_nodes_are_left_without_the_environments(fleet):
    # Runs last in this file: what the tests above deployed is gone (the fixture ran after each of them).
    for name in fleet.names:
        left = fleet.ssh(name, "ls /var/lib/sciops-fleet /opt/envs 2>/dev/null; systemctl list-units --type=mount --all "
                               "--no-legend --plain | grep -c sciops || true", check=False).stdout.split()
        assert not set(left) & set(APPS) and left[-1] == "0", (name, left)
