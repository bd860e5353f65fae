# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two application names that differ only in '.', '-' and '_' share one record file: neither may take the other's
record, also when that record is damaged (it is rebuilt from its own application's release directories only)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState


def test_a_damaged_record_of_one_application_is_not_rebuilt_as_the_record_of_a_name_sharing_it(tmp_path):
    owner = AppState("a-b", str(tmp_path / "state"), str(tmp_path / "facts"))
    os.makedirs(owner.release_path("1.0-aaaaaaaaaaaa"))
    os.makedirs(owner.facts_dir)
    with open(owner.fact_path, "w", encoding="utf-8") as handle:
        handle.write('{"application": "a-b", "releases": {')  # damaged by a full disk, say
    other = AppState("a_b", str(tmp_path / "state"), str(tmp_path / "facts"))
    assert other.fact_path == owner.fact_path
    with pytest.raises(NodeError, match="belongs to application a-b|share"):
        reconcile(other)


@pytest.mark.parametrize("app", ["_units", "_machines", "..", "../escaped", "units/../_units"])
def test_a_name_no_release_may_have_reaches_no_directory(tmp_path, app):
    # release_switch, release_health, release_status and release_preflight take the application as a plain string.
    with pytest.raises(NodeError):
        reconcile(AppState(app, str(tmp_path / "state"), str(tmp_path / "facts")))
    assert not (tmp_path / "state" / "_units").exists() and not (tmp_path / "escaped").exists()
