# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How long the test fleet takes to come up: a cold node root (debootstrap) against the cached one.

    .venv/bin/python bench/fleet_boot.py [--cold] [--nodes 4 16]

--cold builds a node root from scratch in a temporary cache (the baseline: what every run would cost
without the cache) and removes it afterwards. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import testbed  # noqa: E402  pylint: disable=wrong-import-position


def timed(func) -> float:
    started = time.monotonic()
    func()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="also build a root from scratch (about 90 s)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    rows = []
    if args.cold:
        scratch = tempfile.mkdtemp(prefix="sciops-bench-cache-")
        saved = os.environ.get("SCIOPS_FLEET_CACHE")
        os.environ["SCIOPS_FLEET_CACHE"] = scratch
        try:
            cold = timed(testbed.node_root)
        finally:
            if saved is None:
                del os.environ["SCIOPS_FLEET_CACHE"]
            else:
                os.environ["SCIOPS_FLEET_CACHE"] = saved
            shutil.rmtree(scratch, ignore_errors=True)
        rows.append(("node root, cold (debootstrap)", cold))
    testbed.node_root()  # make sure the cached root exists before timing its reuse
    warm = timed(testbed.node_root)
    rows.append(("node root, cached", warm))
    for count in args.nodes:
        state = tempfile.mkdtemp(prefix="sciops-bench-fleet-")
        fleet = testbed.Fleet(state, nodes=count, net="127.0.3")
        try:
            up = timed(lambda f=fleet: f.up(owner=os.getpid()))
        finally:
            down = timed(fleet.down)
            shutil.rmtree(state, ignore_errors=True)
        rows.append((f"fleet of {count} up (booted, sshd answering, systemd running)", up))
        rows.append((f"fleet of {count} down (stopped, unmounted, removed)", down))
    print("| step | seconds |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")
    if args.cold:
        print(f"\ncold root / cached root + fleet of {args.nodes[0]} up: "
              f"{rows[0][1] / (rows[1][1] + rows[2][1]):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
