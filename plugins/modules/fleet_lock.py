#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_lock
short_description: Hold the lock of an application on the controller, so that one run at a time changes it
version_added: 0.2.0
description:
  - Takes (O(state=acquired)) or gives up (O(state=released)) the lock of an application for the running
    C(ansible-playbook) process. The rollout holds it across all its batches; every run that changes an application
    (a rollout, a rollback, the scheduled enforcement) takes the same lock, named after the application.
  - The lock is a file C(<lock_dir>/<name>.lock) on the controller naming its holder - what the run does, the
    controller, the user, the C(ansible-playbook) process id and its start time, and when it took the lock.
  - A lock held by another live run makes the task fail at once, or after waiting up to O(wait) seconds, with a
    message naming the holder.
  - A lock left on this controller by a run whose process is gone (killed, crashed, or the machine rebooted) is stale;
    it is taken over with a warning that names the run that left it. A holder on another controller cannot be checked;
    when such a run is gone for good, give the lock up with O(force=true).
  - Runs on the controller (an action plugin); the task needs no connection to a node.
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Says whether the lock could be taken, naming the holder when it could not, but does not take it.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Taking a lock this run already holds, or giving up a lock nobody holds, changes nothing.
options:
  name:
    description: What is locked, the application.
    type: str
    required: true
  state:
    description: Take the lock, or give it up.
    type: str
    choices: [acquired, released]
    default: acquired
  purpose:
    description: What the run does, for the message another run gets (for example C(rollout of REGISTRY/qserv@sha256:...)).
    type: str
    default: ""
  lock_dir:
    description:
      - The directory of the locks. Every controller and every operator that may change the same application must
        use the same directory (a shared file system where runs start from more than one controller or from AWX
        execution environments); a lock in another directory does not exclude anything.
      - Default the environment variable E(SCIOPS_FLEET_LOCK_DIR), else C(/var/tmp/sciops-fleet/locks), created
        writable by every user of the controller (as C(/tmp) is).
    type: path
  wait:
    description: Seconds to wait for a lock another live run holds; 0 fails at once.
    type: int
    default: 0
  force:
    description: Give up the lock even when another run holds it. Only for a run that is gone on another controller.
    type: bool
    default: false
seealso:
  - module: sciops.fleet.release_switch
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: One rollout of qserv at a time
  sciops.fleet.fleet_lock:
    name: qserv
    purpose: "rollout of {{ release }}"
    wait: 60
  run_once: true

- name: Give the lock up at the end of the run
  sciops.fleet.fleet_lock:
    name: qserv
    state: released
  run_once: true
"""

RETURN = r"""
holder:
  description:
    - With O(state=acquired), this run (purpose, controller, user, pid, pid_start_ticks, boot_id, started,
      acquired); when the lock is held by another run, that run. With O(state=released), the holder it had, or null.
  returned: always
  type: dict
  sample: {purpose: "rollout of registry.example.org/releases/qserv@sha256:6c3c...", controller: ctl1, user: ops,
           pid: 41235, pid_start_ticks: 9183342, boot_id: 0b4e..., started: "2026-12-02T13:54:50Z",
           acquired: "2026-12-02T13:54:52Z"}
taken_over:
  description: The stale holder whose lock was taken over, or null.
  returned: always
  type: dict
  sample: null
lock_file:
  description: The lock file.
  returned: always
  type: str
  sample: /var/tmp/sciops-fleet/locks/qserv.lock
waited:
  description: Seconds spent waiting for the lock.
  returned: always
  type: float
  sample: 0.0
"""
