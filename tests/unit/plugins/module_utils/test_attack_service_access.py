# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attacks on service_access that need no fleet: a grant's removal and rewrite touch only the files the module
wrote, and check mode predicts a grant for a group the same play creates."""

from __future__ import annotations

import grp
import os

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.access_files import ARGUMENT_SPEC, ServiceAccess

GROUP = next(group.gr_name for group in grp.getgrall() if group.gr_gid != 0 and group.gr_name.isalnum())


@pytest.fixture(name="node")
def node_fixture(tmp_path):
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "sudoers.d").mkdir()
    (tmp_path / "polkitd").write_text("", encoding="utf-8")
    return tmp_path


def access(node, check_mode=False, **params):
    args = {key: spec.get("default") for key, spec in ARGUMENT_SPEC.items()}
    args.update(name="app-ops", group=GROUP, units=["app@*.service"], verbs=["restart"],
                rules_dir=str(node / "rules.d"), sudoers_dir=str(node / "sudoers.d"))
    args.update(params)
    return ServiceAccess(args, lambda argv: (0, "LoadState=loaded\n", ""), {"systemctl": "/usr/bin/systemctl"}.get,
                         check_mode=check_mode, diff=True, polkitd_paths=[str(node / "polkitd")]).run()


def test_state_absent_removes_only_files_the_module_wrote(node):
    """The role ops_access writes its journalctl lines to sudoers.d/sciops-fleet-<app>-logs, a name a grant called
    '<app>-logs' also maps to; an operator's own sudoers file of that name is not the module's to remove either."""
    theirs = node / "sudoers.d" / "sciops-fleet-app-logs"
    theirs.write_text("%ops ALL=(root) NOPASSWD: /usr/bin/journalctl --no-pager -u app@current.service\n",
                      encoding="utf-8")
    access(node, name="app-logs", state="absent")
    assert theirs.exists(), "state=absent removed a sudoers file service_access never wrote"


def test_present_does_not_silently_replace_a_file_the_module_did_not_write(node):
    theirs = node / "rules.d" / "60-sciops-fleet-app-logs.rules"
    theirs.write_text("// the site's own rule\npolkit.addRule(function(a, s) { return polkit.Result.NOT_HANDLED; });\n",
                      encoding="utf-8")
    try:
        access(node, name="app-logs")
    except Exception as exc:  # pylint: disable=broad-except  # refusing with a message is the right outcome
        assert "app-logs" in str(exc) or "written by" in str(exc).lower()
        assert theirs.read_text(encoding="utf-8").startswith("// the site's own rule")
        return
    pytest.fail("service_access overwrote a rule it did not write, without a word")


def test_check_mode_predicts_a_grant_for_a_group_the_same_play_creates(node):
    """ops_access creates the group, then grants it: in check mode the group is only predicted, and the grant
    must be predicted too instead of failing the whole check run on a fresh node."""
    result = access(node, check_mode=True, group="sciops-nosuchgroup")
    assert result["changed"]
    assert os.listdir(node / "rules.d") == []
