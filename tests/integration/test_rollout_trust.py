# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sciops.fleet.rollout and sciops.fleet.status under faults on real nodes: two operators at once, a killed run,
a lost step result, a frozen node behind a live SSH master, a damaged record, a wrong clock, and the exit code of
every outcome."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from test_rollout import APP, PLAYBOOK, STATUS, _publish, _rollout, _versions, _working, clean_app  # noqa: F401  pylint: disable=unused-import

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

# A test-only Python for one node: it loads this sitecustomize, which reads /etc/sciops-test-hook.json and can shift
# the clock the node's modules see, or SIGKILL a module right after it renames a link over <app>/current (once).
HOOK = r'''
import json, os, signal, sys, time
try:
    with open("/etc/sciops-test-hook.json") as handle:
        _conf = json.load(handle)
except (OSError, ValueError):
    _conf = {}
if _conf.get("clock_offset"):
    _real_time = time.time
    time.time = lambda: _real_time() + _conf["clock_offset"]
_target = _conf.get("kill_after_rename_to")
if _target and not os.path.exists("/run/sciops-test-hook.fired"):
    _state = {"armed": False, "busy": False}
    def _hook(event, args):
        if _state["busy"]:
            return
        if event == "os.rename" and str(args[1]).endswith(_target):
            _state["armed"] = True  # the hook runs before the rename; the next event comes after it
            return
        if _state["armed"]:
            _state["busy"] = True
            open("/run/sciops-test-hook.fired", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
    sys.addaudithook(_hook)
'''
WRAPPER = "#!/bin/sh\nPYTHONPATH=/opt/sciops-test-hook exec /usr/bin/python3 \"$@\"\n"
HOOKED_PYTHON = "/usr/local/bin/python3-test-hook"


def _install_hook(fleet, name, conf):
    fleet.ssh(name, "mkdir -p /opt/sciops-test-hook && rm -f /run/sciops-test-hook.fired")
    for path, text, mode in (("/opt/sciops-test-hook/sitecustomize.py", HOOK, "0644"), (HOOKED_PYTHON, WRAPPER, "0755"),
                             ("/etc/sciops-test-hook.json", json.dumps(conf), "0644")):
        fleet.ssh(name, f"cat > {path} <<'SCIOPS_EOF'\n{text}\nSCIOPS_EOF\nchmod {mode} {path}")


@pytest.fixture
def hooks(fleet):
    """Nodes given the test-only Python; it is removed afterwards."""
    used = []

    def install(name, conf):
        used.append(name)
        _install_hook(fleet, name, conf)
    yield install
    for name in used:
        fleet.ssh(name, f"rm -rf /opt/sciops-test-hook {HOOKED_PYTHON} /etc/sciops-test-hook.json /run/sciops-test-hook.fired",
                  check=False)


