# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install kind ``machine`` under attack: manifest values that nspawn or systemd would not take as given, and two
switches of one application at once. Each test asserts what the collection promises."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import machine as kind
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import ReleaseError, validate_release
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import FILES_RECORD, AppState
from ansible_collections.sciops.fleet.plugins.module_utils._release.switch import switch_release

DIGEST = "sha256:" + "cd" * 32
MACHINE = {
    "command": ["/bin/sh", "-c", "exec /bin/busybox httpd -f -p ${port} -h /srv/www"],
    "slots": {"current": {"port": "8301"}, "oldstable": {"port": "8302"}},
    "binds": [{"source": "www", "dest": "/srv/www"}],
    "data": "/data",
}


def manifest(application="bss", version="2.0", **machine):
    settings = copy.deepcopy(MACHINE)
    settings.update(machine)
    return {"schema_version": 1, "application": application, "version": version, "protocol": "1",
            "artifacts": [{"name": "rootfs", "reference": f"127.0.0.1:5000/build/bss@{DIGEST}", "install": "machine",
                           "machine": settings}]}


def test_an_application_whose_machine_name_is_no_host_name_is_refused():
    """systemd-nspawn takes a machine name only when it is a valid host name (letters, digits, '-', '.'):
    `systemd-nspawn --machine=my_app-current` says 'Invalid machine name'. The manifest check lets '_' through,
    so the release is published and every node fails at its health check instead of at publish time."""
    with pytest.raises(ReleaseError, match="application"):
        validate_release(manifest(application="my_app"))


@pytest.mark.parametrize("value", ["8301:9", "8301 8302", "http"])
def test_a_slot_value_used_as_a_port_must_be_a_port(value):
    """ports are checked with every ${...} replaced by "1", never with the slots' values: a slot's port that is no
    port reaches the .nspawn file as Port=tcp:<value>:8300, and the machine does not start."""
    data = manifest(network="veth", ports=["tcp:${port}:8300"],
                    slots={"current": {"port": value}, "oldstable": {"port": "8302"}})
    with pytest.raises(ReleaseError, match=r"ports|slots"):
        validate_release(data)


@pytest.mark.parametrize("limit, value", [("cpu", "0%"), ("memory", "0"), ("memory", "0%"), ("tasks", "0")])
def test_a_limit_that_leaves_no_room_or_none_is_refused(limit, value):
    """systemd ignores CPUQuota=0%, MemoryMax=0 and TasksMax=0 ('Invalid CPU quota', 'out of range, ignoring'):
    the release's limit is dropped without a word and its machine runs with no limit at all."""
    with pytest.raises(ReleaseError, match=f"limits.{limit}"):
        validate_release(manifest(limits={limit: value}))


class FakeSystemd:
    """Enough of _systemd.manager.Systemd for converge: a unit runs the drop-in it was (re)started with."""

    def __init__(self, unit_dir):
        self.unit_dir = unit_dir
        self.units = {}

    def show(self, unit, properties=()):
        return dict(self.units.get(unit, {"ActiveState": "inactive"}))

    def daemon_reload(self):
        return None

    def is_enabled(self, unit):
        return "enabled"

    def journal(self, unit, lines):
        return []

    def run(self, argv):
        return 0, "1\n", ""

    def ctl(self, verb, *args, check=True):
        unit = args[-1]
        if verb in ("restart", "start"):
            with open(os.path.join(self.unit_dir, unit + ".d", kind.DROPIN_NAME), encoding="utf-8") as handle:
                dropin = handle.read()
            self.units[unit] = {"ActiveState": "active", "SubState": "running", "InvocationID": uuid.uuid4().hex,
                                "dropin": dropin}
        elif verb in ("stop", "disable"):
            self.units.pop(unit, None)
        return 0, "", ""


@pytest.fixture
def node(tmp_path, monkeypatch):
    state = AppState("bss", str(tmp_path / "state"), str(tmp_path / "facts"))
    for number, version in ((1, "1.0"), (2, "2.0")):
        name = f"{version}-{str(number) * 12}"
        path = state.release_path(name)
        for sub in ("rootfs/usr", "www"):
            os.makedirs(os.path.join(path, sub))
        with open(os.path.join(path, FILES_RECORD), "w", encoding="utf-8") as handle:
            handle.write("{}")
        with open(os.path.join(path, "release.json"), "w", encoding="utf-8") as handle:
            json.dump(validate_release(manifest(version=version)), handle)
        record = state.load()
        record["releases"][name] = {"digest": "sha256:" + str(number) * 64, "version": version, "protocol": "1",
                                    "status": "good", "installed_at": "", "last_active": ""}
        state.save(record)
    monkeypatch.setattr(kind, "SETTINGS_DIR", str(tmp_path / "nspawn"))
    monkeypatch.setattr(kind, "UNIT_DIR", str(tmp_path / "system"))
    systemd = FakeSystemd(str(tmp_path / "system"))
    monkeypatch.setattr(kind, "node_systemd", lambda: systemd)
    monkeypatch.setattr(kind, "START_SETTLE", 0)
    return state, systemd


def test_two_switches_at_once_leave_the_machine_running_what_current_points_to(node, monkeypatch):
    """A rollout to 2.0 and a rollback to 1.0 of the same application on one node, run at once (two controllers,
    or a rollback started while a rollout's switch still converges). The rollback starts just as the rollout's
    switch has moved current and is about to converge its machine: whatever the order, the machine must run the
    release current points to in the end."""
    state, systemd = node
    switch_release(state, "sha256:" + "1" * 64)
    real = kinds.converge
    rollback = []

    def converge(state_, slots, check_mode=False):
        if not rollback:  # the rollout's switch has moved current to 2.0: the rollback runs now, beside it
            rollback.append(threading.Thread(target=switch_release, args=(state, "sha256:" + "1" * 64),
                                             kwargs={"reason": "rollback"}))
            rollback[0].start()
            time.sleep(1)
        return real(state_, slots, check_mode)

    monkeypatch.setattr(kinds, "converge", converge)
    switch_release(state, "sha256:" + "2" * 64)
    rollback[0].join(30)
    current = os.readlink(os.path.join(state.app_dir, "current"))
    running = systemd.units["systemd-nspawn@bss-current.service"]["dropin"]
    assert current == "releases/1.0-111111111111"
    assert f"--directory={state.release_path('1.0-111111111111')}/rootfs" in running, (
        "current points to 1.0, the machine runs 2.0: " + running.splitlines()[1])
