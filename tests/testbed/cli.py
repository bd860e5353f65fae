# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The command line (``python3 tests/testbed --help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import TestbedError
from .fleet import Fleet
from .noderoot import node_root
from .registry import Registry
from .teardown import sweep

DESCRIPTION = "Real test infrastructure for sciops.fleet: an OCI registry and a fleet of systemd nodes."


def _parse_auth(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    if ":" not in value:
        raise TestbedError("--auth takes USER:PASSWORD")
    user, password = value.split(":", 1)
    return user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("root", help="build or reuse the cached node root and print its path")
    sweep_p = sub.add_parser("sweep", help="tear down testbeds whose owning process is gone")
    sweep_p.add_argument("--all", action="store_true", help="also those started from this command")

    fleet_p = sub.add_parser("fleet", help="the systemd test fleet")
    fleet_p.add_argument("action", choices=["up", "down", "stop", "start", "restart", "freeze", "thaw"])
    fleet_p.add_argument("--node", help="node name for stop/start/restart/freeze/thaw")
    fleet_p.add_argument("--state", required=True, help="directory for the fleet's state and overlays")
    fleet_p.add_argument("--nodes", type=int, default=4)
    fleet_p.add_argument("--net", default="127.0.1", help="first three octets of the node addresses")

    reg_p = sub.add_parser("registry", help="the OCI registry")
    reg_p.add_argument("action", choices=["up", "down"])
    reg_p.add_argument("--state", required=True)
    reg_p.add_argument("--auth", help="USER:PASSWORD for htpasswd basic auth")

    args = parser.parse_args(argv)
    try:
        if args.what == "root":
            print(node_root())
        elif args.what == "sweep":
            print(f"swept {sweep(everything=args.all)} testbed(s)")
        elif args.what == "registry":
            if args.action == "up":
                user, password = _parse_auth(args.auth)
                os.makedirs(args.state, exist_ok=True)
                reg = Registry(args.state, user, password).up()
                print(json.dumps({"url": reg.url, "host": reg.host, "pid": reg.pid}))
            else:
                Registry.attach(args.state).down()
        else:
            if args.action == "up":
                fleet = Fleet(args.state, args.nodes, args.net).up()
                print(fleet.inventory_path)
            elif args.action == "down":
                Fleet.attach(args.state).down()
            else:
                fleet = Fleet.attach(args.state)
                if args.node not in fleet.nodes:
                    raise TestbedError(f"no node {args.node!r} in the fleet at {args.state}; "
                                       f"nodes: {', '.join(fleet.names) or 'none'}")
                getattr(fleet, args.action)(args.node)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0