def _inventory_with(fleet, tmp_path, host_vars):
    """The fleet's inventory with extra variables for some hosts."""
    with open(fleet.inventory_path, encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    hosts = inventory["all"]["children"]["fleet"]["hosts"]
    for name, extra in host_vars.items():
        hosts[name].update(extra)
    path = tmp_path / "inventory-hooked.yml"
    path.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    return str(path)


def _record(fleet, name):
    return json.loads(fleet.ssh(name, f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)


def _summary(run):
    """The rollout's last printed summary (switched, reverted, ..., outcome), or None."""
    found = [res["msg"] for results in run.ok.values() for res in results
             if isinstance(res.get("msg"), dict) and "batches_run" in res["msg"]]
    return found[-1] if found else None


def _run_rollout(ansible, inventory, release, **extra):
    extravars = {"rollout_release": release, "rollout_plain_http": True, "rollout_batches": [100]}
    extravars.update(extra)
    return ansible(inventory, playbook=PLAYBOOK, extravars=extravars, envvars={"ANSIBLE_TIMEOUT": "5"})


def test_two_rollouts_at_once_one_proceeds_the_other_fails_naming_the_holder(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda release: _run_rollout(ansible, fleet.inventory_path, release),
                             [v1["reference"], v2["reference"]]))
    assert sorted(run.rc for run in runs) == [0, 2], runs
    winner, loser = (runs[0], runs[1]) if runs[0].rc == 0 else (runs[1], runs[0])
    won = v1 if winner is runs[0] else v2
    assert f"{APP} is locked by rollout of {won['reference']}" in loser.stdout, loser
    assert "ansible-playbook pid" in loser.stdout and "controller" in loser.stdout, loser
    # The loser stopped at the lock: it asked no node anything.
    assert "Ask the node whether it can run the release" not in loser.stdout, loser
    version = won["release"]["version"]
    assert set(_versions(fleet).values()) == {version}
    for name in fleet.names:
        assert _working(fleet, name) == f"greeter {version}"
        record = _record(fleet, name)
        assert record["current"]["digest"] == won["release_id"] and record["current"]["status"] == "good", record
        checks = [h for h in record["history"] if h.get("event") == "health"]
        assert checks and checks[-1]["release"]["digest"] == won["release_id"] and checks[-1]["result"] == "good"
    # The lock was given up at the end: the next rollout takes it at once.
    assert _run_rollout(ansible, fleet.inventory_path, v1["reference"] if won is v2 else v2["reference"]).rc == 0


def _held(lock):
    """Whether the lock file names a holder (a lock given up is an empty file, rewritten in place)."""
    return lock.exists() and lock.read_text().strip() != ""


def test_a_lock_left_by_a_killed_rollout_does_not_block_the_next_one(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    lock = tmp_path / "locks" / f"{APP}.lock"
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", fleet.inventory_path, PLAYBOOK,
               "-e", json.dumps({"rollout_release": v1["reference"], "rollout_plain_http": True, "rollout_batches": [1, 100]})]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # pylint: disable=consider-using-with
                                env=dict(os.environ, SCIOPS_FLEET_LOCK_DIR=str(tmp_path / "locks")))
        deadline = time.monotonic() + 120
        while not _held(lock) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _held(lock), (tmp_path / "killed.log").read_text()
        holder = json.loads(lock.read_text())
        assert holder["pid"] == proc.pid and v1["reference"] in holder["purpose"], holder
        os.kill(proc.pid, signal.SIGKILL)  # the ansible-playbook process, by its pid
        proc.wait()
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):  # and what it left running
            os.killpg(proc.pid, signal.SIGKILL)
    assert _held(lock)  # nobody gave it up
    time.sleep(1)
    run = _run_rollout(ansible, fleet.inventory_path, v1["reference"])
    assert run.rc == 0, run
    assert "took over the lock of greeter left by rollout of" in run.stdout, run
    assert set(_versions(fleet).values()) == {"1.0.0"}
    assert not _held(lock)


def test_a_node_whose_switch_result_is_lost_is_reverted_to_the_release_before(registry, fleet, ansible, run_module, tmp_path, clean_app, hooks):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    victim = fleet.names[1]
    hooks(victim, {"kill_after_rename_to": f"/{APP}/current"})
    inventory = _inventory_with(fleet, tmp_path, {victim: {"ansible_python_interpreter": HOOKED_PYTHON}})
    run = _run_rollout(ansible, inventory, v2["reference"])
    assert fleet.ssh(victim, "test -e /run/sciops-test-hook.fired", check=False).returncode == 0, run  # it was killed
    assert run.rc == 2, run
    assert f"{victim} (reverted" in run.stdout, run
    assert _working(fleet, victim) == "greeter 1.0.0"
    record = _record(fleet, victim)
    assert record["current"]["digest"] == v1["release_id"] and record["current"]["status"] == "good", record
    for name in fleet.names:
        if name != victim:
            assert _working(fleet, name) == "greeter 2.0.0"


def test_status_says_record_damaged_and_flags_a_wrong_clock(registry, fleet, ansible, run_module, tmp_path, clean_app, hooks):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    damaged, skewed = fleet.names[0], fleet.names[2]
    fleet.ssh(damaged, f"echo '{{not json' > /etc/ansible/facts.d/sciops_fleet_{APP}.fact")
    hooks(skewed, {"clock_offset": -3600})
    inventory = _inventory_with(fleet, tmp_path, {skewed: {"ansible_python_interpreter": HOOKED_PYTHON}})
    report = ansible(inventory, playbook=STATUS, envvars={"ANSIBLE_TIMEOUT": "5"},
                     extravars={"status_application": APP, "status_json_path": str(tmp_path / "matrix.json"),
                                "status_html_path": str(tmp_path / "matrix.html")})
    assert report.rc == 0, report
    matrix = {row["node"]: row for row in json.loads((tmp_path / "matrix.json").read_text(encoding="utf-8"))["nodes"]}
    assert matrix[damaged]["reachable"] and "damaged" in matrix[damaged]["record_error"], matrix[damaged]
    assert "UNREACHABLE" not in report.stdout and "record damaged: the record" in report.stdout, report
    assert matrix[skewed]["clock_off"] and -3700 < matrix[skewed]["clock_offset"] < -3500, matrix[skewed]
    assert re.search(r"CLOCK OFF BY -3[56][0-9][0-9] s", report.stdout), report
    assert not matrix[fleet.names[1]]["clock_off"] and matrix[fleet.names[1]]["version"] == "1.0.0"
    html = (tmp_path / "matrix.html").read_text(encoding="utf-8")
    assert "record damaged" in html and "CLOCK OFF BY" in html


