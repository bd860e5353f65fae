# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Python interpreter for tests of faults on a node: runs a script (or, with Ansible's pipelining, the code on its
standard input) after installing the faults named in /run/sciops-fault:

    count            append one line per rename/symlink under the node's release state to /run/sciops-fault.log
    kill N           SIGKILL the process at the first audit event after the N-th such operation completed
    clock SECONDS    shift the wall clock (time.time, time.gmtime, time.localtime) by SECONDS

Installed by the tests only (tests/integration/test_release_crash.py), never by the product."""

import os
import runpy
import signal
import sys
import time

WATCHED = ("/var/lib/sciops-fleet/", "/etc/ansible/facts.d/", "/var/cache/sciops-fleet/")
COUNTED = ("os.rename", "os.symlink")  # os.replace raises os.rename too

try:
    with open("/run/sciops-fault", encoding="utf-8") as handle:
        MODE, _SEP, VALUE = handle.read().strip().partition(" ")
except OSError:
    MODE, VALUE = "off", ""

state = {"count": 0, "armed": False}
if MODE in ("count", "kill"):
    log = os.open("/run/sciops-fault.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    limit = int(VALUE or 0)

    def hook(event, args):
        if state["armed"]:
            state["armed"] = False
            os.write(log, f"killed after {state['count']}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
        if event in COUNTED and any(str(a).startswith(WATCHED) for a in args[:2]):
            state["count"] += 1
            if MODE == "count":
                os.write(log, f"{state['count']} {event} {args[0]} {args[1]}\n".encode())
            elif state["count"] == limit:
                state["armed"] = True

    sys.addaudithook(hook)
elif MODE == "clock":
    shift = float(VALUE)
    real_time, real_gmtime, real_localtime = time.time, time.gmtime, time.localtime
    time.time = lambda: real_time() + shift
    time.gmtime = lambda secs=None: real_gmtime(time.time() if secs is None else secs)
    time.localtime = lambda secs=None: real_localtime(time.time() if secs is None else secs)

if len(sys.argv) > 1:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:  # Ansible with pipelining sends the module on standard input
    code = sys.stdin.read()
    sys.argv = [""]
    exec(compile(code, "<stdin>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 pylint: disable=exec-used
