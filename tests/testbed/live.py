# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live-testbed records under ``<cache>/live/``, so that a killed run can be cleaned up later."""

from __future__ import annotations

import contextlib
import os
import uuid

from .common import _write_json_atomic, cache_dir


def _live_dir() -> str:
    path = os.path.join(cache_dir(), "live")
    os.makedirs(path, exist_ok=True)
    return path


def _register_live(kind: str, state_dir: str, owner: int | None) -> str:
    record = os.path.join(_live_dir(), f"{kind}-{uuid.uuid4().hex[:12]}.json")
    _write_json_atomic(record, {"kind": kind, "state_dir": os.path.abspath(state_dir), "owner": owner})
    return record


def _unregister_live(record: str | None) -> None:
    if record:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record)
