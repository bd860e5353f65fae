# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_unit and the app_service role on the systemd test fleet, over SSH, as an operator runs them."""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

pytestmark = pytest.mark.fleet

PLAYBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks")
DEPLOY = os.path.join(PLAYBOOKS, "services_deploy.yml")
HELLO = "sciops-hello.service"
CURRENT = "sciops-echo@current.service"
OLDSTABLE = "sciops-echo@oldstable.service"
TEST_UNITS = ("sciops-hello.service", "sciops-echo@current.service", "sciops-echo@oldstable.service",
              "sciops-crash.service", "sciops-plain.service", "sciops-hardened.service", "sciops-pkg.service", "sciops-greet.socket",
              "sciops-greet.service", "sciops-tick.timer", "sciops-tick.service", r"srv-sciops\x2dscratch.mount",
              "sciops-gone.service", "sciops-bye@a.service", "sciops-bye@b.service")


@pytest.fixture(scope="module", autouse=True)
def remove_test_units(fleet):
    """Leave the session's fleet without this file's units, for the tests that run after it."""
    yield
    units = " ".join(f"'{unit}'" for unit in TEST_UNITS)
    for name in fleet.names:
        fleet.ssh(name, f"systemctl disable --now {units}; "
                        "rm -rf /etc/systemd/system/sciops-* /etc/systemd/system/srv-sciops* "
                        "/usr/lib/systemd/system/sciops-pkg.service /var/lib/sciops-fleet/_units "
                        "/var/lib/sciops-fleet/sciops-echo /etc/sciops-hello /etc/sciops-echo; "
                        "systemctl daemon-reload; systemctl reset-failed", check=False)


# Every node in one batch, and modules sent through one SSH exchange each: the deploy playbook runs often.
FAST = {"ANSIBLE_FORKS": "16", "ANSIBLE_PIPELINING": "True"}
_DEPLOYED = {}


def deploy(fleet, ansible, check=False, **extravars):
    """Run the deploy playbook; EXTRAVARS change it from the default state every test starts from."""
    run = ansible(fleet.inventory_path, playbook=DEPLOY, extravars=extravars, check=check, envvars=FAST)
    assert run.rc == 0, run
    assert sorted(run.ok) == fleet.names, run
    if not check:
        _DEPLOYED[fleet.state_dir] = not extravars
    return run


def ensure_deployed(fleet, ansible):
    """The default deployment, run only when the last deploy of this fleet was not the default one."""
    if not _DEPLOYED.get(fleet.state_dir):
        deploy(fleet, ansible)


def service_unit(fleet, ansible, check=False, **args):
    """Run sciops.fleet.service_unit with ARGS on every node of the fleet, as an ad-hoc command."""
    return ansible(fleet.inventory_path, hosts="fleet", module="sciops.fleet.service_unit",
                   module_args=json.dumps(args), check=check, envvars=FAST)


def module_results(run, host, module_key="units"):
    """The results of service_unit tasks (those that report units) of HOST, in task order."""
    return [res for res in run.ok[host] if module_key in res and "unit_file" in res]


def changed_tasks(run, host):
    return [res for res in run.ok[host] if res.get("changed")]


def unit_props(fleet, name, unit, *props):
    out = fleet.ssh(name, f"systemctl show -p {','.join(props)} -- '{unit}'").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def http_get(address, port, path="/"):
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=5) as response:
        return response.read().decode()


def invocations(fleet):
    return {name: {unit: unit_props(fleet, name, unit, "InvocationID")["InvocationID"]
                   for unit in (HELLO, CURRENT, OLDSTABLE)} for name in fleet.names}


