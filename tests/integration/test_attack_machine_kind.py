# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install kind ``machine`` on real nodes, as its users, an attacker with a hostile image and an unlucky operator
would try it: each test asserts what the collection promises (docs/services.md and the project's standards)."""

from __future__ import annotations

import json

import pytest

from test_machine_kind import (  # the happy path's helpers: images, publishing, rollouts, answers
    APP,
    MACHINE,
    PORTS,
    STATE,
    _answer,
    _base_members,
    _publish,
    _push_oci_image,
    _push_tar_image,
    _rollout,
)

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

UNDERSCORE_APP = "mach_srv"
HAND_MADE = "override-by-hand.conf"


def _wipe(fleet, nodes):
    units = [f"systemd-nspawn@{app}-{slot}.service" for app in (APP, UNDERSCORE_APP) for slot in PORTS]
    for name in nodes:
        fleet.ssh(name, "; ".join(
            f"systemctl disable --now {unit} 2>/dev/null; rm -rf /etc/systemd/system/{unit}.d "
            f"{STATE}/_units/{unit}.json" for unit in units) + "; " + "; ".join(
            f"rm -f /etc/systemd/nspawn/{app}-{slot}.nspawn" for app in (APP, UNDERSCORE_APP) for slot in PORTS) +
            f"; systemctl daemon-reload; systemctl reset-failed; rm -rf {STATE}/{APP} {STATE}/{UNDERSCORE_APP} {STATE}/_data "
            f"/etc/ansible/facts.d/sciops_fleet_{APP}.fact /etc/ansible/facts.d/sciops_fleet_{UNDERSCORE_APP}.fact",
            check=False, timeout=120)


@pytest.fixture
def node(fleet):
    nodes = fleet.names[:1]
    _wipe(fleet, nodes)
    yield nodes[0]
    _wipe(fleet, nodes)


def _health(ansible, fleet, node, app=APP):
    run = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_health",
                  module_args=json.dumps({"application": app, "address": fleet.address(node), "record": False}))
    results = run.ok.get(node) or run.failed.get(node)
    return results[0]


def _invocation(fleet, node, unit):
    return fleet.ssh(node, f"systemctl show --property=InvocationID --value {unit}").stdout.strip()


def test_a_machine_stopped_by_hand_is_running_again_after_the_next_rollout(registry, fleet, ansible, run_module,
                                                                           tmp_path, node):
    """An operator (or a crash, or a revert killed before its machine was restarted) leaves the converged node's
    machine stopped. The next rollout of the release the node runs must not report the node fine while nothing
    runs: it must start the machine again (or fail the node)."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    first = _rollout(ansible, fleet, v1, node)
    assert first.rc == 0, first.stdout[-4000:]
    assert _answer(fleet.address(node), "current") == f"{APP} 1.0"

    fleet.ssh(node, f"systemctl stop systemd-nspawn@{APP}-current.service")
    assert _answer(fleet.address(node), "current", timeout=0) is None
    again = _rollout(ansible, fleet, v1, node)
    answer = _answer(fleet.address(node), "current")
    assert again.rc != 0 or answer == f"{APP} 1.0", (
        f"the rollout reported the node fine (rc={again.rc}) while its machine is stopped: {answer!r}\n"
        + again.stdout[-3000:])


def test_a_rebooted_node_runs_a_healthy_machine(registry, fleet, ansible, run_module, tmp_path, node):
    """The machine is enabled in machines.target, so a reboot starts it again with the same files: release_health
    and status must say it runs what current points to, not ask for a switch."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    first = _rollout(ansible, fleet, v1, node)
    assert first.rc == 0, first.stdout[-4000:]
    fleet.restart(node)
    assert _answer(fleet.address(node), "current", timeout=60) == f"{APP} 1.0"
    health = _health(ansible, fleet, node)
    assert health.get("healthy") is True, health.get("checks")


def test_a_machine_restarted_by_hand_with_the_same_files_is_healthy(registry, fleet, ansible, run_module, tmp_path, node):
    """`systemctl restart` of the machine (a log rotation, an operator) changes nothing it runs."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    first = _rollout(ansible, fleet, v1, node)
    assert first.rc == 0, first.stdout[-4000:]
    fleet.ssh(node, f"systemctl restart systemd-nspawn@{APP}-current.service")
    assert _answer(fleet.address(node), "current") == f"{APP} 1.0"
    health = _health(ansible, fleet, node)
    assert health.get("healthy") is True, health.get("checks")


def test_a_hand_made_unit_of_the_machine_name_is_left_alone(registry, fleet, ansible, run_module, tmp_path, node):
    """docs/services.md: 'a machine of the same name made otherwise is left alone and the switch reports it refused'.
    A machine made by hand as systemd-nspawn@<name>.service with a drop-in of its own (and no .nspawn file, as
    `machinectl start` of /var/lib/machines/<name> needs none) must not be rewritten or restarted."""
    unit = f"systemd-nspawn@{APP}-current.service"
    fleet.ssh(node, f"mkdir -p /etc/systemd/system/{unit}.d && printf '[Service]\\nType=simple\\nExecStart=\\nExecStart=/bin/sleep infinity\\n'"
                    f" > /etc/systemd/system/{unit}.d/{HAND_MADE} && systemctl daemon-reload && systemctl start {unit}")
    before = _invocation(fleet, node, unit)
    assert before
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    rolled = _rollout(ansible, fleet, v1, node)
    try:
        assert _invocation(fleet, node, unit) == before, "the hand-made machine was restarted"
        assert fleet.ssh(node, f"ls /etc/systemd/system/{unit}.d").stdout.split() == [HAND_MADE], \
            "the collection wrote its files beside the hand-made machine's"
        assert rolled.rc != 0 and f"{APP}-current" in rolled.stdout, rolled.stdout[-3000:]
    finally:
        fleet.ssh(node, f"systemctl stop {unit}", check=False)


def test_an_application_name_nspawn_refuses_is_refused_when_published(registry, fleet, ansible, run_module, tmp_path,
                                                                      node):
    """'_' is accepted in an application that ships a machine, but a machine name is a host name and nspawn refuses
    `mach_srv-current`: the release must be refused with the application named (or the machine must run)."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, UNDERSCORE_APP)
    release = {"schema_version": 1, "application": UNDERSCORE_APP, "version": "1.0", "protocol": "1", "role": "server",
               "artifacts": [{"name": "rootfs", "reference": rootfs, "install": "machine", "machine": MACHINE}],
               "configs": [{"source": "rootfs/root/etc/server/env.in", "dest": "conf/env"},
                           {"source": "rootfs/root/etc/server/version.in", "dest": "www/version"}]}
    published = run_module("release_publish", manifest_data=release,
                           repository=f"{registry.host}/releases/{UNDERSCORE_APP}", plain_http=True)
    if published.get("failed"):
        assert "application" in published["msg"], published["msg"]
        return
    rolled = _rollout(ansible, fleet, f"{registry.host}/releases/{UNDERSCORE_APP}:1.0", node)
    assert rolled.rc == 0, rolled.stdout[-3000:]
    assert _answer(fleet.address(node), "current") == f"{UNDERSCORE_APP} 1.0"


