# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The programs of the build host a build runs: running one, finding one, asking its version."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Mapping, Sequence

from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError


def run_tool(argv: Sequence[str], step: str, env: Mapping[str, str] | None = None) -> str:
    """Run ARGV; return its output, or raise EnvBuildError naming STEP with the tail of its output."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    except OSError as exc:
        raise EnvBuildError(f"{step}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise EnvBuildError(f"{step}: {os.path.basename(argv[0])} exited {proc.returncode}: {tail}")
    return proc.stdout


def tool_version(command: str, args: Sequence[str] = ("--version",)) -> str | None:
    """The first line a tool prints about its version, or None when it is not installed."""
    path = shutil.which(command)
    if not path:
        return None
    proc = subprocess.run([path, *args], capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def require_tool(command: str, why: str, package: str) -> str:
    """The path of COMMAND, or an error saying WHY it is needed and which Debian PACKAGE has it."""
    path = shutil.which(command)
    if not path:
        raise EnvBuildError(f"{command} is not on this build host's PATH and {why}; install it "
                            f"(Debian package {package}; tools/install-system-deps.sh does)")
    return path
