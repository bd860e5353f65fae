# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A node's releases and record agree after a kill at any point, a damaged record, a wrong clock and a full disk."""

from __future__ import annotations

import json
import os

import pytest

from test_release_node import APP, _on_fleet, _publish, _record

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

ROOT = f"/var/lib/sciops-fleet/{APP}"
FACT = f"/etc/ansible/facts.d/sciops_fleet_{APP}.fact"
FAULT_PY = os.path.join(os.path.dirname(__file__), "files", "fault_python.py")
FAULT_INTERPRETER = "/usr/local/bin/python3-fault"
VERIFY = r"""
import hashlib, json, os, sys
root = os.path.realpath(sys.argv[1])
record = json.load(open(os.path.join(root, ".sciops-files.json")))
bad = []
for rel, entry in record["files"].items():
    path = os.path.join(root, rel)
    if "link" in entry:
        ok = os.path.islink(path) and os.readlink(path) == entry["link"]
    else:
        ok = os.path.isfile(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == entry["digest"].split(":")[1]
    if not ok:
        bad.append(rel)
print(json.dumps({"name": os.path.basename(root), "digest": record["digest"], "bad": bad}))
"""


@pytest.fixture
def releases(registry, run_module, tmp_path):
    """Four good releases of the test application (publishing again is a no-op: the same bytes, the same ids)."""
    return {v: dict(_publish(registry, run_module, tmp_path, v, channels=()), version=v) for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0")}


@pytest.fixture(autouse=True, scope="module")
def _leave_the_fleet_clean(fleet):
    """The fleet is shared by the whole session: every test here leaves no release, record or fault file behind,
    whether it passes or fails, so that later files start from nodes that never saw this application."""
    yield
    _reset(fleet, fleet.names)
    for name in fleet.names:
        fleet.ssh(name, f"rm -f {FAULT_INTERPRETER} /usr/local/lib/sciops-fault.py", check=False)


def _install_fault_interpreter(fleet):
    with open(FAULT_PY, encoding="utf-8") as handle:
        source = handle.read()
    for name in fleet.names:
        fleet.ssh(name, f"cat > /usr/local/lib/sciops-fault.py <<'PYEOF'\n{source}\nPYEOF\n"
                        f"printf '#!/bin/sh\\nexec /usr/bin/python3 /usr/local/lib/sciops-fault.py \"$@\"\\n' > {FAULT_INTERPRETER}"
                        f" && chmod 0755 {FAULT_INTERPRETER} && rm -f /run/sciops-fault /run/sciops-fault.log")


def _reset(fleet, names):
    for name in names:
        fleet.ssh(name, f"rm -rf {ROOT} /var/cache/sciops-fleet {FACT} {FACT}.damaged-* /run/sciops-fault /run/sciops-fault.log")


def _fault(fleet, name, text):
    fleet.ssh(name, f"echo '{text}' > /run/sciops-fault && rm -f /run/sciops-fault.log")


def _run(ansible, fleet, module, args, hosts, faulty=False):
    extravars = {"ansible_python_interpreter": FAULT_INTERPRETER} if faulty else None
    return ansible(fleet.inventory_path, hosts=hosts, module=f"sciops.fleet.{module}", module_args=json.dumps(args),
                   extravars=extravars)


def _install(release):
    return {"release": release["reference"], "plain_http": True, "config_vars": {"node": "{{ inventory_hostname }}"}}


def _good_current(ansible, fleet, release, hosts):
    """Install, switch to and health-check RELEASE on HOSTS (the normal modules, the normal interpreter)."""
    _on_fleet(ansible, fleet, "release_install", _install(release), hosts=hosts)
    _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": release["release_id"]}, hosts=hosts)
    health = _on_fleet(ansible, fleet, "release_health", {"application": APP}, hosts=hosts)
    assert all(h["healthy"] for h in health.values()), health


def _assert_consistent(fleet, name, release):
    """current is RELEASE, its files verify, the record agrees with the links and says good; nothing half-done."""
    link = fleet.ssh(name, f"readlink {ROOT}/current").stdout.strip()
    verified = json.loads(fleet.ssh(name, f"python3 -c '{VERIFY}' {ROOT}/current").stdout)
    assert verified["bad"] == [] and verified["digest"] == release["release_id"], (name, verified)
    record = _record(fleet, name)
    assert link == f"releases/{record['current']['name']}", (name, link, record["current"])
    assert record["current"]["digest"] == release["release_id"], (name, record["current"])
    assert record["releases"][verified["name"]]["status"] == "good", (name, record["releases"])
    for slot in ("current", "oldstable"):
        target = fleet.ssh(name, f"readlink {ROOT}/{slot} || true").stdout.strip()
        assert (record[slot] or {}).get("name") == (os.path.basename(target) or None), (name, slot, record[slot])
    leftovers = fleet.ssh(name, f"ls -A {ROOT}/releases {ROOT}").stdout
    assert ".staging" not in leftovers and ".tmp-" not in leftovers, (name, leftovers)
    assert fleet.ssh(name, f"{ROOT}/current/app/bin/hello").stdout.strip() == f"hello {release['version']}"


def _count_points(ansible, fleet, name, module, args):
    _fault(fleet, name, "count")
    run = _run(ansible, fleet, module, args, name, faulty=True)
    assert run.rc == 0, run
    log = fleet.ssh(name, "cat /run/sciops-fault.log").stdout.splitlines()
    fleet.ssh(name, "rm -f /run/sciops-fault")
    return log


def test_a_kill_after_any_rename_of_install_or_switch_is_repaired_by_the_next_run(releases, fleet, ansible):
    v1, v2 = releases["1.0.0"], releases["2.0.0"]
    _install_fault_interpreter(fleet)
    names = fleet.names
    switch = {"application": APP, "release": v2["release_id"]}
    for step, module, args in (("install", "release_install", _install(v2)), ("switch", "release_switch", switch)):
        def prepare(hosts):
            _reset(fleet, hosts)
            _good_current(ansible, fleet, v1, ",".join(hosts))
            if step == "switch":
                _on_fleet(ansible, fleet, "release_install", _install(v2), hosts=",".join(hosts))
        prepare(names[:1])
        points = _count_points(ansible, fleet, names[0], module, args)
        assert any(f"{ROOT}/" in p for p in points) and any(p.endswith(f" {FACT}") for p in points), points
        for first in range(1, len(points) + 1, len(names)):
            batch = list(zip(names, range(first, min(first + len(names), len(points) + 1))))
            hosts = [host for host, _n in batch]
            prepare(hosts)
            for host, point in batch:
                _fault(fleet, host, f"kill {point}")
            killed = _run(ansible, fleet, module, args, ",".join(hosts), faulty=True)
            for host, point in batch:
                assert host in killed.failed or host in killed.unreachable, (step, point, points[point - 1], killed)
                assert "killed after" in fleet.ssh(host, "cat /run/sciops-fault.log").stdout, (step, point)
                fleet.ssh(host, "rm -f /run/sciops-fault")
            # The next ordinary run (install, switch, health, as the rollout does) repairs the node.
            _good_current(ansible, fleet, v2, ",".join(hosts))
            for host, point in batch:
                _assert_consistent(fleet, host, v2)
                history = _record(fleet, host)["history"]
                assert [h["seq"] for h in history] == sorted(h["seq"] for h in history), (step, point, history)


def test_a_damaged_or_moved_away_record_is_rebuilt_from_the_node_and_kept_aside(releases, fleet, ansible):
    v1, v2 = releases["1.0.0"], releases["2.0.0"]
    node = fleet.names[0]
    _reset(fleet, [node])
    _good_current(ansible, fleet, v1, node)
    _on_fleet(ansible, fleet, "release_install", _install(v2), hosts=node)
    for damage in ("[]", '{"releases": [], "history": {}}', '{"releases": {"x": {"digest": 1}}}'):
        fleet.ssh(node, f"echo '{damage}' > {FACT}")
        switched = _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v2["release_id"]},
                             hosts=node)[node]
        kept = switched["record_rebuilt"]
        assert kept.startswith(FACT + ".damaged-") and fleet.ssh(node, f"cat {kept}").stdout.strip() == damage
        assert any("rebuilt" in w for w in switched.get("warnings", [])), switched
        fleet.ssh(node, f"rm -f {kept}")
        record = _record(fleet, node)
        assert sorted(e["version"] for e in record["releases"].values()) == ["1.0.0", "2.0.0"], record
        assert record["current"]["digest"] == v2["release_id"] and record["history"][0]["event"] == "rebuild"
        _on_fleet(ansible, fleet, "release_switch", {"application": APP, "release": v1["release_id"]}, hosts=node)
    # The documented repair ("move it away") ends with a node that installs and switches again.
    fleet.ssh(node, f"mv {FACT} /root/moved-away.fact")
    again = _on_fleet(ansible, fleet, "release_install", _install(v2), hosts=node)[node]
    assert again["changed"] and again["record_rebuilt"] == FACT
    assert not any(e["version"] == "2.0.0" and e["status"] != "installed" for e in _record(fleet, node)["releases"].values())
    _good_current(ansible, fleet, v2, node)
    _assert_consistent(fleet, node, v2)


