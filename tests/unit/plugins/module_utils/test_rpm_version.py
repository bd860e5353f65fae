# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The RPM version comparison agrees with rpm itself on a table; the version scheme maps release versions."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._rpm.version import (
    RpmVersionError,
    check_version,
    evr_compare,
    rpm_version,
    rpmvercmp,
)

# (left, right, expected): -1 when left sorts first.
TABLE = [
    ("1.0~rc1", "1.0", -1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc2", "1.0~rc10", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0~rc1", "1.0~rc1", 0),
    ("1.0", "1.0.0", -1),
    ("1.0", "1.0a", -1),
    ("1.0a", "1.0.1", -1),
    ("1.0a", "1.0b", -1),
    ("2.0", "10.0", -1),
    ("1.010", "1.9", 1),
    ("1.01", "1.1", 0),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.0.1", -1),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^", "1.0", 1),
    ("1_0", "1.0", 0),
    ("a", "1", -1),
    ("1:1.0", "2.0", 1),
    ("0:1.0", "1.0", 0),
    ("1:1.0-1", "1:1.0-2", -1),
    ("2024.1-1", "2024.1-1.el9", -1),
    ("1.0-1", "1.0", 1),
    ("1.0", "1.0-1", -1),
    ("1.4.0~rc.1-3", "1.4.0-1", -1),
    ("1.4.0-10", "1.4.0-9", 1),
    ("1.4.0-3.gabc", "1.4.0-3.gabd", -1),
    ("1.4.0+cuda12", "1.4.0", 1),
    ("6.0.rc1", "6.0", 1),
]


@pytest.mark.parametrize("left,right,expected", TABLE)
def test_evr_compare_follows_the_table(left, right, expected):
    assert evr_compare(left, right) == expected
    assert evr_compare(right, left) == -expected


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm is not installed (tools/install-system-deps.sh)")
def test_rpm_itself_agrees_with_the_table():
    """rpm's own comparison (rpm.vercmp in its embedded Lua), on every row, in one call."""
    calls = "".join(f'print(rpm.vercmp("{a}", "{b}")); print(" ")' for a, b, _expected in TABLE)
    out = subprocess.run(["rpm", "--eval", f"%{{lua:{calls}}}"], capture_output=True, text=True, check=True).stdout
    assert [int(v) for v in out.split()] == [expected for _a, _b, expected in TABLE]


def test_plain_segments_compare_like_rpmvercmp():
    assert rpmvercmp("1.0", "1.0") == 0
    assert rpmvercmp("", "1") == -1
    assert rpmvercmp("é1", "1") == 0  # non-ASCII is a separator, as in rpm


@pytest.mark.parametrize("release_version,build,revision,version,release", [
    ("1.4.0", 3, None, "1.4.0", "3"),
    ("1.4.0-rc.1", 7, "a1b2c3d4e5f67890", "1.4.0~rc.1", "7.ga1b2c3d4e5f6"),
    ("1.4.0rc1", 1, None, "1.4.0~rc1", "1"),
    ("1.4.0.dev3", 1, None, "1.4.0~dev3", "1"),
    ("1.4.0~beta2", 2, None, "1.4.0~beta2", "2"),
    ("1.4.0+cuda12", 1, None, "1.4.0+cuda12", "1"),
])
def test_version_scheme(release_version, build, revision, version, release):
    mapped = rpm_version(release_version, build, revision)
    assert (mapped["version"], mapped["release"]) == (version, release)


def test_the_scheme_orders_pre_releases_and_builds():
    rc = rpm_version("1.4.0-rc.1", 9)["evr"]
    final = rpm_version("1.4.0", 1)["evr"]
    rebuilt = rpm_version("1.4.0", 2)["evr"]
    assert evr_compare(rc, final) == -1 and evr_compare(final, rebuilt) == -1


@pytest.mark.parametrize("bad,message", [
    ("1.4.0-beta-2", "cannot be mapped"),
    ("v1.4", "cannot be mapped"),
])
def test_unmappable_versions_say_what_to_write(bad, message):
    with pytest.raises(RpmVersionError, match=message):
        rpm_version(bad)
    with pytest.raises(RpmVersionError, match="build number"):
        rpm_version("1.0", build="x")


def test_check_version_names_the_field():
    with pytest.raises(RpmVersionError, match=r"spec.version: '1.0-rc1' contains '-'.*'1.0~rc1'"):
        check_version("1.0-rc1", "spec.version")
    assert check_version("1.0~rc1") == "1.0~rc1"
