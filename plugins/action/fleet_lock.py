# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of sciops.fleet.fleet_lock: the lock lives on the controller, so the work is done here."""

from __future__ import annotations

import os
import time

from ansible.plugins.action import ActionBase

from ansible_collections.sciops.fleet.plugins.module_utils._release.fleet_lock import FleetLock, LockError, describe, process_holder

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["acquired", "released"], "default": "acquired"},
    "purpose": {"type": "str", "default": ""},
    "lock_dir": {"type": "path"},
    "wait": {"type": "int", "default": 0},
    "force": {"type": "bool", "default": False},
}


class ActionModule(ActionBase):
    """Take or give up the lock of an application for this ansible-playbook run."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        # The worker's parent is the ansible-playbook process: it lives as long as the run does.
        me = process_holder(os.getppid(), args["purpose"])
        lock = FleetLock(args["name"], args["lock_dir"])
        result.update(lock_file=lock.path, holder=None, taken_over=None, waited=0.0)
        started = time.monotonic()
        try:
            if args["state"] == "acquired":
                changed, stale = lock.acquire(me, wait=args["wait"], check_mode=self._play_context.check_mode)
                result.update(changed=changed, holder=me, taken_over=stale)
                if stale:
                    result["msg"] = f"took over the lock of {args['name']} left by {describe(stale)}, which is gone"
                    self._display.warning(result["msg"])
            else:
                changed, had = lock.release(me, force=args["force"])
                result.update(changed=changed, holder=had)
        except LockError as exc:
            waited = f" (waited {time.monotonic() - started:.0f} s)" if args["wait"] > 0 else ""
            result.update(failed=True, holder=exc.holder, msg=f"{exc}{waited}")
        result["waited"] = round(time.monotonic() - started, 1)
        return result
