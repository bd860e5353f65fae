# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two runs on one node migrate the same old records at once (two service_unit tasks of two plays): the one that
finds a record already moved by the other goes on, and never fails with a traceback."""

from __future__ import annotations

import json
import os

from ansible_collections.sciops.fleet.plugins.module_utils._common.node_layout import migrate_state_files
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import is_restart_record


def test_a_record_moved_by_another_run_meanwhile_is_not_an_error(tmp_path):
    legacy, new = tmp_path / "units", tmp_path / "_units"
    legacy.mkdir()
    (legacy / "app.service.json").write_text(json.dumps({"unit": "sha256:1", "files": {}}))

    def other_run_moves_it_first(name, data):
        # What a second process does between this run's read and its move.
        os.makedirs(new, exist_ok=True)
        if (legacy / name).exists():
            os.replace(legacy / name, new / name)
        return is_restart_record(name, data)

    migrate_state_files(str(legacy), str(new), other_run_moves_it_first)
    assert json.loads((new / "app.service.json").read_text())["unit"] == "sha256:1"
