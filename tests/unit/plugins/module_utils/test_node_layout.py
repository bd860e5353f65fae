# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's own state on a node moves out of the way of applications: restart and machine records kept
where an application named ``units`` or ``machines`` has its directory are moved, the application's files stay."""

from __future__ import annotations

import json

from ansible_collections.sciops.fleet.plugins.module_utils._common.node_layout import migrate_state_files
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import NAME_RE
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.nspawn import is_machine_record
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import is_restart_record


def test_no_application_name_reaches_the_collections_own_names():
    for own in ("_units", "_machines"):
        assert not NAME_RE.match(own)


def test_restart_records_move_and_an_application_sharing_the_old_directory_keeps_everything(tmp_path):
    legacy, new = tmp_path / "units", tmp_path / "_units"
    (legacy / "releases" / "1.0-abc").mkdir(parents=True)
    (legacy / "releases" / "1.0-abc" / "data.json").write_text('{"unit": "x", "files": {}}')
    (legacy / "app@current.service.json").write_text(json.dumps({"unit": "sha256:1", "files": {"/etc/a": "sha256:2"}}))
    (legacy / "config.json").write_text(json.dumps({"unit": "not a unit name", "files": {}}))  # the application's
    (legacy / "broken@x.service.json").write_text("{")
    (new).mkdir()
    (new / "kept.service.json").write_text(json.dumps({"unit": "new", "files": {}}))
    (legacy / "kept.service.json").write_text(json.dumps({"unit": "old", "files": {}}))

    moved = migrate_state_files(str(legacy), str(new), is_restart_record)

    assert moved == ["app@current.service.json", "kept.service.json"]
    assert json.loads((new / "app@current.service.json").read_text())["files"] == {"/etc/a": "sha256:2"}
    assert json.loads((new / "kept.service.json").read_text())["unit"] == "new"  # what is there already wins
    assert (legacy / "config.json").exists() and (legacy / "broken@x.service.json").exists()
    assert (legacy / "releases" / "1.0-abc" / "data.json").exists()  # only the top level is ours to look at
    assert not (legacy / "app@current.service.json").exists()


def test_an_old_directory_holding_only_records_is_removed_and_a_second_run_does_nothing(tmp_path):
    legacy, new = tmp_path / "machines", tmp_path / "_machines"
    legacy.mkdir()
    (legacy / "m1.json").write_text(json.dumps({"image": "/x.tar", "format": "tar", "digest": "sha256:1"}))
    assert migrate_state_files(str(legacy), str(new), is_machine_record) == ["m1.json"]
    assert not legacy.exists() and (new / "m1.json").exists()
    assert migrate_state_files(str(legacy), str(new), is_machine_record) == []
