# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""RPM versions: compare them the way rpm does, and map a release version and a build number to them.

Standard library only: the comparison also runs on managed nodes (release_switch decides between an
upgrade and a downgrade with it).

The version scheme (``docs/rpm.md``)::

    release version   build  revision      ->  Version     Release
    1.4.0             3                        1.4.0       3
    1.4.0-rc.1        1      a1b2c3d4e5f6  ->  1.4.0~rc.1  1.ga1b2c3d4e5f6
    1.4.0rc1          2                    ->  1.4.0~rc1   2
    1.4.0.dev3        2                    ->  1.4.0~dev3  2
    1.4.0+cuda12      1                    ->  1.4.0+cuda12  1

A pre-release gets ``~``, which sorts before everything, so ``1.4.0~rc.1 < 1.4.0``; the build number leads the
release, so a later build of the same version sorts after an earlier one.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

_VERSION_CHARS = re.compile(r"^[0-9A-Za-z._+~^]+$")
_RELEASE_CHARS = re.compile(r"^[0-9A-Za-z._+~^]+$")
_PRE_WORD = r"(?:a|alpha|b|beta|c|rc|pre|preview|dev)[0-9]"
_SEMVER = re.compile(r"^(?P<base>[0-9]+(?:\.[0-9]+)*)"
                     r"(?:(?:[-~]|\.(?=" + _PRE_WORD + r")|(?=" + _PRE_WORD + r"))(?P<pre>[0-9A-Za-z.]+))?"
                     r"(?:\+(?P<local>[0-9A-Za-z.]+))?$")
_REVISION = re.compile(r"^[0-9A-Za-z]{1,64}$")


class RpmVersionError(FleetError, ValueError):
    """A version, release or EVR string rpm cannot take; the message says what to write instead."""


def rpmvercmp(a: object, b: object) -> int:
    """Compare two version (or release) strings as rpm's rpmvercmp does: -1, 0 or 1.

    Segments of ASCII digits or letters are compared in turn (numbers numerically, a number beats letters),
    anything else separates them; ``~`` sorts before everything, even the end of the string, and ``^`` after
    the end but before anything else.
    """
    a, b = str(a), str(b)
    if a == b:
        return 0
    i, j = 0, 0
    len_a, len_b = len(a), len(b)

    def skip(text, pos, length):
        while pos < length and not (_isalnum(text[pos]) or text[pos] in "~^"):
            pos += 1
        return pos

    while i < len_a or j < len_b:
        i, j = skip(a, i, len_a), skip(b, j, len_b)
        one = a[i] if i < len_a else ""
        two = b[j] if j < len_b else ""
        if one == "~" or two == "~":
            if one != "~":
                return 1
            if two != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if one == "^" or two == "^":
            if not one:
                return -1
            if not two:
                return 1
            if one != "^":
                return 1
            if two != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (one and two):
            break
        numeric = one.isdigit() and one.isascii()
        kind = _isdigit if numeric else _isalpha
        end_a, end_b = i, j
        while end_a < len_a and kind(a[end_a]):
            end_a += 1
        while end_b < len_b and kind(b[end_b]):
            end_b += 1
        seg_a, seg_b = a[i:end_a], b[j:end_b]
        if not seg_b:  # segments of different kinds: a number is newer than letters
            return 1 if numeric else -1
        if numeric:
            seg_a, seg_b = seg_a.lstrip("0"), seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        if seg_a != seg_b:
            return 1 if seg_a > seg_b else -1
        i, j = end_a, end_b
    if i >= len_a and j >= len_b:
        return 0
    return -1 if i >= len_a else 1


def _isalnum(char):
    return char.isascii() and char.isalnum()


def _isdigit(char):
    return char.isascii() and char.isdigit()


def _isalpha(char):
    return char.isascii() and char.isalpha()


def parse_evr(text: object) -> Tuple[str | None, str, str | None]:
    """``[EPOCH:]VERSION[-RELEASE]`` -> (epoch or None, version, release or None), as rpm parses it."""
    text = str(text).strip()
    epoch, sep, rest = text.partition(":")
    if not sep:
        epoch, rest = None, text
    elif not epoch.isdigit():
        raise RpmVersionError(f"{text!r}: the epoch before ':' must be a whole number")
    version, sep, release = rest.rpartition("-")
    if not sep:
        version, release = rest, None
    if not version:
        raise RpmVersionError(f"{text!r} has no version")
    return epoch, version, release


def evr_compare(a: object, b: object) -> int:
    """Compare two ``[E:]V[-R]`` strings as rpm does (``rpm.vercmp``): -1, 0 or 1.

    A missing epoch counts as 0 and a missing release as empty, so ``1.0 < 1.0-1`` as rpm.vercmp says.
    """
    ea, va, ra = parse_evr(a)
    eb, vb, rb = parse_evr(b)
    result = rpmvercmp(ea or "0", eb or "0")
    if result == 0:
        result = rpmvercmp(va, vb)
    if result == 0:
        result = rpmvercmp(ra or "", rb or "")
    return result


def check_version(value: object, field: str = "version") -> str:
    """VALUE if it is a valid RPM Version; else RpmVersionError naming FIELD and saying what to write."""
    value = str(value)
    if "-" in value:
        raise RpmVersionError(f"{field}: {value!r} contains '-', which an RPM version cannot; write a pre-release "
                              f"as {value.replace('-', '~', 1)!r} (it then sorts before the final release), or map it "
                              "with the sciops.fleet.rpm_version filter")
    if not value or not _VERSION_CHARS.match(value) or not value[0].isalnum():
        raise RpmVersionError(f"{field}: {value!r} is not a valid RPM version (start with a letter or digit; "
                              "letters, digits, '.', '_', '+', '~', '^'), e.g. 1.4.0 or 1.4.0~rc1")
    return value


def check_release(value: object, field: str = "release") -> str:
    """VALUE if it is a valid RPM Release; else RpmVersionError naming FIELD."""
    value = str(value)
    if not value or "-" in value or not _RELEASE_CHARS.match(value) or not value[0].isalnum():
        raise RpmVersionError(f"{field}: {value!r} is not a valid RPM release (letters, digits, '.', '_', '+', '~', "
                              "'^', no '-'), e.g. 1 or 3.ga1b2c3d")
    return value


def rpm_version(release_version: object, build: int | str = 1, revision: str | None = None,
                dist: str = "") -> Dict[str, str]:
    """Map a release version, a build number and a source revision to ``{version, release, evr}``.

    See the module docstring for the scheme. Raises RpmVersionError for what cannot be mapped.
    """
    text = str(release_version).strip()
    match = _SEMVER.match(text)
    if not match:
        raise RpmVersionError(f"release version {text!r} cannot be mapped to an RPM version; write it as "
                              "1.4.0, 1.4.0-rc.1, 1.4.0rc1 or 1.4.0~rc1 (optionally +local)")
    version = match.group("base")
    if match.group("pre"):
        version += "~" + match.group("pre")
    if match.group("local"):
        version += "+" + match.group("local")
    if isinstance(build, bool) or not str(build).isdigit():
        raise RpmVersionError(f"build number {build!r} must be a whole number (the CI build or pipeline number)")
    release = str(int(str(build)))
    if revision:
        revision = str(revision)
        if not _REVISION.match(revision):
            raise RpmVersionError(f"source revision {revision!r} must be letters and digits, e.g. a git commit hash")
        release += ".g" + revision[:12]
    if dist:
        release += "." + check_release(str(dist).lstrip("."), "dist")
    check_version(version)
    check_release(release)
    return {"version": version, "release": release, "evr": f"{version}-{release}"}