def test_a_node_whose_clock_is_25_years_behind_keeps_its_real_previous_release(releases, fleet, ansible):
    node = fleet.names[0]
    _reset(fleet, [node])
    _install_fault_interpreter(fleet)
    for version in ("1.0.0", "2.0.0"):
        _good_current(ansible, fleet, releases[version], node)
    _fault(fleet, node, f"clock {-25 * 365 * 86400}")
    outcomes = {}
    for version in ("3.0.0", "4.0.0"):
        release = releases[version]
        for module, args in (("release_install", _install(release)),
                             ("release_switch", {"application": APP, "release": release["release_id"], "keep": 3})):
            run = _run(ansible, fleet, module, args, node, faulty=True)
            assert run.rc == 0, run
            outcomes[(version, module)] = run.ok[node][0]
    assert _record(fleet, node)["history"][-1]["time"].startswith("20")  # the wrong clock was really used
    pruned = outcomes[("4.0.0", "release_switch")]["pruned"]
    assert pruned == [f"1.0.0-{releases['1.0.0']['release_id'][7:19]}"], pruned
    back = _run(ansible, fleet, "release_switch", {"application": APP, "release": "previous", "reason": "rollback"},
                node, faulty=True)
    assert back.rc == 0 and back.ok[node][0]["to"]["version"] == "3.0.0", back
    fleet.ssh(node, "rm -f /run/sciops-fault")


