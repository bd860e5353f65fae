# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parts of the test infrastructure that need no root: cache keys, records, inventories."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

import testbed
from testbed import cli, live, noderoot


def test_root_key_is_stable_and_follows_the_package_list(monkeypatch):
    key = noderoot.root_key()
    assert key == noderoot.root_key()
    monkeypatch.setattr(noderoot, "NODE_PACKAGES", noderoot.NODE_PACKAGES + ("curl",))
    assert noderoot.root_key() != key
    # Order does not matter: the key is of the set of packages.
    monkeypatch.setattr(noderoot, "NODE_PACKAGES", tuple(reversed(noderoot.NODE_PACKAGES)))
    assert noderoot.root_key() != key  # curl is still in it
    monkeypatch.setattr(noderoot, "NODE_PACKAGES", tuple(p for p in noderoot.NODE_PACKAGES if p != "curl"))
    assert noderoot.root_key() == key


def test_cache_dir_is_outside_the_checkout_and_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("SCIOPS_FLEET_CACHE", str(tmp_path / "cache"))
    assert testbed.cache_dir() == str(tmp_path / "cache")
    assert os.path.isdir(tmp_path / "cache")


def test_inventory_names_every_node_with_its_own_address(tmp_path):
    fleet = testbed.Fleet(str(tmp_path), nodes=3, net="127.0.9")
    fleet.nodes = {f"node{i}": {"address": f"127.0.9.{i}", "pid": None} for i in (1, 2, 3, 10)}
    fleet._write_inventory()  # pylint: disable=protected-access
    inventory = yaml.safe_load((tmp_path / "inventory.yml").read_text(encoding="utf-8"))
    hosts = inventory["all"]["children"]["fleet"]["hosts"]
    assert list(hosts) == ["node1", "node2", "node3", "node10"]
    assert hosts["node10"]["ansible_host"] == "127.0.9.10"
    assert inventory["all"]["vars"]["ansible_user"] == "root"


def test_sweep_spares_live_owners_and_clears_dead_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("SCIOPS_FLEET_CACHE", str(tmp_path / "cache"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # pylint: disable=consider-using-with
    dead.wait()
    state_alive = tmp_path / "alive"
    state_dead = tmp_path / "dead"
    state_alive.mkdir()
    state_dead.mkdir()
    alive_record = live._register_live("registry", str(state_alive), os.getpid())  # pylint: disable=protected-access
    dead_record = live._register_live("registry", str(state_dead), dead.pid)  # pylint: disable=protected-access
    assert testbed.sweep() == 1
    assert os.path.exists(alive_record)
    assert not os.path.exists(dead_record)
    assert testbed.sweep(everything=True) == 1
    assert not os.path.exists(alive_record)


def test_cli_names_the_missing_node(tmp_path, capsys):
    testbed.Fleet(str(tmp_path))._save_state()  # pylint: disable=protected-access
    assert testbed.main(["fleet", "freeze", "--state", str(tmp_path), "--node", "node7"]) == 1
    assert "no node 'node7'" in capsys.readouterr().err


def test_auth_option_needs_user_and_password():
    with pytest.raises(testbed.TestbedError, match="USER:PASSWORD"):
        cli._parse_auth("nocolon")  # pylint: disable=protected-access
    assert cli._parse_auth("ci:se:cret") == ("ci", "se:cret")  # pylint: disable=protected-access
