# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A node with the layout of earlier versions (restart records in units/, the layout record as
sciops_fleet_node.fact) is migrated by a rollout and node_base, keeps its history, and an application named
"units" or "node" keeps what is its own."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
from test_lockstep import _bundle

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT = os.path.join(REPO, "playbooks", "rollout.yml")
NODE_BASE = os.path.join(REPO, "playbooks", "node_base.yml")
APP, PORT = "layoutsrv", 8311
ROOT, FACTS = "/var/lib/sciops-fleet", "/etc/ansible/facts.d"
LEGACY = f"{ROOT}/units"
LEGACY_FACT, LAYOUT_FACT = f"{FACTS}/sciops_fleet_node.fact", f"{FACTS}/sciops_fleet.fact"

# python's HTTP server showing the VERSION of the current release.
SERVICE = {
    "unit": {
        "Unit": {"Description": "layout migration test server (%i)"},
        "Service": {
            "Type": "exec",
            "EnvironmentFile": f"/etc/sciops-fleet/{APP}/%i.env",
            "ExecStart": "/usr/bin/python3 -m http.server --bind {{ ansible_host }} ${PORT} "
                         f"--directory {ROOT}/{APP}/%i/app/www",
        },
        "Install": {"WantedBy": "multi-user.target"},
    },
    "slot_environment": {"current": {"PORT": str(PORT)}},
}


def _publish(registry, run_module, tmp_path, version):
    bundle = _bundle(tmp_path, f"{APP}-{version}", {"www/VERSION": f"{APP} {version}\n"})
    pushed = run_module("oras_push", target=f"{registry.host}/build/{APP}:{version}", files=[{"path": str(bundle)}],
                        plain_http=True)
    release = {"schema_version": 1, "application": APP, "version": version, "protocol": "1",
               "artifacts": [{"name": "app", "reference": f"{registry.host}/build/{APP}@{pushed['digest']}",
                              "install": "extract"}],
               "health": [{"http": f"http://${{address}}:{PORT}/VERSION", "timeout": 2, "retries": 10, "delay": 0.5}]}
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{APP}",
                           plain_http=True)
    assert not published.get("failed"), published
    return f"{registry.host}/releases/{APP}:{version}"


def _rollout(ansible, fleet, release, node):
    result = ansible(fleet.inventory_path, playbook=ROLLOUT,
                     extravars={"rollout_release": release, "rollout_plain_http": True, "rollout_batches": ["100%"],
                                "rollout_hosts": node, "rollout_service": SERVICE})
    assert result.rc == 0, result.stdout[-4000:]


def _node_base(ansible, fleet, node):
    result = ansible(fleet.inventory_path, playbook=NODE_BASE, extravars={"node_base_hosts": node})
    assert result.rc == 0, result.stdout[-4000:]


def _answer(address):
    try:
        with urllib.request.urlopen(f"http://{address}:{PORT}/VERSION", timeout=5) as response:
            return response.read().decode().strip()
    except (urllib.error.URLError, OSError):
        return None


def _ls(fleet, node, pattern):
    return fleet.ssh(node, f"cd {ROOT} && ls -d {pattern} 2>/dev/null", check=False).stdout.split()


@pytest.fixture(name="node")
def node_fixture(fleet):
    """The first node, without the application, the legacy layout or a layout record it did not have."""
    name = fleet.names[0]
    had_layout_fact = fleet.ssh(name, f"test -e {LAYOUT_FACT}", check=False).returncode == 0

    def wipe():
        fleet.ssh(name, f"systemctl disable --now {APP}@current {APP}@oldstable 2>/dev/null; "
                        f"rm -rf /etc/systemd/system/{APP}@.service /etc/sciops-fleet/{APP} {ROOT}/_units/{APP}@* ; "
                        f"systemctl daemon-reload; rm -rf {ROOT}/{APP} {FACTS}/sciops_fleet_{APP}.fact {LEGACY} "
                        f"{LEGACY_FACT}" + ("" if had_layout_fact else f" {LAYOUT_FACT}"), check=False)
    wipe()
    yield name
    wipe()


def test_a_node_with_the_old_layout_is_migrated_and_keeps_its_history(
        registry, fleet, ansible, run_module, tmp_path, node):
    v1, v2 = (_publish(registry, run_module, tmp_path, version) for version in ("1.0", "2.0"))
    _rollout(ansible, fleet, v1, node)
    assert _answer(fleet.address(node)) == f"{APP} 1.0"

    # The layout of earlier versions: the restart records in units/, beside what an application named "units"
    # keeps there (config.json looks like a record but is not named after a unit), and the old layout record.
    fleet.ssh(node, f"mkdir -p {LEGACY}/releases/x && echo kept > {LEGACY}/releases/x/data && "
                    f"""echo '{{"unit": "units", "files": {{}}}}' > {LEGACY}/config.json && """
                    f"mv {ROOT}/_units/{APP}@*.json {LEGACY}/ && "
                    f"""echo '{{"state_root": "{ROOT}", "cache_root": "/var/cache/sciops-fleet"}}' > {LEGACY_FACT}""")
    records = _ls(fleet, node, f"units/{APP}@*.json")
    assert records and not _ls(fleet, node, f"_units/{APP}@*.json")
    before = json.loads(fleet.ssh(node, f"cat {FACTS}/sciops_fleet_{APP}.fact").stdout)["history"]

    # The next rollout moves the restart records, and only them, to _units/ and upgrades as usual.
    _rollout(ansible, fleet, v2, node)
    assert _ls(fleet, node, f"_units/{APP}@*.json") == [r.replace("units/", "_units/") for r in records]
    assert _ls(fleet, node, "units/*") == ["units/config.json", "units/releases"]
    assert fleet.ssh(node, f"cat {LEGACY}/releases/x/data {LEGACY}/config.json").stdout == (
        'kept\n{"unit": "units", "files": {}}\n')
    history = json.loads(fleet.ssh(node, f"cat {FACTS}/sciops_fleet_{APP}.fact").stdout)["history"]
    assert len(history) > len(before) and history[:len(before)] == before
    switch = [h for h in history[len(before):] if h["event"] == "switch"][-1]
    assert (switch["from"]["version"], switch["to"]["version"]) == ("1.0", "2.0"), switch
    assert fleet.ssh(node, f"systemctl is-active {APP}@current").stdout.strip() == "active"
    assert _answer(fleet.address(node)) == f"{APP} 2.0"

    # node_base writes sciops_fleet.fact and removes its own old record...
    _node_base(ansible, fleet, node)
    layout = json.loads(fleet.ssh(node, f"cat {LAYOUT_FACT}").stdout)
    assert layout == {"state_root": ROOT, "cache_root": "/var/cache/sciops-fleet"}
    assert fleet.ssh(node, f"test -e {LEGACY_FACT}", check=False).returncode != 0
    # ...but not the record of an application named "node", even one that names a state_root.
    record = {"application": "node", "state_root": ROOT, "releases": {}, "current": None, "history": []}
    fleet.ssh(node, f"echo '{json.dumps(record)}' > {LEGACY_FACT}")
    _node_base(ansible, fleet, node)
    assert json.loads(fleet.ssh(node, f"cat {LEGACY_FACT}").stdout) == record
    # ...nor a damaged one: it is not node_base's to judge, and node_base still runs.
    fleet.ssh(node, f"echo 'not json {{' > {LEGACY_FACT}")
    _node_base(ansible, fleet, node)
    assert fleet.ssh(node, f"cat {LEGACY_FACT}").stdout == "not json {\n"
