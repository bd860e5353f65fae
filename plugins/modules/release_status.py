#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_status
short_description: Say which release of an application this node runs, since when, and whether its files drifted
version_added: 0.1.0
description:
  - Reports, for an application on this node, the release C(current) and C(oldstable) point to (version, release id,
    protocol, health verdict, since when), every installed release, and the drift of the current release, its files
    on disk compared with the digests recorded when it was installed (changed, missing and added files).
  - A record that cannot be read does not fail the module; it answers with RV(record_error) and, in RV(status), only
    what the slot links say, so that a report can tell a damaged record from an unreachable node.
  - Says the node's clock in RV(time), so that a report can flag a node whose clock is off.
  - The playbook C(sciops.fleet.status) collects this from every node into a version matrix.
  - Runs on managed nodes with the Python standard library only.
extends_documentation_fragment:
  - sciops.fleet.release_node
  - sciops.fleet.attributes.READ_ONLY
options:
  application:
    description: The application.
    type: str
    required: true
seealso:
  - module: sciops.fleet.release_switch
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: What does this node run?
  sciops.fleet.release_status:
    application: qserv
  register: qserv_status

- name: Complain about edited files
  ansible.builtin.debug:
    msg: "{{ qserv_status.status.drift.changed }}"
  when: qserv_status.status.drift.changed | default([]) | length > 0
"""

RETURN = r"""
status:
  description:
    - C(current) and C(oldstable) (each name, digest, version, protocol, status, since, working, or null), C(installed)
      (name, version, status of each), C(drift) of the current release (changed, missing, added), and C(packages),
      the current release's RPM packages with the version it wants, the version the rpm database has, and a
      C(label) for reports.
  returned: success
  type: dict
  sample:
    application: qserv
    current: {name: 1.4.0-6c3c624b58db, digest: "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
              version: 1.4.0, protocol: "7", status: good, since: "2026-11-22T02:40:00Z", working: true}
    oldstable: null
    installed: [{name: 1.4.0-6c3c624b58db, version: 1.4.0, status: good}]
    drift: {changed: [], missing: [], added: []}
    packages: [{name: qserv, wanted: 1.4.0-2, installed: 1.4.0-2, label: qserv-1.4.0-2}]
record_error:
  description:
    - Why the application's record on this node cannot be read, or null. When set, C(status) holds only the names the
      slot links point to.
  returned: success
  type: str
  sample: null
time:
  description: The node's clock when it answered, in seconds since the epoch (UTC).
  returned: success
  type: float
  sample: 1795318800.25
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._release.module import node_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import RecordDamaged
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import SLOTS
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState
from ansible_collections.sciops.fleet.plugins.module_utils._release.status import application_status


def main():
    module = AnsibleModule(argument_spec=node_argument_spec(application={"type": "str", "required": True}),
                           supports_check_mode=True)
    params = module.params
    state = AppState(params["application"], params["state_root"], params["facts_dir"])
    record_error = None
    try:
        status = application_status(state)
    except RecordDamaged as exc:
        record_error = str(exc)
        status = {"application": state.app, "installed": [], "drift": None, "packages": []}
        for slot in SLOTS:
            name = state.slot_target(slot)
            status[slot] = {"name": name, "working": state.is_installed(name)} if name else None
    except FleetError as exc:
        fail_from(module, exc)
    module.exit_json(changed=False, status=status, record_error=record_error, time=time.time())


if __name__ == "__main__":
    main()