def test_a_repeated_health_check_does_not_rewrite_the_record(releases, fleet, ansible):
    node = fleet.names[0]
    _reset(fleet, [node])
    _good_current(ansible, fleet, releases["1.0.0"], node)
    before = fleet.ssh(node, f"stat -c %Y.%i {FACT}").stdout
    length = len(_record(fleet, node)["history"])
    again = _on_fleet(ansible, fleet, "release_health", {"application": APP}, hosts=node)[node]
    assert again["healthy"] and again["changed"] is False
    assert fleet.ssh(node, f"stat -c %Y.%i {FACT}").stdout == before and len(_record(fleet, node)["history"]) == length


def test_a_full_disk_names_the_directory_and_leaves_nothing_half_installed(releases, fleet, ansible):
    v1, v2 = releases["1.0.0"], releases["2.0.0"]
    node = fleet.names[0]
    _reset(fleet, [node])
    _good_current(ansible, fleet, v1, node)
    mounted = []
    try:
        # The facts directory fills up: the release is installed, its record not saved; the next run adopts it.
        fleet.ssh(node, "mkdir -p /run/facts-copy && cp -a /etc/ansible/facts.d/. /run/facts-copy/ && "
                        "mount -t tmpfs -o size=64k tmpfs /etc/ansible/facts.d && cp -a /run/facts-copy/. /etc/ansible/facts.d/"
                        " && (dd if=/dev/zero of=/etc/ansible/facts.d/.fill bs=4k 2>/dev/null || true)")
        mounted.append("/etc/ansible/facts.d")
        run = _run(ansible, fleet, "release_install", _install(v2), node)
        message = run.failed[node][0]["msg"]
        assert "no space left in /etc/ansible/facts.d (the facts directory" in message and "free space there" in message, message
        fleet.ssh(node, "rm -f /etc/ansible/facts.d/.fill")
        adopted = _on_fleet(ansible, fleet, "release_install", _install(v2), hosts=node)[node]
        assert adopted["changed"] and any("adopted" in r for r in adopted["repairs"]), adopted
        assert adopted["transfer"]["bytes_downloaded"] == 0
        fleet.ssh(node, f"cp {FACT} /run/facts-copy/ && umount /etc/ansible/facts.d && cp /run/facts-copy/sciops_fleet_{APP}.fact {FACT}")
        mounted.remove("/etc/ansible/facts.d")
        _on_fleet(ansible, fleet, "release_install", _install(v2), hosts=node)
        # The releases directory fills up: the install fails naming it, leaves no staging tree, current untouched.
        v3 = releases["3.0.0"]
        fleet.ssh(node, f"mkdir -p /run/rel-copy && cp -a {ROOT}/releases/. /run/rel-copy/ && "
                        f"mount -t tmpfs -o size=256k tmpfs {ROOT}/releases && cp -a /run/rel-copy/. {ROOT}/releases/ && "
                        f"(dd if=/dev/zero of={ROOT}/releases/.fill bs=4k 2>/dev/null || true)")
        mounted.append(f"{ROOT}/releases")
        run = _run(ansible, fleet, "release_install", _install(v3), node)
        message = run.failed[node][0]["msg"]
        assert f"no space left in {ROOT}/releases (the releases directory" in message, message
        assert "current is untouched" in message
        listing = fleet.ssh(node, f"ls -A {ROOT}/releases").stdout.split()
        assert not [n for n in listing if "staging" in n or n.startswith("3.0.0")], listing
        assert fleet.ssh(node, f"{ROOT}/current/app/bin/hello").stdout.strip() == "hello 1.0.0"
    finally:
        for path in reversed(mounted):
            fleet.ssh(node, f"umount {path}", check=False)
        fleet.ssh(node, "rm -rf /run/facts-copy /run/rel-copy", check=False)
    _on_fleet(ansible, fleet, "release_install", _install(releases["3.0.0"]), hosts=node)
    _good_current(ansible, fleet, releases["3.0.0"], node)
    _assert_consistent(fleet, node, releases["3.0.0"])
