# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lockstep on real nodes: a server keeps its old protocol running as oldstable until every client has moved."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT = os.path.join(REPO, "playbooks", "rollout.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
RETIRE = os.path.join(REPO, "playbooks", "retire_oldstable.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
SERVER, CLIENT = "lockserver", "lockclient"
PORTS = {"current": 8301, "oldstable": 8302}


def _bundle(tmp_path, name, files):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    bundle = tmp_path / f"{name}.tar.gz"
    bundle.write_bytes(buffer.getvalue())
    return bundle


def _publish(registry, run_module, tmp_path, app, version, protocol, role, health_path="/VERSION"):
    bundle = _bundle(tmp_path, f"{app}-{version}", {"www/VERSION": f"{app} {version} protocol {protocol}\n"})
    pushed = run_module("oras_push", target=f"{registry.host}/build/{app}:{version}", files=[{"path": str(bundle)}],
                        plain_http=True)
    release = {"schema_version": 1, "application": app, "version": version, "protocol": protocol, "role": role,
               "artifacts": [{"name": "app", "reference": f"{registry.host}/build/{app}@{pushed['digest']}",
                              "install": "extract"}]}
    if role == "server":
        release["health"] = [{"http": f"http://${{address}}:{PORTS['current']}{health_path}", "timeout": 2, "retries": 10,
                              "delay": 0.5}]
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{app}",
                           plain_http=True)
    assert not published.get("failed"), published
    return f"{registry.host}/releases/{app}:{version}"


# The server: python's HTTP server showing the VERSION of the release its slot points to, on the slot's port.
SERVICE = {
    "unit": {
        "Unit": {"Description": "lockstep test server (%i)"},
        "Service": {
            "Type": "exec",
            "EnvironmentFile": f"/etc/sciops-fleet/{SERVER}/%i.env",
            "ExecStart": "/usr/bin/python3 -m http.server --bind {{ ansible_host }} ${PORT} "
                         f"--directory /var/lib/sciops-fleet/{SERVER}/%i/app/www",
        },
        "Install": {"WantedBy": "multi-user.target"},
    },
    "slot_environment": {slot: {"PORT": str(port)} for slot, port in PORTS.items()},
}


def _rollout(ansible, fleet, release, hosts, server=False):
    extravars = {"rollout_release": release, "rollout_plain_http": True, "rollout_batches": ["100%"],
                 "rollout_hosts": hosts}
    if server:
        extravars.update(rollout_service=SERVICE, rollout_keep_oldstable=True)
    result = ansible(fleet.inventory_path, playbook=ROLLOUT, extravars=extravars)
    assert result.rc == 0, result.stdout[-4000:]
    return result


def _answer(address, slot):
    try:
        with urllib.request.urlopen(f"http://{address}:{PORTS[slot]}/VERSION", timeout=5) as response:
            return response.read().decode().strip()
    except (urllib.error.URLError, OSError):
        return None


def _retire(ansible, fleet, check=False):
    return ansible(fleet.inventory_path, playbook=RETIRE, check=check,
                   extravars={"retire_oldstable_application": SERVER, "retire_oldstable_client_application": CLIENT})


def _status(ansible, fleet, scope, tmp_path):
    status = ansible(fleet.inventory_path, playbook=STATUS,
                     extravars={"status_application": SERVER, "status_hosts": scope,
                                "status_json_path": str(tmp_path / "m.json")})
    assert status.rc == 0, status.stdout[-3000:]
    return {row["node"]: row for row in json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["nodes"]}


@pytest.fixture
def clean_apps(fleet):
    def wipe():
        for name in fleet.names[:4]:
            fleet.thaw(name)
            fleet.ssh(name, f"systemctl disable --now {SERVER}@current {SERVER}@oldstable 2>/dev/null; "
                            f"rm -rf /etc/systemd/system/{SERVER}@.service /etc/sciops-fleet/{SERVER} "
                            f"/var/lib/sciops-fleet/_units/{SERVER}@* ; systemctl daemon-reload; "
                            f"rm -rf /var/lib/sciops-fleet/{SERVER} /var/lib/sciops-fleet/{CLIENT} "
                            f"/etc/ansible/facts.d/sciops_fleet_{SERVER}.fact /etc/ansible/facts.d/sciops_fleet_{CLIENT}.fact",
                      check=False)
    wipe()
    yield
    wipe()