def test_services_from_a_unit_and_a_template_run_on_every_node_and_a_second_run_changes_nothing(fleet, ansible):
    predicted = deploy(fleet, ansible, check=True)
    for name in fleet.names:
        assert [res["changed"] for res in module_results(predicted, name)] == [True, True], predicted
    applied = deploy(fleet, ansible)
    for name in fleet.names:
        hello, echo = module_results(applied, name)
        assert hello["started"] == [HELLO] and hello["written"], hello
        assert sorted(echo["started"]) == [CURRENT, OLDSTABLE], echo
        for unit in (HELLO, CURRENT, OLDSTABLE):
            props = unit_props(fleet, name, unit, "ActiveState", "UnitFileState")
            assert props == {"ActiveState": "active", "UnitFileState": "enabled"}, (name, unit, props)
        address = fleet.address(name)
        assert http_get(address, 8101, "/hello.conf") == "greeting = hello\n"
        # The two slots of one template, side by side on their own ports, each serving its own release.
        assert http_get(address, 8201, "/VERSION") == "2.0\n"
        assert http_get(address, 8202, "/VERSION") == "1.0\n"
        pids = [unit_props(fleet, name, unit, "MainPID")["MainPID"] for unit in (CURRENT, OLDSTABLE)]
        assert len(set(pids)) == 2 and "0" not in pids
    before = invocations(fleet)
    again_check = deploy(fleet, ansible, check=True)
    again = deploy(fleet, ansible)
    for name in fleet.names:
        assert changed_tasks(again_check, name) == [], again_check
        assert changed_tasks(again, name) == [], again
    assert invocations(fleet) == before


def test_a_config_change_restarts_exactly_the_services_that_declare_it(fleet, ansible):
    ensure_deployed(fleet, ansible)
    before = invocations(fleet)
    run = deploy(fleet, ansible, services_current_env="LOG_LEVEL=debug\n")
    after = invocations(fleet)
    for name in fleet.names:
        hello, echo = module_results(run, name)
        assert hello["restarted"] == [] and not hello["changed"]
        assert echo["restarted"] == [CURRENT], echo
        assert echo["restart_reasons"][CURRENT] == "changed: /etc/sciops-echo/current.env"
        assert after[name][CURRENT] != before[name][CURRENT]
        assert after[name][OLDSTABLE] == before[name][OLDSTABLE]
        assert after[name][HELLO] == before[name][HELLO]
    # hello.conf is declared by sciops-hello only.
    run = deploy(fleet, ansible, services_current_env="LOG_LEVEL=debug\n", services_hello_greeting="good morning")
    final = invocations(fleet)
    for name in fleet.names:
        hello, echo = module_results(run, name)
        assert hello["restarted"] == [HELLO] and echo["restarted"] == []
        assert final[name][HELLO] != after[name][HELLO]
        assert final[name][CURRENT] == after[name][CURRENT] and final[name][OLDSTABLE] == after[name][OLDSTABLE]
        assert http_get(fleet.address(name), 8101, "/hello.conf") == "greeting = good morning\n"
    deploy(fleet, ansible)  # back to the default state


def test_switching_a_slot_to_another_release_restarts_only_that_slot(fleet, ansible):
    ensure_deployed(fleet, ansible)
    before = invocations(fleet)
    run = deploy(fleet, ansible, services_current_release="3.0")
    after = invocations(fleet)
    for name in fleet.names:
        _hello, echo = module_results(run, name)
        assert echo["restarted"] == [CURRENT], echo
        assert after[name][OLDSTABLE] == before[name][OLDSTABLE] and after[name][HELLO] == before[name][HELLO]
        assert http_get(fleet.address(name), 8201, "/VERSION") == "3.0\n"
        assert http_get(fleet.address(name), 8202, "/VERSION") == "1.0\n"
    deploy(fleet, ansible)  # back to the default state


@pytest.mark.parametrize("case, args, systemd_says", [
    ("unknown directive", {"sections": {"Service": {"ExecStart": "/usr/bin/python3 -m http.server 8109",
                                                    "Frobnicate": "yes"}}},
     "Unknown key 'Frobnicate' in section [Service]"),
    ("syntax error", {"content": "[Service\nExecStart=/usr/bin/true\n"}, "Invalid section header '[Service'"),
    ("missing program", {"sections": {"Service": {"ExecStart": "/opt/nowhere/bin/server"}}},
     "Command /opt/nowhere/bin/server is not executable"),
])
def test_a_bad_unit_is_refused_and_the_previous_one_keeps_running(fleet, ansible, case, args, systemd_says):
    ensure_deployed(fleet, ansible)
    digests = {name: fleet.ssh(name, f"sha256sum /etc/systemd/system/{HELLO}").stdout for name in fleet.names}
    pids = {name: unit_props(fleet, name, HELLO, "MainPID")["MainPID"] for name in fleet.names}
    run = service_unit(fleet, ansible, name=HELLO, state="restarted", **args)
    assert sorted(run.failed) == fleet.names, (case, run)
    for name in fleet.names:
        failure = run.failed[name][0]
        assert "refused by systemd-analyze verify" in failure["msg"], failure
        assert systemd_says in failure["msg"], failure
        assert fleet.ssh(name, f"sha256sum /etc/systemd/system/{HELLO}").stdout == digests[name]
        assert unit_props(fleet, name, HELLO, "ActiveState", "MainPID") == {"ActiveState": "active",
                                                                            "MainPID": pids[name]}
        assert http_get(fleet.address(name), 8101, "/hello.conf").startswith("greeting")


