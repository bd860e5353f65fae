# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for RPM versions: compare them as rpm does, and map release versions to them (docs in the .yml files)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.sciops.fleet.plugins.module_utils._rpm.version import RpmVersionError, evr_compare, rpm_version


def rpm_vercmp(left, right):
    """-1, 0 or 1 as ``[E:]V[-R]`` LEFT sorts before, with or after RIGHT in rpm's order."""
    try:
        return evr_compare(left, right)
    except RpmVersionError as exc:
        raise AnsibleFilterError(f"rpm_vercmp: {exc}") from None


def rpm_version_filter(release_version, build=1, revision=None, dist=""):
    """``{version, release, evr}`` for a release version, a build number and a source revision."""
    try:
        return rpm_version(release_version, build, revision, dist)
    except RpmVersionError as exc:
        raise AnsibleFilterError(f"rpm_version: {exc}") from None


class FilterModule:
    """RPM version filters."""

    def filters(self):
        return {"rpm_vercmp": rpm_vercmp, "rpm_version": rpm_version_filter}
