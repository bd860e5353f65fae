# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_access on the systemd test fleet: a real unprivileged user, logging in over SSH with its own key, restarts
what it was granted and nothing else, through real polkit on one node and real sudo on a node without polkit.

node1 runs polkitd as the node root ships it. On node2, polkit.service is masked: systemd then cannot start polkitd,
which is what a node without polkit looks like to every program that asks it, and the module (mechanism auto) must
fall back to a sudoers drop-in. Both are undone in teardown.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from testbed.fleet import SSH_OPTIONS

pytestmark = pytest.mark.fleet

UNIT = "sciops-access-app@.service"
CURRENT = "sciops-access-app@current.service"
OLDSTABLE = "sciops-access-app@oldstable.service"
OTHER = "sciops-access-other.service"
POLKIT_NODE, SUDO_NODE = "node1", "node2"
GRANT_FILES = "/etc/polkit-1/rules.d/60-sciops-fleet-* /etc/sudoers.d/sciops-fleet-*"
# polkitd reads a changed rules.d by inotify; allow it a moment, as a user logging in after the play would.
POLKIT_RELOAD = 5.0

SETUP = f"""set -e
getent group ops >/dev/null || groupadd ops
id ops >/dev/null 2>&1 || useradd --create-home --gid ops --shell /bin/bash ops
install -d -m 700 -o ops -g ops ~ops/.ssh
printf '[Unit]\\nDescription=access test %%i\\n[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/{UNIT}
printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/{OTHER}
systemctl daemon-reload
systemctl start {CURRENT} {OLDSTABLE} {OTHER}
"""
TEARDOWN = f"""rm -f {GRANT_FILES}
systemctl stop {CURRENT} {OLDSTABLE} {OTHER}
rm -rf /etc/systemd/system/{UNIT} /etc/systemd/system/{OTHER} /etc/systemd/system/{CURRENT}.d
systemctl unmask polkit.service
systemctl daemon-reload; systemctl reset-failed
loginctl terminate-user ops; userdel --remove ops; groupdel ops
"""


@pytest.fixture(scope="module")
def ops(fleet, tmp_path_factory):
    """The user ops (group ops) on every node, with its own key; the test units; polkit masked on SUDO_NODE."""
    assert len(fleet.names) >= 2, "this test needs two nodes (SCIOPS_TEST_NODES=2)"
    key = tmp_path_factory.mktemp("ops") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)], check=True)
    public = key.with_name("id_ed25519.pub").read_text(encoding="utf-8").strip()
    try:
        for name in (POLKIT_NODE, SUDO_NODE):
            fleet.ssh(name, SETUP)
            fleet.ssh(name, f"echo '{public}' > ~ops/.ssh/authorized_keys && chown ops:ops ~ops/.ssh/authorized_keys "
                            "&& chmod 600 ~ops/.ssh/authorized_keys")
        fleet.ssh(SUDO_NODE, "systemctl mask polkit.service && systemctl stop polkit.service")
        yield key
    finally:
        for name in (POLKIT_NODE, SUDO_NODE):
            fleet.ssh(name, TEARDOWN, check=False)


def as_ops(fleet, key, node, command):
    """Run COMMAND on NODE as ops, logged in over SSH with ops's own key (never root's)."""
    return subprocess.run(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", *SSH_OPTIONS,
                           f"ops@{fleet.address(node)}", command],
                          capture_output=True, text=True, timeout=60, check=False)


def invocation(fleet, node, unit=CURRENT):
    return fleet.ssh(node, f"systemctl show -p InvocationID --value {unit}").stdout.strip()


def service_access(fleet, ansible, node, check=False, **args):
    """Run sciops.fleet.service_access with ARGS on NODE; the run's result for that node (ok or failed)."""
    run = ansible(fleet.inventory_path, hosts=node, module="sciops.fleet.service_access",
                  module_args=json.dumps(args), check=check)
    results = run.ok.get(node) or run.failed.get(node)
    assert results, run
    return dict(results[-1], failed=node in run.failed)


def four_runs(fleet, ansible, node, **args):
    """check, apply, check, apply: the module's changed flags and the last result."""
    results = [service_access(fleet, ansible, node, check=check, **args) for check in (True, False, True, False)]
    for result in results:
        assert not result.get("failed"), result
    return [result["changed"] for result in results], results[-1]


def restart_as_ops(fleet, key, node, command):
    """Run COMMAND (a restart of CURRENT) as ops until it works or POLKIT_RELOAD passed; the last result."""
    deadline = time.monotonic() + POLKIT_RELOAD
    while True:
        result = as_ops(fleet, key, node, command)
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def grant_files(fleet, node):
    return fleet.ssh(node, f"ls {GRANT_FILES} 2>/dev/null || true").stdout.split()


def assert_refused(result, what):
    assert result.returncode != 0, (what, result.stdout, result.stderr)


