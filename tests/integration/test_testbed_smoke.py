# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test infrastructure is real: systemd nodes over SSH, a registry that stores and checks blobs."""

from __future__ import annotations

import base64
import hashlib
import os
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.registry]


def test_every_node_answers_ping_over_ssh(fleet, ansible):
    run = ansible(fleet.inventory_path, module="ansible.builtin.ping")
    assert run.rc == 0, run
    assert sorted(run.ok) == fleet.names
    assert all(results[0]["ping"] == "pong" for results in run.ok.values())


def test_every_node_runs_systemd_and_sshd(fleet, ansible):
    run = ansible(fleet.inventory_path, module="ansible.builtin.systemd_service", module_args="name=ssh.service")
    assert run.rc == 0, run
    assert sorted(run.ok) == fleet.names
    for results in run.ok.values():
        status = results[0]["status"]
        assert status["ActiveState"] == "active"
        assert status["LoadState"] == "loaded"
    # Each node is its own machine: PID 1 is systemd and the host name is the node's.
    for name in fleet.names:
        out = fleet.ssh(name, "cat /proc/1/comm; hostname; systemctl is-system-running").stdout.split()
        assert out == ["systemd", name, "running"]


def test_nodes_are_isolated_machines(fleet):
    """A unit stopped on one node keeps running on the others (each node has its own cgroup tree)."""
    for name in fleet.names:
        fleet.ssh(name, "systemd-run --unit=sciops-isolation-probe --collect sleep 600")
    try:
        first, *others = fleet.names
        fleet.ssh(first, "systemctl stop sciops-isolation-probe")
        assert fleet.ssh(first, "systemctl is-active sciops-isolation-probe", check=False).stdout.strip() != "active"
        for name in others:
            assert fleet.ssh(name, "systemctl is-active sciops-isolation-probe").stdout.strip() == "active"
    finally:
        for name in fleet.names:
            fleet.ssh(name, "systemctl stop sciops-isolation-probe", check=False)


def test_a_frozen_node_is_unreachable_and_recovers(fleet, ansible):
    victim = fleet.names[-1]
    fleet.freeze(victim)
    try:
        run = ansible(fleet.inventory_path, module="ansible.builtin.ping",
                      envvars={"ANSIBLE_TIMEOUT": "5"})
        assert sorted(run.unreachable) == [victim], run
        assert sorted(run.ok) == [n for n in fleet.names if n != victim]
    finally:
        fleet.thaw(victim)
    run = ansible(fleet.inventory_path, module="ansible.builtin.ping", hosts=victim)
    assert sorted(run.ok) == [victim], run


def test_a_restarted_node_keeps_its_disk(fleet):
    name = fleet.names[0]
    fleet.ssh(name, "echo kept > /var/tmp/restart-marker && sync")
    boot_before = fleet.ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout
    before = fleet.ssh(name, "systemctl show -p ExecMainStartTimestampMonotonic --value systemd-journald").stdout
    fleet.restart(name)
    assert fleet.ssh(name, "cat /var/tmp/restart-marker").stdout.strip() == "kept"
    after = fleet.ssh(name, "systemctl show -p ExecMainStartTimestampMonotonic --value systemd-journald").stdout
    assert fleet.ssh(name, "systemctl is-system-running").stdout.strip() == "running"
    # The kernel is shared, so boot_id does not change; journald was started anew by a new systemd.
    assert boot_before and before != after


def _blob(registry, repo, digest, auth=None):
    request = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/{digest}")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def test_blob_pushed_with_oras_reads_back_with_its_digest(registry, tmp_path, monkeypatch):
    import oras.client  # pylint: disable=import-outside-toplevel

    payload = os.urandom(256 * 1024) + b"sciops"
    artifact = tmp_path / "payload.bin"
    artifact.write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()

    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    monkeypatch.chdir(tmp_path)  # oras-py records file names relative to the working directory
    client.push(files=["payload.bin"], target=f"{registry.host}/smoke/payload:v1", disable_path_validation=True)

    manifest = client.get_manifest(f"{registry.host}/smoke/payload:v1")
    assert [layer["digest"] for layer in manifest["layers"]] == [digest]
    stored = _blob(registry, "smoke/payload", digest)
    assert stored == payload
    assert hashlib.sha256(stored).hexdigest() == digest.split(":", 1)[1]
    # The registry really served it: the access log holds the blob GET.
    assert any(f"/v2/smoke/payload/blobs/{digest}" in line for line in registry.access_log())


def test_authenticated_registry_refuses_a_wrong_password(auth_registry, tmp_path, monkeypatch):
    import oras.client  # pylint: disable=import-outside-toplevel

    with pytest.raises(urllib.error.HTTPError) as refused:
        _blob(auth_registry, "smoke/any", "sha256:" + "0" * 64, auth=f"{auth_registry.username}:wrong-password")
    assert refused.value.code == 401

    (tmp_path / "note.txt").write_text("authenticated\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    target = f"{auth_registry.host}/smoke/note:v1"
    wrong = oras.client.OrasClient(hostname=auth_registry.host, insecure=True, auth_backend="basic")
    # set_basic_auth, not login(): login() would write the user's docker config.json.
    wrong.auth.set_basic_auth(auth_registry.username, "wrong-password")
    with pytest.raises(Exception) as denied:  # oras-py raises ValueError or requests errors on 401
        wrong.push(files=["note.txt"], target=target, disable_path_validation=True)
    assert "401" in str(denied.value) or "unauthorized" in str(denied.value).lower()

    right = oras.client.OrasClient(hostname=auth_registry.host, insecure=True, auth_backend="basic")
    right.auth.set_basic_auth(auth_registry.username, auth_registry.password)
    right.push(files=["note.txt"], target=target, disable_path_validation=True)
    manifest = right.get_manifest(target)
    layer = manifest["layers"][0]["digest"]
    body = _blob(auth_registry, "smoke/note", layer, auth=f"{auth_registry.username}:{auth_registry.password}")
    assert body == b"authenticated\n"
    assert manifest["layers"][0]["size"] == len(body)
