# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The venv backend: a Python virtual environment built with pip, naming the mount point, not the build path."""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._env.tools import run_tool


def _rewrite_text(path: str, old: str, new: str) -> bool:
    """Replace OLD by NEW in the text file PATH; True when it changed."""
    with open(path, "rb") as handle:
        data = handle.read()
    if old.encode() not in data or b"\0" in data[:8192]:
        return False
    with open(path, "wb") as handle:
        handle.write(data.replace(old.encode(), new.encode()))
    return True


def _fix_records(root: str) -> None:
    """Make every installed distribution's RECORD match the files as they are now (rewritten scripts, removed
    bytecode and direct_url.json), so that the RECORD is the same whatever the build directory was."""
    for base, _dirs, names in os.walk(root):
        if "RECORD" not in names or not base.endswith(".dist-info") or os.path.islink(base):
            continue
        record = os.path.join(base, "RECORD")
        site = os.path.dirname(base)
        with open(record, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        kept = []
        for row in rows:
            if not row:
                continue
            path = os.path.normpath(os.path.join(site, row[0]))
            if not os.path.lexists(path):
                continue
            if len(row) >= 3 and row[1] and os.path.isfile(path) and not os.path.islink(path):
                digest, size = digest_file(path)
                encoded = base64.urlsafe_b64encode(bytes.fromhex(digest.split(":", 1)[1])).rstrip(b"=").decode()
                row = [row[0], f"sha256={encoded}", str(size)]
            kept.append(row)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept)
        with open(record, "w", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())


def build_venv(recipe: Dict[str, Any], root: str, epoch: int) -> Dict[str, Any]:
    """A virtual environment in ROOT whose scripts and settings name the mount point, not ROOT."""
    venv = recipe["venv"]
    python = venv["python"]
    if not os.access(python, os.X_OK):
        raise EnvBuildError(f"venv.python {python} is not an executable on this build host; install it or name another")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PYTHONDONTWRITEBYTECODE="1", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    run_tool([python, "-m", "venv", root], f"venv: creating the environment with {python}", env=env)
    args = [os.path.join(root, "bin", "python"), "-m", "pip", "install", "--no-compile", "--no-warn-script-location"]
    args += venv["pip_args"] + venv["requirements"] + venv["_files"]
    if venv.get("_requirements_file"):
        args += ["-r", venv["_requirements_file"]]
    run_tool(args, "venv: pip install", env=env)
    # The build path must not stay in the image: scripts, activate files and pyvenv.cfg name the mount point.
    mount = recipe["mount"]
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = os.path.join(base, name)
            if os.path.islink(path):
                continue
            if name == "direct_url.json":  # names the wheel's path on the build host
                os.unlink(path)
                continue
            if base == os.path.join(root, "bin") or name == "pyvenv.cfg":
                _rewrite_text(path, root, mount)
    for base, dirs, _names in os.walk(root, topdown=False):
        for name in dirs:
            if name == "__pycache__":
                shutil.rmtree(os.path.join(base, name))
    _fix_records(root)
    pip_version = run_tool([os.path.join(root, "bin", "python"), "-m", "pip", "--version"], "venv: pip --version", env=env)
    python_version = run_tool([python, "--version"], "venv: python --version", env=env)
    return {"tools": {"python": python_version.strip(), "pip": pip_version.split(" from ")[0].strip()}}