def test_with_polkit_ops_restarts_its_service_and_cannot_touch_anything_else(fleet, ansible, ops):
    grant = {"name": "access-app", "group": "ops", "units": ["sciops-access-app@*.service"], "verbs": ["restart", "status"]}
    # Before the grant, ops is refused like any user.
    before = invocation(fleet, POLKIT_NODE)
    assert_refused(as_ops(fleet, ops, POLKIT_NODE, f"systemctl restart {CURRENT}"), "restart before the grant")
    changed, result = four_runs(fleet, ansible, POLKIT_NODE, **grant)
    assert changed == [True, True, False, False]
    assert result["mechanism"] == "polkit", result
    assert grant_files(fleet, POLKIT_NODE) == [result["grant_file"]]

    restarted = restart_as_ops(fleet, ops, POLKIT_NODE, f"systemctl restart {CURRENT}")
    assert restarted.returncode == 0, restarted.stderr
    after = invocation(fleet, POLKIT_NODE)
    assert after and after != before
    # Every instance of the template, and the short name systemctl completes.
    assert as_ops(fleet, ops, POLKIT_NODE, "systemctl restart sciops-access-app@oldstable").returncode == 0
    # status needs no grant; the state is there.
    assert "active (running)" in as_ops(fleet, ops, POLKIT_NODE, f"systemctl status --no-pager {CURRENT}").stdout

    for command in ("systemctl restart ssh.service", f"systemctl restart {OTHER}", f"systemctl stop {CURRENT}",
                    f"systemctl enable {CURRENT}", f"systemctl disable {OTHER}", "systemctl daemon-reload",
                    f"systemctl set-property {CURRENT} CPUWeight=50", "systemd-run true",
                    f"systemctl kill {CURRENT}", f"SYSTEMD_EDITOR=true systemctl edit {CURRENT}",
                    f"systemctl mask {CURRENT}", "machinectl shell .host"):
        assert_refused(as_ops(fleet, ops, POLKIT_NODE, f"{command} </dev/null"), command)
    assert invocation(fleet, POLKIT_NODE) == after, "a refused command changed the service"
    assert fleet.ssh(POLKIT_NODE, f"systemctl is-active {CURRENT} {OTHER} ssh.service").stdout.split() == ["active"] * 3
    assert fleet.ssh(POLKIT_NODE, f"test ! -e /etc/systemd/system/{CURRENT}.d && echo none").stdout.strip() == "none"

    gone = service_access(fleet, ansible, POLKIT_NODE, name="access-app", state="absent")
    assert gone["changed"] and gone["removed"] == [result["grant_file"]]
    assert grant_files(fleet, POLKIT_NODE) == []
    time.sleep(POLKIT_RELOAD)
    assert_refused(as_ops(fleet, ops, POLKIT_NODE, f"systemctl restart {CURRENT}"), "restart after state=absent")
    assert not service_access(fleet, ansible, POLKIT_NODE, name="access-app", state="absent")["changed"]


def test_without_polkit_ops_restarts_its_service_through_exact_sudo_lines(fleet, ansible, ops):
    grant = {"name": "access-app", "group": "ops", "units": ["sciops-access-app@*.service"],
             "instances": ["current"], "verbs": ["restart"]}
    changed, result = four_runs(fleet, ansible, SUDO_NODE, **grant)
    assert changed == [True, True, False, False]
    assert result["mechanism"] == "sudoers", result
    assert "polkit.service is masked" in result["mechanism_reason"]
    assert grant_files(fleet, SUDO_NODE) == ["/etc/sudoers.d/sciops-fleet-access-app"]

    before = invocation(fleet, SUDO_NODE)
    restarted = as_ops(fleet, ops, SUDO_NODE, f"sudo -n systemctl restart {CURRENT}")
    assert restarted.returncode == 0, restarted.stderr
    after = invocation(fleet, SUDO_NODE)
    assert after and after != before
    oldstable = invocation(fleet, SUDO_NODE, OLDSTABLE)
    for command in (f"sudo -n systemctl restart {CURRENT} extra", f"sudo -n systemctl restart {CURRENT} ssh.service",
                    "sudo -n systemctl restart ssh.service", f"sudo -n systemctl restart {OLDSTABLE}",
                    f"sudo -n systemctl stop {CURRENT}", f"sudo -n systemctl enable {CURRENT}",
                    "sudo -n systemctl daemon-reload", "sudo -n systemd-run true", "sudo -n -s true",
                    f"systemctl restart {CURRENT}"):
        assert_refused(as_ops(fleet, ops, SUDO_NODE, f"{command} </dev/null"), command)
    assert invocation(fleet, SUDO_NODE) == after and invocation(fleet, SUDO_NODE, OLDSTABLE) == oldstable
    assert fleet.ssh(SUDO_NODE, f"systemctl is-active {CURRENT} ssh.service").stdout.split() == ["active"] * 2

    # Without instances, a pattern cannot be written for sudo: refused, and the grant in place stays as it was.
    refused = service_access(fleet, ansible, SUDO_NODE, name="access-app", group="ops", units=grant["units"],
                             verbs=["restart", "start"])
    assert refused.get("failed") and "matches spaces and further arguments" in refused["msg"], refused
    assert fleet.ssh(SUDO_NODE, "grep -c NOPASSWD /etc/sudoers.d/sciops-fleet-access-app").stdout.strip() == "1"

    gone = service_access(fleet, ansible, SUDO_NODE, name="access-app", state="absent")
    assert gone["changed"] and grant_files(fleet, SUDO_NODE) == []
    assert_refused(as_ops(fleet, ops, SUDO_NODE, f"sudo -n systemctl restart {CURRENT}"), "sudo after state=absent")


@pytest.mark.parametrize("node", [POLKIT_NODE, SUDO_NODE])
@pytest.mark.parametrize("args, reason", [
    ({"units": ["*"], "verbs": ["restart"]}, "too broad"),
    ({"units": ["*.service"], "verbs": ["restart"]}, "too broad"),
    ({"units": ["ssh*"], "verbs": ["restart"]}, "too broad"),
    ({"units": [CURRENT], "verbs": ["enable"]}, "manage-unit-files"),
    ({"units": [CURRENT], "verbs": ["daemon-reload"]}, "not per unit"),
    ({"units": ["reboot.target"], "verbs": ["start"]}, "whole node"),
])
def test_a_grant_that_would_be_root_is_refused_with_the_reason_and_writes_nothing(
        fleet, ansible, ops, node, args, reason):
    result = service_access(fleet, ansible, node, name="access-bad", group="ops", **args)
    assert result.get("failed") and reason in result["msg"], result
    assert grant_files(fleet, node) == []
