# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Releases on real nodes over SSH: publish, preflight, install, switch, health, revert, prune, record."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

APP = "hello"
SCRIPT = """#!/bin/sh
# hello {version}: answers --check with the configured greeting
conf="$(dirname "$0")/../../etc/hello.conf"
case "$1" in
  --check) grep -q "greeting = hello from" "$conf" && exit {check_exit} ;;
  *) echo "hello {version}" ;;
esac
"""


def _bundle(tmp_path, version, check_exit=0):
    """A tarball with bin/hello and a config template, as a build would produce it."""
    buffer = io.BytesIO()
    # gzip with a fixed time stamp: the same build gives the same bytes, hence the same artifact digest.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for name, text, mode in (("bin/hello", SCRIPT.format(version=version, check_exit=check_exit), 0o755),
                                 ("hello.conf.in", "greeting = hello from ${node}\nport = ${port}\n", 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"hello-{version}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def _publish(registry, run_module, tmp_path, version, check_exit=0, requires=None, channels=("candidate",)):
    bundle = _bundle(tmp_path, version, check_exit)
    pushed = run_module("oras_push", target=f"{registry.host}/build/hello:{version}", files=[{"path": str(bundle)}],
                        plain_http=True)
    assert not pushed.get("failed"), pushed
    release = {
        "schema_version": 1, "application": APP, "version": version, "protocol": "1", "role": "server",
        "artifacts": [{"name": "app", "reference": f"{registry.host}/build/hello@{pushed['digest']}", "install": "extract"}],
        "configs": [{"source": "app/hello.conf.in", "dest": "etc/hello.conf", "vars": {"port": "7000", "node": "unknown"}}],
        "requires": requires or {"os_family": ["debian"], "commands": ["sh", "grep"], "disk_mb": 1},
        "health": [{"command": "${current_dir}/app/bin/hello --check", "timeout": 5}],
    }
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/hello",
                           channels=list(channels), plain_http=True)
    assert not published.get("failed"), published
    return published


def _on_fleet(ansible, fleet, module, args, hosts="all", check=False):
    run = ansible(fleet.inventory_path, hosts=hosts, module=f"sciops.fleet.{module}", module_args=json.dumps(args),
                  check=check)
    assert run.rc == 0, run
    assert sorted(run.ok) == (fleet.names if hosts == "all" else sorted(hosts.split(","))), run
    return {host: results[0] for host, results in run.ok.items()}