def test_a_failing_service_fails_the_module_with_its_journal(fleet, ansible):
    run = service_unit(fleet, ansible, name="sciops-crash.service", state="started", settle=3, sections={
        "Service": {"ExecStart": "/bin/sh -c 'echo sciops-crash: cannot read /etc/crash.conf >&2; exit 3'",
                    "Restart": "on-failure", "RestartSec": 1}})
    assert sorted(run.failed) == fleet.names, run
    for name in fleet.names:
        failure = run.failed[name][0]
        assert failure["msg"].startswith("sciops-crash.service did not start:"), failure
        # Restart=on-failure: systemd waits to restart it, which is a failure, not a success.
        assert failure["sub_state"] in ("auto-restart", "failed"), failure
        assert failure["unit_result"] == "exit-code" and failure["exec_main_status"] == "3"
        assert any("sciops-crash: cannot read /etc/crash.conf" in line for line in failure["journal"]), failure
        assert "sciops-crash: cannot read /etc/crash.conf" in failure["msg"]
        assert failure["changed"] is True and failure["written"] is True  # the verified unit is installed
        fleet.ssh(name, "systemctl stop sciops-crash.service; systemctl reset-failed sciops-crash.service", check=False)


def test_default_hardening_is_in_systemds_ok_band(fleet, ansible):
    run = service_unit(fleet, ansible, name="sciops-hardened.service", state="started", sections={
        "Unit": {"Description": "the example service with the default hardening"},
        "Service": {"Type": "exec", "ExecStart": "/usr/bin/python3 -m http.server --bind {{ ansible_host }} 8111"}})
    assert sorted(run.ok) == fleet.names, run
    for name in fleet.names:
        result = run.ok[name][0]
        assert result["exposure"] is not None and result["exposure"] < 5.0, result
        assert result["exposure_rating"] == "OK", result
        unit = fleet.ssh(name, "cat /etc/systemd/system/sciops-hardened.service").stdout
        for line in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                     "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "StateDirectory=sciops-hardened"):
            assert line in unit.splitlines(), unit
        # It answers, as a dynamic user with no capabilities.
        assert "Directory listing" in http_get(fleet.address(name), 8111)
        pid = unit_props(fleet, name, "sciops-hardened.service", "MainPID")["MainPID"]
        status = fleet.ssh(name, f"cat /proc/{pid}/status").stdout
        assert "CapEff:\t0000000000000000" in status
        assert "Uid:\t0\t" not in status
    # The same service without the defaults, as systemd rates it.
    plain = service_unit(fleet, ansible, name="sciops-plain.service", hardening=False, state="started",
                         sections={"Service": {"ExecStart": "/usr/bin/sleep infinity"}})
    assert sorted(plain.ok) == fleet.names, plain
    for name in fleet.names:
        assert plain.ok[name][0]["exposure"] > 9.0, plain.ok[name][0]


def test_a_default_is_overridden_or_removed(fleet, ansible):
    run = service_unit(fleet, ansible, name="sciops-plain.service", state="started", sections={
        "Service": {"ExecStart": "/usr/bin/sleep infinity", "User": "nobody", "PrivateDevices": None,
                    "RestrictAddressFamilies": "AF_UNIX"}})
    assert sorted(run.ok) == fleet.names, run
    for name in fleet.names:
        unit = fleet.ssh(name, "cat /etc/systemd/system/sciops-plain.service").stdout.splitlines()
        assert "User=nobody" in unit and "RestrictAddressFamilies=AF_UNIX" in unit
        assert not [line for line in unit if line.startswith(("DynamicUser=", "PrivateDevices="))], unit
        assert run.ok[name][0]["restarted"] == ["sciops-plain.service"]
        # systemd's opinion of the nobody user is passed on as a warning; it does not refuse the unit.
        assert any("Special user nobody configured" in w for w in run.ok[name][0]["warnings"]), run.ok[name][0]
        assert unit_props(fleet, name, "sciops-plain.service", "ActiveState")["ActiveState"] == "active"


