# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tear down the testbeds that a killed test run left behind, found by their live records."""

from __future__ import annotations

import os

from .common import _log, _pid_alive, _read_json
from .fleet import Fleet
from .live import _live_dir, _unregister_live
from .registry import Registry


def sweep(everything: bool = False) -> int:
    """Tear down testbeds whose owning process is gone (all of them with EVERYTHING). Returns a count."""
    count = 0
    for name in sorted(os.listdir(_live_dir())):
        record = os.path.join(_live_dir(), name)
        data = _read_json(record)
        owner = data.get("owner")
        if not everything and (owner is None or _pid_alive(owner)):
            continue
        _log(f"sweeping {data.get('kind')} at {data.get('state_dir')} (owner {owner})")
        if data.get("kind") == "fleet":
            Fleet.attach(data["state_dir"]).down()
        elif data.get("kind") == "registry":
            Registry.attach(data["state_dir"]).down()
        _unregister_live(record)
        count += 1
    return count
