# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A check-mode run on a node with the earlier layout (records still in units/, machines/) predicts what the real
run does: the real run migrates the records first and then finds nothing to do, so check mode must not report a
replacement, a restart or an error that only comes from not having looked at the old place."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._systemd import nspawn
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import Systemd


def _systemd(active="inactive"):
    def run(argv, env):
        if "is-active" in argv:
            return 0 if active == "active" else 3, active + "\n", ""
        if "is-enabled" in argv:
            return 1, "disabled\n", ""
        return 0, "", ""
    return Systemd(run)


def _machine_params(tmp_path, image):
    params = {key: spec.get("default") for key, spec in nspawn.ARGUMENT_SPEC.items()}
    params.update(name="m1", image=str(image), machines_dir=str(tmp_path / "machines_trees"),
                  settings_dir=str(tmp_path / "nspawn"), state_dir=str(tmp_path / "state" / "_machines"),
                  state="present")
    return params


@pytest.mark.parametrize("check_mode", [False, True])
def test_an_installed_machine_on_the_earlier_layout_is_left_alone_in_check_mode_as_in_a_real_run(tmp_path, monkeypatch, check_mode):
    legacy, new = tmp_path / "state" / "machines", tmp_path / "state" / "_machines"
    monkeypatch.setattr(nspawn, "MACHINES_STATE_DIR", str(new))
    monkeypatch.setattr(nspawn, "LEGACY_MACHINES_STATE_DIR", str(legacy))
    image = tmp_path / "m1.tar"
    with tarfile.open(image, "w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x=1"))
    (tmp_path / "machines_trees" / "m1" / "etc").mkdir(parents=True)  # installed by an earlier version
    legacy.mkdir(parents=True)
    (legacy / "m1.json").write_text(json.dumps({"image": str(image), "format": "tar", "digest": digest_file(str(image))[0],
                                                "identity": None, "time": 0}))
    machine = nspawn.Machine(_systemd(), lambda argv: (0, "", ""), lambda name: None,
                             _machine_params(tmp_path, image), check_mode=check_mode)
    try:
        result = machine.apply()
    except UnitError as exc:
        pytest.fail(f"check_mode={check_mode}: {exc}")
    assert not result["image_changed"] and not result["replaced"]


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_running_unit_on_the_earlier_layout_is_not_reported_restarted_in_check_mode(tmp_path, monkeypatch, check_mode):
    from ansible_collections.sciops.fleet.plugins.module_utils._systemd import service  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import unit_digest  # pylint: disable=import-outside-toplevel
    legacy, new = tmp_path / "state" / "units", tmp_path / "state" / "_units"
    monkeypatch.setattr(service, "UNITS_STATE_DIR", str(new))
    monkeypatch.setattr(service, "LEGACY_UNITS_STATE_DIR", str(legacy))
    systemd = _systemd(active="active")
    legacy.mkdir(parents=True)
    record = {"unit": unit_digest(systemd, "app.service"), "files": {}, "invocation": None, "time": 0}
    (legacy / "app.service.json").write_text(json.dumps(record))
    params = {key: spec.get("default") for key, spec in service.ARGUMENT_SPEC.items()}
    params.update(name="app.service", state="started", state_dir=str(new), unit_dir=str(tmp_path / "system"),
                  security_report=False)
    # The real run (check_mode False) is not asked to restart either: start_and_check would be called.
    monkeypatch.setattr(service, "start_and_check", lambda *a, **k: pytest.fail("restarted"))
    result = service.ServiceUnit(systemd, params, check_mode=check_mode).run()
    assert result["restarted"] == [] and result["restart_reasons"] == {}
