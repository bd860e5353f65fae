#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_switch
short_description: Switch a node's current (or oldstable) release, durably, and keep a record of it
version_added: 0.1.0
description:
  - Points the slot C(current) (or C(oldstable)) of an application at an installed release. A new link is renamed over
    the old one (atomic) and the directory is flushed to disk (durable), so after a crash the slot names the old or the
    new release, never nothing.
  - Records the switch in the node's local facts (C(ansible_local.sciops_fleet_<application>)) with the time, the
    release before and after, and the reason.
  - Prunes old releases down to O(keep), counting only releases that did not fail, ordered by when they were last
    current (not by file times), and never removing what a slot points to or what O(protect) names. Failed releases
    are removed as soon as nothing holds them.
  - Runs on managed nodes with the Python standard library only.
extends_documentation_fragment:
  - sciops.fleet.release_node
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Reports the switch and the releases that would be pruned.
  diff_mode:
    support: full
    details: Shows the slot's release before and after.
  idempotent:
    support: full
options:
  application:
    description: The application.
    type: str
    required: true
  release:
    description:
      - The installed release to switch to, by id (C(sha256:...)), a reference pinned by digest, a version installed on
        the node (C(1.3.2)), or C(previous) for the release the slot C(current) pointed to before its last switch (one that
        is still installed and did not fail).
    type: str
    required: true
  slot:
    description: Which slot to point at the release.
    type: str
    choices: [current, oldstable]
    default: current
  keep:
    description: How many releases that did not fail to keep, those in slots included.
    type: int
    default: 3
  protect:
    description: Release ids never to prune in this run, for example the release a rollback may return to.
    type: list
    elements: str
    default: []
  reason:
    description: Why the switch happens, for the record (C(rollout), C(revert), C(rollback), ...).
    type: str
    default: rollout
seealso:
  - module: sciops.fleet.release_install
  - module: sciops.fleet.release_health
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Make release 1.4.0 the current one, keeping the two before it
  sciops.fleet.release_switch:
    application: qserv
    release: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    keep: 3

- name: Go back to the release that ran before
  sciops.fleet.release_switch:
    application: qserv
    release: previous
    reason: rollback

- name: Keep the previous server running as oldstable
  sciops.fleet.release_switch:
    application: qserv
    slot: oldstable
    release: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    reason: lockstep
"""

RETURN = r"""
from:
  description: The release the slot pointed to before (name, digest, version, protocol), or null.
  returned: success
  type: dict
  sample: {name: 1.3.2-9f86d081884c, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", version: 1.3.2, protocol: "7"}
to:
  description: The release the slot points to now.
  returned: success
  type: dict
  sample: {name: 1.4.0-6c3c624b58db, digest: "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b", version: 1.4.0, protocol: "7"}
services:
  description: The services the release switched to declares; restart them after a switch.
  returned: success
  type: list
  elements: str
  sample: [qserv@current.service]
pruned:
  description: Release directory names removed.
  returned: success
  type: list
  elements: str
  sample: [1.2.0-44136fa355b3]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._oci_errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras_module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._release_module import node_argument_spec, release_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release_node import AppState, choose_release, switch_release


def main():
    module = AnsibleModule(
        argument_spec=node_argument_spec(
            application={"type": "str", "required": True},
            release={"type": "str", "required": True},
            slot={"type": "str", "choices": ["current", "oldstable"], "default": "current"},
            keep={"type": "int", "default": 3},
            protect={"type": "list", "elements": "str", "default": []},
            reason={"type": "str", "default": "rollout"},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["keep"] < 1:
            raise OciError(f"keep must be at least 1, not {params['keep']}")
        state = AppState(params["application"], params["state_root"], params["facts_dir"])
        wanted = params["release"]
        if "/" in wanted or "@" in wanted:  # a reference pinned by digest
            wanted = release_digest(wanted)
        digest = choose_release(state, state.load(), wanted)
        protect = [release_digest(p, "protect") for p in params["protect"]]
        outcome = switch_release(state, digest, params["slot"], params["keep"], protect, params["reason"], module.check_mode)
    except OciError as exc:
        fail_from(module, exc)
    except OSError as exc:
        module.fail_json(msg=f"switching {params['application']} to {params['release']} failed: {exc}", error_type="OSError")
    result = {"changed": outcome["changed"], "from": outcome["from"], "to": outcome["to"], "pruned": outcome["pruned"],
              "services": outcome["services"]}
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {"before": f"{params['slot']}: {(outcome['from'] or {}).get('name')}\n",
                          "after": f"{params['slot']}: {outcome['to']['name']}\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