def _publish_needing(registry, run_module, tmp_path, version, requires):
    published = _publish(registry, run_module, tmp_path, version)
    release = dict(published["release"], requires=requires)
    again = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/greeter",
                       channels=["candidate"], plain_http=True)
    assert not again.get("failed"), again
    return again


def test_exit_code_of_every_outcome(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    done = _run_rollout(ansible, fleet.inventory_path, v1["reference"])
    assert done.rc == 0 and _summary(done)["outcome"] == "done", done  # all switched
    assert sorted(_summary(done)["switched"]) == sorted(fleet.names)
    v2 = _publish(registry, run_module, tmp_path, "2.0.0")
    fleet.ssh(fleet.names[0], "touch /etc/greeter-broken-2.0.0")
    tolerated = _run_rollout(ansible, fleet.inventory_path, v2["reference"], rollout_max_fail_percentage=50)
    assert tolerated.rc == 0, tolerated  # one of three reverted, within the threshold
    assert _summary(tolerated)["reverted"] == [fleet.names[0]], tolerated
    v3 = _publish(registry, run_module, tmp_path, "3.0.0")
    fleet.ssh(fleet.names[0], "touch /etc/greeter-broken-3.0.0")
    stopped = _run_rollout(ansible, fleet.inventory_path, v3["reference"], rollout_batches=[1, 100])
    assert stopped.rc == 2 and "rollout stopped after batch 1" in stopped.stdout, stopped
    for name in fleet.names:
        fleet.ssh(name, "touch /etc/greeter-broken-3.0.0")
    nothing = _run_rollout(ansible, fleet.inventory_path, v3["reference"], rollout_max_fail_percentage=100)
    assert nothing.rc == 2 and "failed: no node runs it" in nothing.stdout, nothing
    assert all(_working(fleet, name) in ("greeter 1.0.0", "greeter 2.0.0") for name in fleet.names)
    impossible = _publish_needing(registry, run_module, tmp_path, "4.0.0", {"commands": ["no-such-command-anywhere"]})
    refused = _run_rollout(ansible, fleet.inventory_path, impossible["reference"])
    assert refused.rc == 2 and "rollout stopped before batch 1: no node of it was touched" in refused.stdout, refused
    assert _summary(refused)["outcome"] == "stopped: preflight", refused  # the summary is printed on this path too


def test_a_stop_at_preflight_names_a_frozen_node_of_the_batch_and_does_not_hang(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    assert _rollout(ansible, fleet, registry, v1["reference"], batches=(100,)).rc == 0
    impossible = _publish_needing(registry, run_module, tmp_path, "2.0.0", {"commands": ["no-such-command-anywhere"]})
    frozen = fleet.names[2]
    # One SSH master for both runs, kept alive: the frozen node's connection hangs instead of failing.
    masters = {"ANSIBLE_TIMEOUT": "5", "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp"),
               "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=300s"}
    warm = ansible(fleet.inventory_path, module="ansible.builtin.ping", envvars=masters)
    assert warm.rc == 0, warm
    fleet.freeze(frozen)
    try:
        started = time.monotonic()
        run = ansible(fleet.inventory_path, playbook=PLAYBOOK, envvars=masters, timeout=300,
                      extravars={"rollout_release": impossible["reference"], "rollout_plain_http": True,
                                 "rollout_batches": [100], "rollout_preflight_timeout": 15})
        elapsed = time.monotonic() - started
    finally:
        fleet.thaw(frozen)
    assert run.status != "timeout" and elapsed < 200, (elapsed, run)
    assert run.rc == 2, run
    assert "rollout stopped before batch 1" in run.stdout and f"{frozen} is unreachable" in run.stdout, run
    assert _summary(run)["unreachable"] == [frozen], run
    assert set(_versions(fleet).values()) == {"1.0.0"}


@pytest.mark.parametrize("batches", ["1,100%", " 1 , 100% "])
def test_batches_given_as_a_string_run_in_those_batches(registry, fleet, ansible, run_module, tmp_path, clean_app, batches):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    run = _run_rollout(ansible, fleet.inventory_path, v1["reference"], rollout_batches=batches)
    assert run.rc == 0, run
    assert f"batch 1: {fleet.names[0]} " in run.stdout and "batch 2: " in run.stdout, run
    assert set(_versions(fleet).values()) == {"1.0.0"}


def test_bad_batches_are_refused_before_any_node_is_touched(registry, fleet, ansible, run_module, tmp_path, clean_app):
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    run = _run_rollout(ansible, fleet.inventory_path, v1["reference"], rollout_batches="1,half")
    assert run.rc == 2, run
    assert "rollout_batches must be a list of batch sizes" in run.stdout and "half is not a size" in run.stdout, run
    assert set(_versions(fleet).values()) == {None}
