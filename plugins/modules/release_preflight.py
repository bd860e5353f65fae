#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_preflight
short_description: Answer whether this node can run a release, with every reason when it cannot
version_added: 0.1.0
description:
  - Checks a node against what a release requires (C(requires) in the release manifest) without changing anything;
    architecture, operating system family, free disk under the state root (the release's C(disk_mb) plus the size of
    its artifacts), memory, commands on the C(PATH), and kernel features (file systems such as C(squashfs) or
    C(fuse), or paths such as C(/dev/fuse)). It also checks that every artifact can be read from where it is stored.
  - Answers in RV(ok) with every reason in RV(reasons), not just the first; the module itself succeeds either way, so that
    a rollout can ask every node of a batch before it touches any of them and say which nodes cannot take the release.
  - A node whose C(current) already is the release (given by digest), installed and recorded healthy, answers at once
    from its own record, without asking the registry, and says so in RV(running); the rollout then leaves it alone.
  - Says in RV(current) and RV(oldstable) what the node runs now, read from the node itself (the slot links and the
    release directory they point to), not from its record, so that a rollout knows what to go back to even when the
    record is behind or damaged, or a later step's result is lost.
  - Runs on managed nodes with the Python standard library only.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.release_node
  - sciops.fleet.attributes.READ_ONLY
options:
  release:
    description: The release, by digest or by tag.
    type: str
    required: true
seealso:
  - module: sciops.fleet.release_install
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Ask every node of the batch first
  sciops.fleet.release_preflight:
    release: registry.example.org/releases/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
  register: preflight

- name: Stop before any node is touched when one cannot run it
  ansible.builtin.assert:
    that: preflight.ok
    fail_msg: "{{ inventory_hostname }} cannot run the release: {{ preflight.reasons | join('; ') }}"
"""

RETURN = r"""
ok:
  description: Whether the node can run the release.
  returned: always
  type: bool
  sample: false
reasons:
  description: Every reason it cannot, empty when it can.
  returned: always
  type: list
  elements: str
  sample: ["architecture aarch64 is not one of x86_64", "command(s) not found: squashfuse"]
running:
  description:
    - When the node already runs the release as C(current), installed and healthy, the application, version and
      C(oldstable) release (or null); otherwise null.
  returned: always
  type: dict
  sample: {application: qserv, version: 1.4.0, oldstable: null}
application:
  description: The release's application, when the release could be read.
  returned: when the release could be read
  type: str
  sample: qserv
current:
  description:
    - What the node's C(current) link of the release's application points to (name, digest, version), read from the
      release directory; null when it points nowhere or the application is not known yet (the release could not be
      read).
  returned: always
  type: dict
  sample: {name: 1.3.2-0f3a5c2e9b11, digest: "sha256:0f3a5c2e9b11c7d0a8b4f1e6d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a49", version: 1.3.2}
oldstable:
  description: The same for the C(oldstable) link, or null.
  returned: always
  type: dict
  sample: null
release_id:
  description: The release's digest, when it could be read.
  returned: when the release could be read
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
node:
  description: What was found on the node (arch, os_family, free_mb, need_mb, memory_mb).
  returned: when the release could be read
  type: dict
  sample: {arch: x86_64, os_family: [debian], free_mb: 51200, need_mb: 780, memory_mb: 16000}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import registry_options
from ansible_collections.sciops.fleet.plugins.module_utils._release.module import node_argument_spec, release_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import RELEASE_FILE
from ansible_collections.sciops.fleet.plugins.module_utils._release.fetch import artifact_sizes, fetch_release
from ansible_collections.sciops.fleet.plugins.module_utils._release.preflight import preflight
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import SLOTS
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import FILES_RECORD, AppState
from ansible_collections.sciops.fleet.plugins.module_utils._release.status import running_release


def on_disk(application, state_root, facts_dir):
    """What each slot of APPLICATION points to, from the links and the release directories: {slot: {name, digest,
    version} or None}. The record is not read: it may be behind the links."""
    state = AppState(application, state_root, facts_dir)
    slots = {}
    for slot in SLOTS:
        name = state.slot_target(slot)
        if not name:
            slots[slot] = None
            continue
        entry = {"name": name, "digest": None, "version": None}
        for file_name, key, field in ((FILES_RECORD, "digest", "digest"), (RELEASE_FILE, "version", "version")):
            try:
                with open(os.path.join(state.release_path(name), file_name), encoding="utf-8") as handle:
                    document = json.load(handle)
                entry[key] = document.get(field) if isinstance(document, dict) else None
            except (OSError, ValueError):
                pass
        slots[slot] = entry
    return slots


def main():
    module = AnsibleModule(
        argument_spec=node_argument_spec(registry=True, release={"type": "str", "required": True}),
        supports_check_mode=True,
    )
    params = module.params
    try:
        pinned = release_digest(params["release"])
    except OciError:  # given by tag: ask the registry
        pinned = None
    running = running_release(pinned, params["state_root"], params["facts_dir"]) if pinned else None
    if running:
        module.exit_json(changed=False, ok=True, reasons=[], release_id=pinned, node={}, running=running,
                         application=running["application"],
                         **on_disk(running["application"], params["state_root"], params["facts_dir"]))
    try:
        release, digest, _reference = fetch_release(params["release"], registry_options(params))
    except FleetError as exc:
        module.exit_json(changed=False, ok=False, reasons=[f"the release cannot be read: {exc}"], running=None,
                         current=None, oldstable=None)
    sizes, unreadable = artifact_sizes(release, registry_options(params))
    ok, reasons, facts = preflight(release, params["state_root"], sizes)
    reasons += unreadable
    module.exit_json(changed=False, ok=ok and not unreadable, reasons=reasons, release_id=digest, node=facts, running=None,
                     application=release["application"],
                     **on_disk(release["application"], params["state_root"], params["facts_dir"]))


if __name__ == "__main__":
    main()