def _record(fleet, name):
    return json.loads(fleet.ssh(name, f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)


def test_release_lifecycle_on_the_fleet(registry, fleet, ansible, run_module, tmp_path):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert v1["changed"] and v1["tags"] == ["1.0.0", "candidate"]
    again = _publish(registry, run_module, tmp_path, "1.0.0")
    assert again["changed"] is False and again["release_id"] == v1["release_id"]

    common = {"plain_http": True}
    answers = _on_fleet(ansible, fleet, "release_preflight", dict(common, release=v1["reference"]))
    assert all(a["ok"] and a["reasons"] == [] for a in answers.values()), answers

    # Install: beside nothing; current is not touched.
    installs = _on_fleet(ansible, fleet, "release_install", dict(common, release=v1["reference"], config_vars={"node": "{{ inventory_hostname }}"}))
    assert all(a["changed"] and a["name"] == f"1.0.0-{v1['release_id'][7:19]}" for a in installs.values())
    for name in fleet.names:
        assert fleet.ssh(name, f"test -e /var/lib/sciops-fleet/{APP}/current", check=False).returncode != 0
        conf = fleet.ssh(name, f"cat /var/lib/sciops-fleet/{APP}/releases/{installs[name]['name']}/etc/hello.conf").stdout
        assert conf == f"greeting = hello from {name}\nport = 7000\n"
    again = _on_fleet(ansible, fleet, "release_install", dict(common, release=v1["reference"], config_vars={"node": "{{ inventory_hostname }}"}))
    assert all(not a["changed"] and a["transfer"]["bytes_downloaded"] == 0 for a in again.values())

    switched = _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v1["release_id"]})
    assert all(a["changed"] and a["from"] is None for a in switched.values())
    health = _on_fleet(ansible, fleet, "release_health", {"application": APP, "address": "{{ ansible_host }}"})
    assert all(a["healthy"] for a in health.values()), health
    for name in fleet.names:
        assert fleet.ssh(name, f"/var/lib/sciops-fleet/{APP}/current/app/bin/hello").stdout.strip() == "hello 1.0.0"
        record = _record(fleet, name)
        assert record["current"]["digest"] == v1["release_id"] and record["current"]["status"] == "good"

    # The facts are what Ansible reads as ansible_local on every node.
    facts = ansible(fleet.inventory_path, module="ansible.builtin.setup", module_args="gather_subset=!all,!min,local")
    for name in fleet.names:
        local = facts.ok[name][0]["ansible_facts"]["ansible_local"][f"sciops_fleet_{APP}"]
        assert local["current"]["version"] == "1.0.0"

    # v2 is good; v3 fails its health check and is reverted to v2 and recorded as failed.
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    v3 = _publish(registry, run_module, tmp_path, "3.0.0", check_exit=1)
    for release in (v2, v3):
        _on_fleet(ansible, fleet, "release_install", dict(common, release=release["reference"], config_vars={"node": "{{ inventory_hostname }}"}))
    _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v2["release_id"]})
    assert all(a["healthy"] for a in _on_fleet(ansible, fleet, "release_health", {"application": APP}).values())

    victim = fleet.names[0]
    _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v3["release_id"]}, hosts=victim)
    verdict = _on_fleet(ansible, fleet, "release_health", {"application": APP}, hosts=victim)[victim]
    assert verdict["healthy"] is False and "exited 1" in verdict["checks"][0]["detail"]
    revert = {"application": APP, "release": v2["release_id"], "reason": "revert", "keep": 1}
    reverted = _on_fleet(ansible, fleet, "release_switch", revert, hosts=victim)[victim]
    assert reverted["to"]["version"] == "2.0.0"
    # keep=1: only current survives; the failed v3 and the older v1 are pruned.
    assert sorted(reverted["pruned"]) == sorted([f"1.0.0-{v1['release_id'][7:19]}", f"3.0.0-{v3['release_id'][7:19]}"])
    record = _record(fleet, victim)
    assert record["current"]["version"] == "2.0.0"
    events = [(h["event"], h.get("result"), (h.get("to") or h.get("release") or {}).get("version")) for h in record["history"]]
    assert events[-3:] == [("switch", "switched", "3.0.0"), ("health", "failed", "3.0.0"), ("switch", "switched", "2.0.0")]
    assert record["history"][-1]["reason"] == "revert"
    for name in fleet.names[1:]:
        assert _record(fleet, name)["current"]["version"] == "2.0.0"

    # Check mode predicts without touching.
    predicted = _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v1["release_id"]}, hosts=fleet.names[1], check=True)
    assert predicted[fleet.names[1]]["changed"] is True
    assert _record(fleet, fleet.names[1])["current"]["version"] == "2.0.0"


def test_preflight_says_no_with_every_reason_before_anything_is_touched(registry, fleet, ansible, run_module, tmp_path):
    impossible = _publish(registry, run_module, tmp_path, "9.0.0", channels=(),
                          requires={"arch": ["aarch64"], "commands": ["no-such-tool"], "kernel": ["/dev/no-such-device"]})
    answers = _on_fleet(ansible, fleet, "release_preflight", {"release": impossible["reference"], "plain_http": True})
    for answer in answers.values():
        assert answer["ok"] is False
        joined = " | ".join(answer["reasons"])
        assert "architecture x86_64 is not one of aarch64" in joined
        assert "no-such-tool" in joined and "/dev/no-such-device" in joined
    for name in fleet.names:
        listing = fleet.ssh(name, f"ls /var/lib/sciops-fleet/{APP}/releases 2>/dev/null || true").stdout
        assert "9.0.0" not in listing


def test_a_bad_manifest_is_refused_before_publishing(registry, run_module):
    bad = {"schema_version": 1, "application": "Hello", "version": "1", "protocol": "1",
           "artifacts": [{"name": "app", "reference": f"{registry.host}/build/hello:latest"}]}
    result = run_module("release_publish", manifest_data=bad, repository=f"{registry.host}/releases/bad", plain_http=True)
    assert result["failed"] and "application: 'Hello' is not valid" in result["msg"]
    assert "artifacts[0].reference" in result["msg"] and "names no digest" in result["msg"]
    assert not any("/v2/releases/bad/" in line and '"PUT ' in line for line in registry.access_log())


def test_a_release_naming_a_missing_artifact_is_refused(registry, run_module):
    missing = {"schema_version": 1, "application": "hello", "version": "1.0.1", "protocol": "1",
               "artifacts": [{"name": "app", "reference": f"{registry.host}/build/hello@sha256:{'0' * 64}"}]}
    result = run_module("release_publish", manifest_data=missing, repository=f"{registry.host}/releases/hello", plain_http=True)
    assert result["failed"] and "does not exist; push it first" in result["msg"]