def test_a_drop_in_changes_a_packaged_unit_and_a_bad_one_is_refused(fleet, ansible):
    for name in fleet.names:
        fleet.ssh(name, "printf '[Unit]\\nDescription=packaged\\n[Service]\\nExecStart=/usr/bin/sleep infinity\\n'"
                        " > /usr/lib/systemd/system/sciops-pkg.service && systemctl daemon-reload")
    args = {"name": "sciops-pkg.service", "dropin": "50-site", "state": "started"}
    run = service_unit(fleet, ansible, sections={"Service": {"Environment": "SITE=a"}}, **args)
    assert sorted(run.ok) == fleet.names, run
    for name in fleet.names:
        result = run.ok[name][0]
        assert result["unit_file"] == "/etc/systemd/system/sciops-pkg.service.d/50-site.conf"
        assert result["started"] == ["sciops-pkg.service"]
        assert unit_props(fleet, name, "sciops-pkg.service", "Environment")["Environment"] == "SITE=a"
    changed = service_unit(fleet, ansible, sections={"Service": {"Environment": "SITE=b"}}, **args)
    for name in fleet.names:
        assert changed.ok[name][0]["restarted"] == ["sciops-pkg.service"]
        assert changed.ok[name][0]["restart_reasons"]["sciops-pkg.service"] == "the unit changed"
    bad = service_unit(fleet, ansible, name="sciops-pkg.service", dropin="60-typo",
                       sections={"Service": {"Enviroment": "X=1"}})
    assert sorted(bad.failed) == fleet.names, bad
    for name in fleet.names:
        assert "60-typo.conf:4: Unknown key 'Enviroment'" in bad.failed[name][0]["msg"]
        assert fleet.ssh(name, "test -e /etc/systemd/system/sciops-pkg.service.d/60-typo.conf", check=False).returncode == 1
        assert unit_props(fleet, name, "sciops-pkg.service", "Environment")["Environment"] == "SITE=b"


def test_socket_timer_and_mount_units(fleet, ansible, tmp_path):
    playbook = tmp_path / "units.yml"
    playbook.write_text("""---
- name: Socket, timer and mount units
  hosts: fleet
  gather_facts: false
  tasks:
    - name: The service behind the socket
      sciops.fleet.service_unit:
        name: sciops-greet.service
        sections:
          Service:
            ExecStart: >-
              /usr/bin/python3 -c "import socket; s = socket.socket(fileno=3);
              c = s.accept()[0]; c.sendall(b'greetings from ' + socket.gethostname().encode()); c.close()"
    - name: The socket
      sciops.fleet.service_unit:
        name: sciops-greet.socket
        sections:
          Socket:
            ListenStream: "{{ ansible_host }}:8301"
          Install:
            WantedBy: sockets.target
        enabled: true
        state: started
    - name: A timer
      sciops.fleet.service_unit:
        name: sciops-tick.timer
        sections:
          Timer:
            OnCalendar: "*-*-* 03:00:00"
            Unit: sciops-tick.service
          Install:
            WantedBy: timers.target
        enabled: true
        state: started
      register: timer_result
    - name: A mount
      sciops.fleet.service_unit:
        name: srv-sciops\\x2dscratch.mount
        sections:
          Mount:
            What: tmpfs
            Where: /srv/sciops-scratch
            Type: tmpfs
            Options: size=8m,mode=0755
          Install:
            WantedBy: multi-user.target
        enabled: true
        state: started
""", encoding="utf-8")
    for name in fleet.names:  # the timer's service, as a package would install it
        fleet.ssh(name, "printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/true\\n' > /etc/systemd/system/sciops-tick.service")
    run = ansible(fleet.inventory_path, playbook=str(playbook), envvars=FAST)
    assert run.rc == 0, run
    for name in fleet.names:
        with socket.create_connection((fleet.address(name), 8301), timeout=5) as conn:
            assert conn.recv(100) == f"greetings from {name}".encode()
        assert unit_props(fleet, name, "sciops-tick.timer", "ActiveState")["ActiveState"] == "active"
        assert fleet.ssh(name, "findmnt -n -o FSTYPE /srv/sciops-scratch").stdout.strip() == "tmpfs"
    again = ansible(fleet.inventory_path, playbook=str(playbook), envvars=FAST)
    for name in fleet.names:
        assert changed_tasks(again, name) == [], again


