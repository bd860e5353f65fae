# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rpm_vercmp and rpm_version filters, through a real Jinja environment of Ansible."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.sciops.fleet.plugins.filter.rpm import FilterModule


def test_filters_compare_and_map():
    filters = FilterModule().filters()
    assert filters["rpm_vercmp"]("1.0~rc1", "1.0") == -1
    assert filters["rpm_vercmp"]("1:0.9", "2.0") == 1
    assert filters["rpm_version"]("2.1.0-rc.2", build=5, revision="deadbeefcafe0001") == {
        "version": "2.1.0~rc.2", "release": "5.gdeadbeefcafe", "evr": "2.1.0~rc.2-5.gdeadbeefcafe"}


def test_filter_errors_are_filter_errors():
    filters = FilterModule().filters()
    with pytest.raises(AnsibleFilterError, match="rpm_vercmp: 'x:1.0'"):
        filters["rpm_vercmp"]("x:1.0", "1.0")
    with pytest.raises(AnsibleFilterError, match="rpm_version"):
        filters["rpm_version"]("latest")
