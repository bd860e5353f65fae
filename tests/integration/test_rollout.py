# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sciops.fleet.rollout on six real nodes: batches, a failing node reverted, later batches untouched, reruns."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

import browser

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(REPO, "playbooks", "rollout.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
APP = "greeter"
# The health check fails on a node where /etc/greeter-broken-<version> exists: a fault a test can place.
SCRIPT = """#!/bin/sh
case "$1" in
  --check) test ! -e /etc/greeter-broken-{version} ;;
  *) echo "greeter {version}" ;;
esac
"""


def _publish(registry, run_module, tmp_path, version):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        data = SCRIPT.format(version=version).encode()
        info = tarfile.TarInfo("bin/greeter")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    bundle = tmp_path / f"greeter-{version}.tar.gz"
    bundle.write_bytes(buffer.getvalue())
    pushed = run_module("oras_push", target=f"{registry.host}/build/greeter:{version}", files=[{"path": str(bundle)}],
                        plain_http=True)
    release = {"schema_version": 1, "application": APP, "version": version, "protocol": "1",
               "artifacts": [{"name": "app", "reference": f"{registry.host}/build/greeter@{pushed['digest']}",
                              "install": "extract"}],
               "health": [{"command": "${current_dir}/app/bin/greeter --check", "timeout": 5}]}
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/greeter",
                           channels=["candidate"], plain_http=True)
    assert not published.get("failed"), published
    return published


def _rollout(ansible, fleet, registry, release, batches=(1, 2, 3), max_fail=0, check=False):
    extravars = {"rollout_release": release, "rollout_plain_http": True, "rollout_batches": list(batches),
                 "rollout_max_fail_percentage": max_fail}
    return ansible(fleet.inventory_path, playbook=PLAYBOOK, extravars=extravars, check=check,
                   envvars={"ANSIBLE_TIMEOUT": "5"})


