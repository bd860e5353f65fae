#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_health
short_description: Run a release's health checks on a node and record the verdict
version_added: 0.1.0
description:
  - Runs the health checks of the release a slot points to; a command, a TCP connection or an
    HTTP request, each with its timeout and retries, as declared in the release manifest. C(${address}) in a check is
    replaced with O(address), C(${current_dir}) with the application's C(current) link.
  - Records the verdict in the node's record; the release is C(good) or C(failed). A failed release does not count as
    a good release for pruning, and the rollout reverts a node whose new release failed.
  - Answers in RV(healthy); the module fails only when it cannot run the checks, so that the caller decides what an
    unhealthy node means (the rollout reverts it).
  - Runs on managed nodes with the Python standard library only.
extends_documentation_fragment:
  - sciops.fleet.release_node
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Runs the checks (they only read) but records nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: The record changes only when the verdict does.
options:
  application:
    description: The application.
    type: str
    required: true
  slot:
    description: Check the release this slot points to.
    type: str
    choices: [current, oldstable]
    default: current
  release:
    description:
      - The release the caller means to check, by id (C(sha256:...)) or by a reference pinned by digest.
      - When given, the module fails, naming both releases, unless O(slot) points to this release, so that a check
        never passes for a release another run switched to meanwhile. The rollout always names it.
    type: str
  address:
    description: The node's service address, for C(${address}) in the checks.
    type: str
    default: 127.0.0.1
  record:
    description: Record the verdict in the node's record.
    type: bool
    default: true
seealso:
  - module: sciops.fleet.release_switch
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Check the new release where it serves
  sciops.fleet.release_health:
    application: qserv
    release: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    address: "{{ ansible_host }}"
  register: health

- name: Say what failed
  ansible.builtin.debug:
    msg: "{{ health.checks | rejectattr('ok') | map(attribute='detail') | list }}"
  when: not health.healthy
"""

RETURN = r"""
healthy:
  description: Whether every check passed.
  returned: success
  type: bool
  sample: true
release_id:
  description: The release that was checked.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
checks:
  description: Each check with its name, outcome, detail and attempts.
  returned: success
  type: list
  elements: dict
  sample: [{name: "tcp 127.0.1.3:7000", ok: true, detail: "connected to 127.0.1.3:7000", attempts: 1}]
record_rebuilt:
  description:
    - When recording found the record damaged or missing and rebuilt it from the release directories, where the
      damaged file was kept; else null.
  returned: success
  type: str
  sample: /etc/ansible/facts.d/sciops_fleet_qserv.fact.damaged-20260102T030405Z
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import RELEASE_FILE
from ansible_collections.sciops.fleet.plugins.module_utils._release.module import node_argument_spec, release_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release.health import record_health, run_health_checks
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState


def main():
    module = AnsibleModule(
        argument_spec=node_argument_spec(
            application={"type": "str", "required": True},
            slot={"type": "str", "choices": ["current", "oldstable"], "default": "current"},
            release={"type": "str"},
            address={"type": "str", "default": "127.0.0.1"},
            record={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        state = AppState(params["application"], params["state_root"], params["facts_dir"])
        # A damaged or missing record is rebuilt only when this run records a verdict; else it is read as it is.
        record, repairs = reconcile(state, check_mode=module.check_mode or not params["record"])
        name = state.slot_target(params["slot"])
        digest = (record["releases"].get(name) or {}).get("digest")
        if params["release"]:
            wanted = release_digest(params["release"])
            if digest != wanted:
                raise NodeError(f"{params['slot']} of {params['application']} on this node is {name or 'not set'}"
                                f"{f' ({digest})' if digest else ''}, not the release to check ({wanted}): another run"
                                " may have switched it; check which run changes this application")
        if not name or not state.is_installed(name):
            raise NodeError(f"{params['application']} has no installed release in {params['slot']} on this node")
        with open(os.path.join(state.release_path(name), RELEASE_FILE), encoding="utf-8") as handle:
            release = json.load(handle)
        variables = {"address": params["address"], "current_dir": os.path.join(state.app_dir, "current"),
                     "release_dir": state.release_path(name)}
        results = kinds.health(state, release, params["slot"], variables, run_health_checks)
        results += run_health_checks(release, variables)
        healthy = all(r["ok"] for r in results)
        changed = False
        if params["record"] and not module.check_mode:
            changed = record_health(state, digest, healthy, results, slot=params["slot"])
    except FleetError as exc:
        fail_from(module, exc)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"checking {params['application']} failed: {exc}", error_type=type(exc).__name__)
    for repair in repairs:
        module.warn(repair)
    module.exit_json(changed=changed or bool(repairs and params["record"] and not module.check_mode), healthy=healthy,
                     release_id=digest, checks=results, record_rebuilt=state.rebuilt)


if __name__ == "__main__":
    main()