def test_server_keeps_oldstable_until_every_client_moves(registry, fleet, ansible, run_module, tmp_path, clean_apps):
    server, clients = fleet.names[0], fleet.names[1:4]
    address = fleet.address(server)
    scope = ",".join([server] + clients)
    server_v1 = _publish(registry, run_module, tmp_path, SERVER, "1.0", "1", "server")
    server_v2 = _publish(registry, run_module, tmp_path, SERVER, "2.0", "2", "server")
    client_v1 = _publish(registry, run_module, tmp_path, CLIENT, "1.0", "1", "client")
    client_v2 = _publish(registry, run_module, tmp_path, CLIENT, "2.0", "2", "client")

    # Protocol 1 everywhere: the server runs one instance, nothing to keep yet.
    _rollout(ansible, fleet, server_v1, server, server=True)
    _rollout(ansible, fleet, client_v1, ",".join(clients))
    assert _answer(address, "current") == "lockserver 1.0 protocol 1"
    assert _answer(address, "oldstable") is None

    # The server moves to protocol 2; 1.0 keeps serving as oldstable on its own port, beside 2.0.
    _rollout(ansible, fleet, server_v2, server, server=True)
    assert _answer(address, "current") == "lockserver 2.0 protocol 2"
    assert _answer(address, "oldstable") == "lockserver 1.0 protocol 1"
    units = fleet.ssh(server, f"systemctl is-active {SERVER}@current {SERVER}@oldstable").stdout.split()
    assert units == ["active", "active"]
    # A rerun of the same release restarts nothing and changes nothing.
    again = _rollout(ansible, fleet, server_v2, server, server=True)
    assert again.stats["changed"].get(server, 0) == 0, again.stdout[-3000:]
    assert _answer(address, "oldstable") == "lockserver 1.0 protocol 1"

    # The status matrix shows both releases of the server.
    assert _status(ansible, fleet, scope, tmp_path)[server]["oldstable"] == "1.0"

    # Every client is still on protocol 1: retire refuses and names them, in check mode too; nothing changes.
    for check in (True, False):
        refused = _retire(ansible, fleet, check=check)
        assert refused.rc != 0
        for client in clients:
            assert f"{client} (lockclient 1.0, protocol 1)" in refused.stdout, refused.stdout[-3000:]
    assert _answer(address, "oldstable") == "lockserver 1.0 protocol 1"

    # Two clients move; the third holds oldstable back, alone.
    _rollout(ansible, fleet, client_v2, ",".join(clients[:2]))
    refused = _retire(ansible, fleet)
    assert refused.rc != 0
    assert f"{clients[2]} (lockclient 1.0, protocol 1)" in refused.stdout
    assert not any(f"{c} (lockclient" in refused.stdout for c in clients[:2])

    # An unreachable client cannot be known to have moved: retire refuses and says so.
    _rollout(ansible, fleet, client_v2, clients[2])
    fleet.freeze(clients[2])
    try:
        refused = ansible(fleet.inventory_path, playbook=RETIRE, envvars={"ANSIBLE_TIMEOUT": "5"},
                          extravars={"retire_oldstable_application": SERVER, "retire_oldstable_client_application": CLIENT})
    finally:
        fleet.thaw(clients[2])
    assert refused.rc != 0 and f"unreachable, so not known to have moved: {clients[2]}" in refused.stdout
    assert _answer(address, "oldstable") == "lockserver 1.0 protocol 1"

    # Every client on protocol 2: oldstable is stopped and its slot emptied; current keeps serving.
    retired = _retire(ansible, fleet)
    assert retired.rc == 0, retired.stdout[-4000:]
    assert _answer(address, "oldstable") is None
    assert _answer(address, "current") == "lockserver 2.0 protocol 2"
    assert fleet.ssh(server, f"systemctl is-active {SERVER}@oldstable", check=False).stdout.strip() == "inactive"
    assert fleet.ssh(server, f"systemctl is-enabled {SERVER}@oldstable", check=False).stdout.strip() != "enabled"
    record = json.loads(fleet.ssh(server, f"cat /etc/ansible/facts.d/sciops_fleet_{SERVER}.fact").stdout)
    assert record["oldstable"] is None and record["history"][-1]["event"] == "retire"
    assert fleet.ssh(server, f"test -e /var/lib/sciops-fleet/{SERVER}/oldstable", check=False).returncode != 0

    # The status matrix shows no oldstable any more; a second retire has nothing to do.
    rows = _status(ansible, fleet, scope, tmp_path)
    assert rows[server]["version"] == "2.0" and rows[server]["oldstable"] is None
    again = _retire(ansible, fleet)
    assert again.rc == 0 and "nothing to retire" in again.stdout

    # Downgrade the server to a named release: its current instance serves 1.0 again.
    back = ansible(fleet.inventory_path, playbook=ROLLBACK,
                   extravars={"rollback_application": SERVER, "rollback_to": "1.0", "rollback_hosts": server,
                              "rollback_service": SERVICE})
    assert back.rc == 0, back.stdout[-4000:]
    assert _answer(address, "current") == "lockserver 1.0 protocol 1"
    assert _status(ansible, fleet, scope, tmp_path)[server]["version"] == "1.0"


def test_a_failing_server_upgrade_reverts_current_and_oldstable(registry, fleet, ansible, run_module, tmp_path, clean_apps):
    server = fleet.names[0]
    address = fleet.address(server)
    server_v1 = _publish(registry, run_module, tmp_path, SERVER, "1.0", "1", "server")
    _rollout(ansible, fleet, server_v1, server, server=True)
    # 3.0 speaks protocol 3 but fails its health check (its server has no /HEALTHY page).
    server_v3 = _publish(registry, run_module, tmp_path, SERVER, "3.0", "3", "server", health_path="/HEALTHY")
    extravars = {"rollout_release": server_v3, "rollout_plain_http": True, "rollout_batches": ["100%"],
                 "rollout_hosts": server, "rollout_service": SERVICE, "rollout_keep_oldstable": True}
    failed = ansible(fleet.inventory_path, playbook=ROLLOUT, extravars=extravars)
    assert failed.rc != 0 and "reverted" in failed.stdout
    # current is back on 1.0 and serving, oldstable empty again as before the rollout, its instance stopped.
    record = json.loads(fleet.ssh(server, f"cat /etc/ansible/facts.d/sciops_fleet_{SERVER}.fact").stdout)
    assert record["current"]["version"] == "1.0" and record["oldstable"] is None, record
    assert _answer(address, "current") == "lockserver 1.0 protocol 1"
    assert _answer(address, "oldstable") is None
    assert fleet.ssh(server, f"systemctl is-active {SERVER}@oldstable", check=False).stdout.strip() == "inactive"