def _current(fleet, name):
    result = fleet.ssh(name, f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact", check=False)
    if result.returncode != 0:
        return None
    return (json.loads(result.stdout).get("current") or {}).get("version")


def _versions(fleet):
    return {name: _current(fleet, name) for name in fleet.names}


def _working(fleet, name):
    return fleet.ssh(name, f"/var/lib/sciops-fleet/{APP}/current/app/bin/greeter").stdout.strip()


@pytest.fixture
def clean_app(fleet):
    """Each test starts from nodes without the application, and leaves none behind."""
    def wipe():
        for name in fleet.names:
            fleet.thaw(name)
            fleet.ssh(name, f"rm -rf /var/lib/sciops-fleet/{APP} /etc/ansible/facts.d/sciops_fleet_{APP}.fact "
                            "/etc/greeter-broken-*")
    wipe()
    yield
    wipe()


def test_batches_revert_the_failed_node_and_leave_later_batches_untouched(registry, fleet, ansible, run_module, tmp_path, clean_app):
    assert len(fleet.names) >= 6, "this test needs six nodes (SCIOPS_TEST_NODES)"
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    run = _rollout(ansible, fleet, registry, v1["reference"])
    assert run.rc == 0, run
    assert set(_versions(fleet).values()) == {"1.0.0"}

    # Second rollout of the same release: nothing changes anywhere and nothing is downloaded - the nodes answer
    # from their own records and do not even ask the registry (only the controller resolves the release).
    mark = len(registry.access_log())
    again = _rollout(ansible, fleet, registry, v1["reference"])
    assert again.rc == 0, again
    assert all(again.stats["changed"].get(name, 0) == 0 for name in fleet.names), again.stats
    preflights = [r for results in again.ok.values() for r in results if "running" in r and "reasons" in r]
    assert len(preflights) == len(fleet.names) and all(r["running"]["version"] == "1.0.0" for r in preflights)
    assert not [r for results in again.ok.values() for r in results if "artifacts" in r and "release_id" in r]
    log = registry.access_log()[mark:]
    assert not [line for line in log if "/v2/build/" in line], log  # no artifact touched
    assert len([line for line in log if "/v2/releases/greeter/" in line]) <= 4, log  # the controller's resolve only

    # v2: node3, in the second batch, fails its health check.
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    fleet.ssh("node3", "touch /etc/greeter-broken-2.0.0")
    run = _rollout(ansible, fleet, registry, f"{registry.host}/releases/greeter:candidate")
    assert run.rc != 0, run
    assert "rollout stopped after batch 2" in run.stdout
    versions = _versions(fleet)
    assert versions == {"node1": "2.0.0", "node2": "2.0.0", "node3": "1.0.0", "node4": "1.0.0", "node5": "1.0.0",
                        "node6": "1.0.0", **{n: "1.0.0" for n in fleet.names[6:]}}
    assert _working(fleet, "node3") == "greeter 1.0.0"
    record = json.loads(fleet.ssh("node3", f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)
    events = [(h["event"], h.get("reason"), h["result"], (h.get("to") or h.get("release"))["version"]) for h in record["history"]]
    assert events[-4:] == [("switch", "rollout", "switched", "2.0.0"), ("health", None, "failed", "2.0.0"),
                           ("switch", "revert", "switched", "1.0.0"), ("health", None, "good", "1.0.0")]
    assert record["current"]["version"] == "1.0.0" and record["current"]["status"] == "good"
    failed = [r for r in record["releases"].values() if r["version"] == "2.0.0"]
    assert not failed or failed[0]["status"] == "failed"  # pruned at once, or kept and marked failed
    # Later batches were never touched: not even installed there.
    for name in ("node4", "node5", "node6"):
        assert "2.0.0" not in fleet.ssh(name, f"ls /var/lib/sciops-fleet/{APP}/releases").stdout

    # Fixed, the same rollout converges.
    fleet.ssh("node3", "rm -f /etc/greeter-broken-2.0.0")
    run = _rollout(ansible, fleet, registry, v2["reference"])
    assert run.rc == 0, run
    assert set(_versions(fleet).values()) == {"2.0.0"}
    assert all(_working(fleet, name) == "greeter 2.0.0" for name in fleet.names)

    # Rollback to the previous release, then forward again to a named one.
    back = ansible(fleet.inventory_path, playbook=ROLLBACK, extravars={"rollback_application": APP})
    assert back.rc == 0, back
    assert set(_versions(fleet).values()) == {"1.0.0"}
    assert all(_working(fleet, name) == "greeter 1.0.0" for name in fleet.names)
    record = json.loads(fleet.ssh("node6", f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)
    assert [h for h in record["history"] if h["event"] == "switch"][-1]["reason"] == "rollback"
    named = ansible(fleet.inventory_path, playbook=ROLLBACK, extravars={"rollback_application": APP, "rollback_to": "2.0.0"})
    assert named.rc == 0, named
    assert set(_versions(fleet).values()) == {"2.0.0"}
    missing = ansible(fleet.inventory_path, playbook=ROLLBACK, extravars={"rollback_application": APP, "rollback_to": "0.9.0"})
    assert missing.rc != 0 and "0.9.0 is not installed on this node" in missing.stdout
    assert set(_versions(fleet).values()) == {"2.0.0"}


def test_a_whole_batch_failing_stops_the_rollout(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    v3 = _publish(registry, run_module, tmp_path, "3.0.0")
    for name in fleet.names:
        fleet.ssh(name, "touch /etc/greeter-broken-3.0.0")
    run = _rollout(ansible, fleet, registry, v3["reference"], batches=(2, 100), max_fail=50)
    assert run.rc != 0 and "rollout stopped after batch 1: 2 of 2 node(s) failed" in run.stdout, run
    assert set(_versions(fleet).values()) == {"1.0.0"}
    assert all(_working(fleet, name) == "greeter 1.0.0" for name in fleet.names)


def test_an_unreachable_node_counts_as_failed_and_keeps_its_release(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    fleet.freeze("node5")
    try:
        run = _rollout(ansible, fleet, registry, v2["reference"], batches=(1, 2, 3))
    finally:
        fleet.thaw("node5")
    assert run.rc != 0, run
    assert "node5 (unreachable)" in run.stdout
    versions = _versions(fleet)
    assert versions["node5"] == "1.0.0" and _working(fleet, "node5") == "greeter 1.0.0"
    assert all(versions[n] == "2.0.0" for n in ("node1", "node2", "node3"))
    run = _rollout(ansible, fleet, registry, v2["reference"], batches=(1, 2, 3))
    assert run.rc == 0, run
    assert set(_versions(fleet).values()) == {"2.0.0"}


def test_check_mode_shows_what_would_change_and_changes_nothing(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    run = _rollout(ansible, fleet, registry, v1["reference"], check=True)
    assert run.rc == 0, run
    assert "would_change" in run.stdout
    assert set(_versions(fleet).values()) == {None}


def test_status_matrix_shows_versions_drift_and_unreachable_nodes(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    fleet.ssh("node2", f"echo edited >> /var/lib/sciops-fleet/{APP}/current/app/bin/greeter")
    fleet.freeze("node6")
    try:
        report = ansible(fleet.inventory_path, playbook=STATUS, envvars={"ANSIBLE_TIMEOUT": "5"},
                         extravars={"status_application": APP, "status_json_path": str(tmp_path / "matrix.json"),
                                    "status_html_path": str(tmp_path / "matrix.html")})
    finally:
        fleet.thaw("node6")
    assert report.rc == 0, report
    matrix = {row["node"]: row for row in json.loads((tmp_path / "matrix.json").read_text(encoding="utf-8"))["nodes"]}
    assert matrix["node6"] == {"node": "node6", "reachable": False}
    assert matrix["node2"]["drift"] == ["app/bin/greeter"]
    for name in fleet.names:
        if name != "node6":
            row = matrix[name]
            assert (row["version"], row["release_id"], row["protocol"], row["health"]) == ("1.0.0", v1["release_id"], "1", "good")
            assert row["since"]
    assert all(matrix[n]["drift"] == [] for n in fleet.names if n not in ("node2", "node6"))
    html = (tmp_path / "matrix.html").read_text(encoding="utf-8")
    assert html.count("<tr") == len(fleet.names) + 1 and "unreachable" in html and "app/bin/greeter" in html
    assert "UNREACHABLE" in report.stdout and v1["release_id"][7:19] in report.stdout
    # The page as a browser renders it: headless Chromium builds the table, and a screenshot is kept.
    os.makedirs(browser.ARTIFACTS, exist_ok=True)
    screenshot = os.path.join(browser.ARTIFACTS, "status-matrix.png")
    dom = browser.render(tmp_path / "matrix.html", screenshot)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", dom, flags=re.S)
    cells = {re.sub(r"<[^>]+>", "", row.split("</td>")[0]).strip(): row for row in rows[1:]}
    assert sorted(cells) == sorted(fleet.names), rows
    assert "1.0.0" in cells["node1"] and "good" in cells["node1"] and "app/bin/greeter" in cells["node2"]
    assert "unreachable" in cells["node6"]
    width, height, distinct_rows = browser.png_summary(screenshot)
    assert (width, height) == (1280, 800) and distinct_rows > 40, (width, height, distinct_rows)


def test_killing_the_rollout_at_any_point_leaves_every_node_working(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", fleet.inventory_path, PLAYBOOK,
               "-e", json.dumps({"rollout_release": v2["reference"], "rollout_plain_http": True, "rollout_batches": [2, 100]})]
    for delay in (2.0, 4.0, 6.0, 8.0):
        with open(tmp_path / f"killed-{delay}.log", "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # pylint: disable=consider-using-with
                                    env=dict(os.environ, SCIOPS_FLEET_LOCK_DIR=str(tmp_path / "locks")))
            time.sleep(delay)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(1)  # a module still running on a node finishes or dies with its connection
        for name in fleet.names:
            answer = _working(fleet, name)
            assert answer in ("greeter 1.0.0", "greeter 2.0.0"), (delay, name, answer)
    run = _rollout(ansible, fleet, registry, v2["reference"], batches=(2, 100))
    assert run.rc == 0, run
    assert set(_versions(fleet).values()) == {"2.0.0"}
    assert all(_working(fleet, name) == "greeter 2.0.0" for name in fleet.names)