def test_a_setuid_file_of_an_image_is_not_open_to_the_nodes_users(registry, fleet, ansible, run_module, tmp_path, node):
    """An image's setuid-root program lands in releases/<id>/rootfs on the node. Device nodes are refused because
    'a disk's or memory's node in a release would be open to whoever reaches it on the host'; a setuid-root program
    is the same: an unprivileged user of the node must not be able to run it (machinectl keeps its trees in a 0700
    directory for this reason)."""
    with open("/bin/busybox", "rb") as handle:
        busybox = handle.read()
    layers = [_base_members(), [("usr/bin/rootshell", "file", {"data": busybox, "mode": 0o4755})]]
    image = _push_oci_image(registry, run_module, tmp_path, f"{APP}-suid", layers)
    v1 = _publish(registry, run_module, APP, "1.0", "1", image)
    rolled = _rollout(ansible, fleet, v1, node)
    assert rolled.rc == 0, rolled.stdout[-3000:]
    path = f"{STATE}/{APP}/current/rootfs/root/usr/bin/rootshell"
    assert fleet.ssh(node, f"stat -c %a:%u {path}").stdout.strip() in ("4755:0", "755:0")
    reachable = fleet.ssh(node, f"setpriv --reuid=65534 --regid=65534 --clear-groups -- /bin/sh -c "
                                f"'test -u {path} && test -x {path} && echo reachable'", check=False)
    assert "reachable" not in reachable.stdout, f"a setuid-root file of the image is executable by nobody: {path}"


def test_check_mode_switch_to_a_machine_release_changes_nothing(registry, fleet, ansible, run_module, tmp_path, node):
    """release_switch in check mode predicts the machine's restart and touches neither its files nor its unit."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    v2 = _publish(registry, run_module, APP, "2.0", "1", rootfs)
    assert _rollout(ansible, fleet, v1, node).rc == 0
    installed = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_install",
                        module_args=json.dumps({"release": v2, "plain_http": True,
                                                "config_vars": {"address": fleet.address(node)}}))
    assert node in installed.ok, installed
    unit = f"systemd-nspawn@{APP}-current.service"
    snapshot = f"cat /etc/systemd/nspawn/{APP}-current.nspawn /etc/systemd/system/{unit}.d/*; readlink {STATE}/{APP}/current"
    before, invocation = fleet.ssh(node, snapshot).stdout, _invocation(fleet, node, unit)
    digest = installed.ok[node][0]["release_id"]
    checked = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_switch", check=True,
                      module_args=json.dumps({"application": APP, "release": digest}))
    assert node in checked.ok, checked
    result = checked.ok[node][0]
    assert result["changed"] is True, result
    assert fleet.ssh(node, snapshot).stdout == before and _invocation(fleet, node, unit) == invocation
    assert _answer(fleet.address(node), "current") == f"{APP} 1.0"
    # The real switch: release_switch documents RV machines (what each slot's machine did, its error and journal).
    switched = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_switch",
                       module_args=json.dumps({"application": APP, "release": digest}))
    assert node in switched.ok, switched
    assert [m.get("action") for m in switched.ok[node][0].get("machines", [])] == ["restarted"], switched.ok[node][0]


def test_a_machine_that_does_not_start_is_reported_by_release_switch(registry, fleet, ansible, run_module, tmp_path,
                                                                     node):
    """release_switch: 'A machine that does not start is reported in RV(machines), not failed here'. Called on its own
    (not through the rollout), the switch to a release whose machine cannot start must say so."""
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    broken = dict(MACHINE, command=["/usr/bin/sciops-no-such-server"])
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs, machine=broken)
    installed = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_install",
                        module_args=json.dumps({"release": v1, "plain_http": True,
                                                "config_vars": {"address": fleet.address(node)}}))
    assert node in installed.ok, installed
    switched = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.release_switch",
                       module_args=json.dumps({"application": APP, "release": installed.ok[node][0]["release_id"]}))
    result = (switched.ok.get(node) or switched.failed.get(node))[0]
    machines = result.get("machines") or []
    assert [(m.get("machine"), m.get("ok")) for m in machines] == [(f"{APP}-current", False)], result
    assert "journal" in machines[0] and machines[0].get("error"), machines
