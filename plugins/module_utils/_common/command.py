# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Running a program outside an AnsibleModule (node-side library code): in the C locale, bounded in time."""

from __future__ import annotations

import os
import subprocess
from typing import Mapping, Sequence, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import CommandError


def run_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                timeout: float | None = None) -> Tuple[int, str, str]:
    """``(rc, stdout, stderr)`` of ARGV in the C locale; CommandError when it cannot be started or runs too long."""
    merged = dict(os.environ, LC_ALL="C")
    merged.update(env or {})
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, env=merged, timeout=timeout)
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}", command=list(argv)) from None
    except subprocess.TimeoutExpired:
        raise CommandError(f"{argv[0]} did not finish within {timeout:g} s", command=list(argv)) from None
    return proc.returncode, proc.stdout, proc.stderr


def check_output(argv: Sequence[str], what: str, timeout: float | None = None) -> str:
    """The output of ARGV; CommandError naming WHAT with the program's own words when it fails."""
    try:
        rc, out, err = run_command(argv, timeout=timeout)
    except CommandError as exc:
        raise CommandError(f"{what}: {exc}", command=list(argv)) from None
    if rc != 0:
        raise CommandError(f"{what} failed (exit {rc}): {(err or out).strip()}", command=list(argv))
    return out
