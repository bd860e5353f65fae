# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""RPM packages on a node, through the rpm tool: read a package file's header, ask what is installed, install,
upgrade or downgrade in one transaction, erase. Standard library only: this runs on managed nodes."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, Iterable, List, Optional, Sequence

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

_RPM_QF = "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"
RPM_TIMEOUT = 600  # seconds one rpm transaction may take


class RpmError(FleetError):
    """The rpm tool is missing, could not read a package, or a transaction failed: the message has rpm's words."""


def _rpm(argv: Sequence[str], what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["rpm", *argv], capture_output=True, text=True, check=False, timeout=RPM_TIMEOUT)
    except FileNotFoundError:
        raise RpmError(f"{what}: the rpm tool is not installed on this node; install the rpm package") from None
    except subprocess.TimeoutExpired:
        raise RpmError(f"{what}: rpm did not finish within {RPM_TIMEOUT} s") from None


def display_evr(evr: str) -> str:
    """``0:1.0-1`` -> ``1.0-1``: the epoch only when there is one."""
    return evr[2:] if evr.startswith("0:") else evr


def read_header(path: str) -> Dict[str, str]:
    """Name, EVR and arch of the RPM file at PATH (read with rpm -qp), and PATH."""
    result = _rpm(["-qp", "--nosignature", "--qf", _RPM_QF, path], f"reading {os.path.basename(path)}")
    if result.returncode != 0 or not result.stdout.strip():
        raise RpmError(f"{os.path.basename(path)} is not a readable RPM: {(result.stderr or result.stdout).strip()}")
    name, evr, arch = result.stdout.strip().splitlines()[-1].split("\t")
    return {"name": name, "evr": display_evr(evr), "arch": arch, "path": path}


def installed_versions(names: Iterable[str]) -> Dict[str, Optional[str]]:
    """``{name: EVR or None}``: what this node's rpm database has of the packages NAMES, in one rpm query."""
    found: Dict[str, Optional[str]] = dict.fromkeys(names)
    if not found:
        return found
    # rpm -q answers for every name, and exits non-zero when one of them is not installed.
    result = _rpm(["-q", "--qf", _RPM_QF, *found], "asking rpm for the installed packages")
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] in found:
            found[fields[0]] = display_evr(fields[1])
    return found


def _tail(result: subprocess.CompletedProcess) -> str:
    return " | ".join((result.stderr + result.stdout).strip().splitlines()[-8:])


def upgrade(files: List[str], labels: List[str], oldpackage: bool, nodeps: bool) -> None:
    """Install FILES in one ``rpm -U`` transaction (``--oldpackage`` to allow a downgrade). LABELS name them."""
    argv = ["-U", "--quiet"] + (["--oldpackage"] if oldpackage else []) + (["--nodeps"] if nodeps else [])
    result = _rpm(argv + files, "installing RPM packages")
    if result.returncode != 0:
        detail = _tail(result)
        hint = "; on a node whose rpm database does not list the system's own packages (Debian) set rpm_nodeps" \
            if "Failed dependencies" in detail or "is needed by" in detail else ""
        raise RpmError(f"rpm -U of {', '.join(labels)} failed (exit {result.returncode}): {detail}{hint}")


def erase(names: List[str], nodeps: bool, why: str, consequence: str) -> None:
    """Erase the packages NAMES (``rpm -e``); on failure the error says WHY they were erased, and CONSEQUENCE."""
    result = _rpm(["-e", "--quiet"] + (["--nodeps"] if nodeps else []) + names, "erasing RPM packages")
    if result.returncode != 0:
        raise RpmError(f"rpm -e of {', '.join(names)} ({why}) failed (exit {result.returncode}): {_tail(result)}; {consequence}")
