# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_access: what a grant may name, its polkit rule and sudoers text, and its one file on a node."""

from __future__ import annotations

import grp
import os

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.access import (
    Grant,
    UnitPattern,
    polkit_rule_text,
    sudoers_text,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.access_files import (
    ARGUMENT_SPEC,
    ServiceAccess,
    polkit_status,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import AccessError

# An existing group other than root (a grant to root is refused): the grant checks that its group exists.
GROUP = next(group.gr_name for group in grp.getgrall() if group.gr_gid != 0 and group.gr_name.isalnum())


def grant(**params):
    base = {"name": "app-ops", "group": "ops", "units": ["app@current.service"], "verbs": ["restart"]}
    base.update(params)
    return Grant.from_params(base, check_group=False)


@pytest.mark.parametrize("verb, why", [
    ("enable", "manage-unit-files"),
    ("disable", "manage-unit-files"),
    ("daemon-reload", "not per unit"),
    ("edit", "runs as root"),
    ("set-property", "resource and sandbox"),
    ("link", "any file a unit"),
    ("mask", "manage-unit-files"),
    ("isolate", "stops every unit"),
    ("frobnicate", "not a verb this module grants"),
])
def test_verbs_that_are_not_per_unit_or_amount_to_root_are_refused_with_the_reason(verb, why):
    with pytest.raises(AccessError) as info:
        grant(verbs=["restart", verb])
    assert verb in str(info.value) and why in str(info.value)


@pytest.mark.parametrize("unit", ["*", "*.service", "ssh*", "ssh*.service", "*@current.service", "@*.service",
                                  "app*@current.service", "app@*", "app@*.*", "app@*-*.service", "app@*.bogus"])
def test_patterns_that_do_not_name_one_template_are_refused(unit):
    with pytest.raises(AccessError) as info:
        grant(units=[unit])
    assert "units:" in str(info.value)


@pytest.mark.parametrize("unit, why", [
    ("app@.service", "template"),
    ("reboot.target", "whole node"),
    ("rescue.target", "whole node"),
    ("polkit.service", "whole node"),
    ("not a unit", "not a systemd unit name"),
])
def test_templates_node_wide_units_and_non_units_are_refused(unit, why):
    with pytest.raises(AccessError) as info:
        grant(units=[unit])
    assert why in str(info.value)


def test_status_alone_grants_nothing_and_is_refused_as_an_empty_grant():
    with pytest.raises(AccessError) as info:
        grant(verbs=["status"])
    assert "status needs no grant" in str(info.value)


def test_machine_shell_is_refused():
    with pytest.raises(AccessError) as info:
        grant(units=[], verbs=[], machines=["app-current"], machine_verbs=["shell"])
    assert "root shell" in str(info.value)


def test_a_group_that_does_not_exist_is_refused():
    with pytest.raises(AccessError) as info:
        Grant.from_params({"name": "x", "group": "no-such-group-here", "units": ["a.service"], "verbs": ["start"]})
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("pattern, unit, matches", [
    ("app@*.service", "app@current.service", True),
    ("app@*.service", "app@.service", False),
    ("app@*.service", "app.service", False),
    ("app@*.service", "app@current.socket", False),
    ("app@*.service", "appx@current.service", False),
    ("app@*.service", "app@a@b.service", False),
    ("app@worker-*.service", "app@worker-1.service", True),
    ("app@worker-*.service", "app@czar.service", False),
    ("app@current.service", "app@current.service", True),
    ("app@current.service", "app@oldstable.service", False),
])
def test_a_pattern_stands_for_the_instances_of_its_template_only(pattern, unit, matches):
    assert UnitPattern(pattern).matches(unit) is matches


def test_the_polkit_rule_names_the_group_the_units_and_the_systemd_verbs():
    text = polkit_rule_text(grant(units=["app@*.service", "czar.service"], verbs=["restart", "reload", "status"]))
    assert 'subject.isInGroup("ops")' in text
    assert 'action.id == "org.freedesktop.systemd1.manage-units"' in text
    assert 'var exact = ["czar.service"];' in text
    assert 'var patterns = [["app@", ".service"]];' in text
    # restart also covers try-restart; restart and reload together cover reload-or-restart.
    assert '["restart", "try-restart", "reload", "reload-or-restart", "reload-or-try-restart"]' in text
    assert "manage-unit-files" not in text and "machine1" not in text
    assert text.count("polkit.Result.YES") == 1


def test_the_polkit_rule_for_machines_asks_machined_about_the_machine_and_systemd_about_its_unit():
    text = polkit_rule_text(grant(units=[], verbs=[], machines=["app-current"], machine_verbs=["start", "reboot"]))
    assert '["systemd-nspawn@app-current.service"].indexOf(unit) >= 0 && ["start"].indexOf(verb)' in text
    assert 'action.id == "org.freedesktop.machine1.manage-machines"' in text
    assert '["app-current"].indexOf(machine) >= 0 && ["kill"].indexOf(verb)' in text


def test_sudoers_lines_are_exact_commands_one_per_unit_and_verb():
    text = sudoers_text(grant(units=["app@*.service", "czar.service"], verbs=["start", "restart", "status"],
                              instances=["current", "oldstable"]), "/usr/bin/systemctl", "/usr/bin/machinectl")
    rules = [line for line in text.splitlines() if not line.startswith("#")]
    assert rules == [
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl start app@current.service",
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl start app@oldstable.service",
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl start czar.service",
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl restart app@current.service",
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl restart app@oldstable.service",
        "%ops ALL=(root) NOPASSWD: /usr/bin/systemctl restart czar.service",
    ]
    assert "*" not in "".join(rules)


def test_sudoers_escapes_what_sudo_gives_a_meaning():
    text = sudoers_text(grant(units=[r"srv-a\x2db.mount", "a:b.service"], verbs=["start"]), "/usr/bin/systemctl",
                        "/usr/bin/machinectl")
    assert r"/usr/bin/systemctl start srv-a\\x2db.mount" in text
    assert r"/usr/bin/systemctl start a\:b.service" in text


def test_a_pattern_without_instances_is_refused_for_sudoers_because_sudo_wildcards_match_arguments():
    with pytest.raises(AccessError) as info:
        sudoers_text(grant(units=["app@*.service"]), "/usr/bin/systemctl", "/usr/bin/machinectl")
    assert "matches spaces and further arguments" in str(info.value)


def test_sudoers_machines_name_each_machinectl_command():
    text = sudoers_text(grant(units=[], verbs=[], machines=["app-current"], machine_verbs=["stop"]),
                        "/usr/bin/systemctl", "/usr/bin/machinectl")
    assert "NOPASSWD: /usr/bin/machinectl poweroff app-current\n" in text
    assert "NOPASSWD: /usr/bin/machinectl stop app-current\n" in text


@pytest.fixture(name="node")
def node_fixture(tmp_path):
    """A node's polkit and sudoers directories, with a polkitd binary present and polkit.service loaded."""
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "sudoers.d").mkdir()
    (tmp_path / "polkitd").write_text("", encoding="utf-8")
    return tmp_path


def access(node, check_mode=False, load_state="loaded", **params):
    args = {key: spec.get("default") for key, spec in ARGUMENT_SPEC.items()}
    args.update(name="app-ops", group=GROUP, units=["app@*.service"], verbs=["restart"],
                rules_dir=str(node / "rules.d"), sudoers_dir=str(node / "sudoers.d"))
    args.update(params)

    def run(argv):
        assert argv[1:3] == ["show", "--no-pager"], argv  # only systemctl show runs when polkit is used
        return 0, f"LoadState={load_state}\n", ""
    return ServiceAccess(args, run, {"systemctl": "/usr/bin/systemctl"}.get, check_mode=check_mode, diff=True,
                         polkitd_paths=[str(node / "polkitd")]).run()


def test_polkit_grant_check_apply_check_apply_and_absent_removes_exactly_its_file(node):
    (node / "rules.d" / "50-other.rules").write_text("// someone else's\n", encoding="utf-8")
    rule = node / "rules.d" / "60-sciops-fleet-app-ops.rules"
    results = [access(node, check_mode=True), access(node), access(node, check_mode=True), access(node)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[1]["mechanism"] == "polkit" and results[1]["grant_file"] == str(rule)
    assert results[0]["diff"]["after"] == rule.read_text(encoding="utf-8")
    assert oct(rule.stat().st_mode & 0o777) == "0o644"
    gone = access(node, state="absent")
    assert gone["changed"] and gone["removed"] == [str(rule)]
    assert sorted(os.listdir(node / "rules.d")) == ["50-other.rules"]
    assert not access(node, state="absent")["changed"]


def test_a_refused_grant_writes_nothing(node):
    with pytest.raises(AccessError):
        access(node, units=["*"])
    with pytest.raises(AccessError):
        access(node, verbs=["enable"])
    assert os.listdir(node / "rules.d") == [] and os.listdir(node / "sudoers.d") == []


@pytest.mark.parametrize("load_state", ["masked", "not-found"])
def test_polkit_is_not_used_when_its_unit_is_masked_or_missing(node, load_state):
    usable, reason = polkit_status(lambda argv: (0, f"LoadState={load_state}\n", ""), "/usr/bin/systemctl",
                                   str(node / "rules.d"), [str(node / "polkitd")])
    assert not usable and load_state in reason
    with pytest.raises(AccessError) as info:
        access(node, load_state=load_state, mechanism="polkit")
    assert "polkit cannot carry the grant" in str(info.value)
    with pytest.raises(AccessError) as info:
        access(node, load_state=load_state)  # auto, and no visudo on this stand-in node
    assert "sudo is not installed" in str(info.value)


def test_polkit_is_not_used_without_polkitd_or_without_a_rules_directory(tmp_path):
    (tmp_path / "polkitd").write_text("", encoding="utf-8")
    assert not polkit_status(lambda argv: (0, "LoadState=loaded\n", ""), None, str(tmp_path / "rules.d"),
                             [str(tmp_path / "polkitd")])[0]
    (tmp_path / "rules.d").mkdir()
    assert not polkit_status(lambda argv: (0, "LoadState=loaded\n", ""), None, str(tmp_path / "rules.d"),
                             [str(tmp_path / "nothing")])[0]
    assert polkit_status(lambda argv: (0, "LoadState=loaded\n", ""), None, str(tmp_path / "rules.d"),
                         [str(tmp_path / "polkitd")])[0]


def test_a_name_sudo_would_ignore_is_refused(node):
    with pytest.raises(AccessError) as info:
        access(node, name="app.ops")
    assert "dot" in str(info.value)