def test_a_retired_slot_is_stopped_and_disabled_and_the_other_keeps_running(fleet, ansible):
    ensure_deployed(fleet, ansible)
    before = invocations(fleet)
    deploy(fleet, ansible, services_retired_slots=["oldstable"])
    for name in fleet.names:
        assert unit_props(fleet, name, OLDSTABLE, "ActiveState", "UnitFileState") == {
            "ActiveState": "inactive", "UnitFileState": "disabled"}
        assert unit_props(fleet, name, CURRENT, "InvocationID")["InvocationID"] == before[name][CURRENT]
        assert http_get(fleet.address(name), 8201, "/VERSION") == "2.0\n"
        with pytest.raises(OSError):
            http_get(fleet.address(name), 8202, "/VERSION")
    deploy(fleet, ansible)
    for name in fleet.names:
        assert http_get(fleet.address(name), 8202, "/VERSION") == "1.0\n"


def test_check_mode_changes_nothing_on_the_node(fleet, ansible):
    ensure_deployed(fleet, ansible)
    digest = {name: fleet.ssh(name, f"sha256sum /etc/systemd/system/{HELLO}").stdout for name in fleet.names}
    before = invocations(fleet)
    run = service_unit(fleet, ansible, check=True, name=HELLO, state="started",
                       sections={"Service": {"ExecStart": "/usr/bin/sleep infinity"}})
    for name in fleet.names:
        result = run.ok[name][0]
        assert result["changed"] and result["written"] and result["restarted"] == [HELLO], result
        assert "-ExecStart=/usr/bin/python3" not in result["diff"]["after"]
        assert "ExecStart=/usr/bin/sleep infinity" in result["diff"]["after"]
        assert fleet.ssh(name, f"sha256sum /etc/systemd/system/{HELLO}").stdout == digest[name]
    assert invocations(fleet) == before


def test_a_unit_and_a_template_with_its_instances_are_removed(fleet, ansible):
    sleeper = {"Unit": {"Description": "sciops test unit to remove"}, "Service": {"ExecStart": "/usr/bin/sleep infinity"},
               "Install": {"WantedBy": "multi-user.target"}}
    unit, template, instances = "sciops-gone.service", "sciops-bye@.service", ["sciops-bye@a.service", "sciops-bye@b.service"]
    installed = service_unit(fleet, ansible, name=unit, sections=sleeper, enabled=True, state="started")
    assert installed.rc == 0, installed
    installed = service_unit(fleet, ansible, name=template, sections=sleeper, instances=["a", "b"], enabled=True, state="started")
    assert installed.rc == 0, installed.stdout
    for name in fleet.names:
        assert fleet.ssh(name, f"test -f /var/lib/sciops-fleet/_units/{unit}.json").returncode == 0

    predicted = service_unit(fleet, ansible, check=True, name=unit, state="absent")
    for name in fleet.names:
        result = predicted.ok[name][0]
        assert result["changed"] and result["removed"] and result["stopped"] == [unit], result
        assert result["diff"]["after"] == "" and "sleep infinity" in result["diff"]["before"]
        assert unit_props(fleet, name, unit, "ActiveState")["ActiveState"] == "active"

    removed = service_unit(fleet, ansible, name=unit, state="absent")
    # A template without instances named: every instance systemd knows of goes with it.
    removed_template = service_unit(fleet, ansible, name=template, state="absent")
    for name in fleet.names:
        result = removed.ok[name][0]
        assert result["changed"] and result["removed"] and result["stopped"] == [unit], result
        assert result["enabled_changed"] == [unit], result
        assert sorted(removed_template.ok[name][0]["stopped"]) == instances, removed_template.ok[name]
        for gone in [unit] + instances:
            assert unit_props(fleet, name, gone, "LoadState", "ActiveState") == {"LoadState": "not-found", "ActiveState": "inactive"}
        listing = fleet.ssh(name, f"ls /etc/systemd/system/{unit} /etc/systemd/system/{template} "
                                  "/etc/systemd/system/multi-user.target.wants/ /var/lib/sciops-fleet/_units/",
                            check=False).stdout
        assert "sciops-gone" not in listing and "sciops-bye" not in listing, listing
    again = service_unit(fleet, ansible, name=unit, state="absent")
    for name in fleet.names:
        assert not again.ok[name][0]["changed"], again.ok[name]
