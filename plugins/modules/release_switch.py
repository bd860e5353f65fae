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
    current (by the record's order, not by clocks or file times), and never removing what a slot points to or what O(protect) names. Failed releases
    are removed as soon as nothing holds them.
  - When C(current) is switched to a release with C(install=rpm) artifacts, its RPM packages become the node's before
    the link moves, in one C(rpm -U) transaction for the packages whose installed version differs; a package whose
    version would go down is refused unless O(rpm_downgrade) (then C(--oldpackage)). Then the packages of the release
    C(current) leaves that the new one no longer ships are erased (C(rpm -e)). rpm holds one version of a package, so
    packages follow C(current) only. See C(docs/rpm.md).
  - When a slot points to a release with an C(install=machine) artifact, the nspawn machine C(<application>-<slot>)
    runs that release's tree once the slots have moved (settings in C(/etc/systemd/nspawn/<machine>.nspawn), a drop-in
    of C(systemd-nspawn@<machine>.service)); C(oldstable)'s machine is started before C(current)'s is restarted, and the
    machine of a slot that is emptied or runs no machine is stopped and removed. A machine that does not start is
    reported in RV(machines), not failed here; its health check (M(sciops.fleet.release_health)) fails. Every switch
    checks the machines, so one whose start was lost (a kill) is started by the next. See C(docs/services.md).
  - Before switching, the node's record is made to agree with the slot links and release directories. A slot whose
    link moved while the record was not saved (a switch interrupted by a crash) is recorded as it is, with a switch
    marked C(repaired) in the history, and the task is C(changed) even when the slot already pointed at O(release);
    such a release is not health-checked. A damaged or missing record is rebuilt from the disk, the damaged file kept
    beside it as C(<fact>.damaged-<UTC time>). Each repair is a warning.
  - Releases are ordered by the record's own sequence numbers, never by clocks, so a node whose clock is wrong
    prunes the right releases and C(previous) is the release that really ran before.
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
      - Required with O(state=present).
    type: str
  slot:
    description: Which slot to point at the release (or, with O(state=absent), to empty).
    type: str
    choices: [current, oldstable]
    default: current
  state:
    description:
      - V(present) points O(slot) at O(release).
      - V(absent) empties the slot C(oldstable) once nothing needs the old server any more (see the playbook
        C(sciops.fleet.retire_oldstable), which checks that first); its release is then pruned like any other
        release beyond O(keep). The slot C(current) is never emptied.
    type: str
    choices: [present, absent]
    default: present
  keep_oldstable:
    description:
      - Lockstep of servers and clients. When O(slot=current) moves to a release whose protocol differs from the
        protocol of the release it leaves, that release first becomes C(oldstable), so a server can go on serving
        clients of the old protocol (as a second service instance) until every client has moved.
      - A release of the same protocol leaves C(oldstable) as it is. C(oldstable) holds one release; switching
        to a third protocol before retiring moves it to the release C(current) leaves.
    type: bool
    default: false
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
  rpm_downgrade:
    description:
      - Allow the switch to install an older version of an RPM package of the release than the node has
        (C(rpm -U --oldpackage)). Without it such a switch fails and changes nothing.
    type: bool
    default: false
  rpm_nodeps:
    description:
      - Install the release's RPM packages with C(--nodeps). Needed where the rpm database does not list what the system
        provides (a Debian node knows its packages through dpkg, so C(/bin/sh) or C(libc.so.6) requires are unknown to
        rpm); requires between the release's own packages are then not checked either.
    type: bool
    default: false
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

- name: Upgrade a server to a new protocol; the release it ran becomes oldstable
  sciops.fleet.release_switch:
    application: qserv
    release: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    keep_oldstable: true

- name: Empty oldstable once every client speaks the new protocol
  sciops.fleet.release_switch:
    application: qserv
    slot: oldstable
    state: absent
    reason: retire
"""

RETURN = r"""
from:
  description: The release the slot pointed to before (name, digest, version, protocol), or null.
  returned: success
  type: dict
  sample: {name: 1.3.2-9f86d081884c, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", version: 1.3.2, protocol: "7"}
to:
  description: The release the slot points to now (null after O(state=absent)).
  returned: success
  type: dict
  sample: {name: 1.4.0-6c3c624b58db, digest: "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b", version: 1.4.0, protocol: "7"}
services:
  description: The services the release switched to declares; restart them after a switch.
  returned: success
  type: list
  elements: str
  sample: [qserv@current.service]
oldstable:
  description: The release C(oldstable) points to after the switch, or null (not returned with O(state=absent)).
  returned: success
  type: dict
  sample: {name: 1.3.2-9f86d081884c, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", version: 1.3.2, protocol: "7"}
oldstable_moved:
  description: Whether this switch (with O(keep_oldstable)) moved C(oldstable) to the release C(current) left.
  returned: success
  type: bool
  sample: true
oldstable_from:
  description:
    - When RV(oldstable_moved), what C(oldstable) pointed to before (null when it was empty). A revert puts it back.
  returned: success
  type: dict
  sample: null
packages:
  description:
    - For a switch of C(current), the release's RPM packages with the version wanted (C(evr)), the version the node had
      (C(installed), null when none) and the C(action) taken (C(install), C(upgrade), C(downgrade), C(keep)), and
      the packages of the release left that the new one no longer ships, with C(action=erase) and C(evr) null.
  returned: success
  type: list
  elements: dict
  sample: [{name: qserv, evr: 1.4.0-2, arch: x86_64, installed: 1.4.0-1, action: upgrade,
            file: /var/lib/sciops-fleet/qserv/releases/1.4.0-6c3c624b58db/rpms/qserv-1.4.0-2.x86_64.rpm}]
machines:
  description:
    - The nspawn machines of the slots (releases with an C(install=machine) artifact), oldstable's first, each with
      C(machine), C(slot), C(unit), the C(release) and C(version) it runs, the C(action) taken (C(unchanged),
      C(started), C(restarted), C(removed), C(refused)), C(ok), and on failure C(error) and the unit's C(journal).
  returned: when a slot runs, or ran, a machine
  type: list
  elements: dict
  sample: [{machine: bss-current, slot: current, unit: systemd-nspawn@bss-current.service, release: 2.0-6c3c624b58db,
            version: "2.0", action: restarted, ok: true}]
pruned:
  description: Release directory names removed.
  returned: success
  type: list
  elements: str
  sample: [1.2.0-44136fa355b3]
repairs:
  description: What was repaired so that the record agrees with the slot links and release directories.
  returned: success
  type: list
  elements: str
  sample: ["current points to 1.4.0-6c3c624b58db but the record said 1.3.2-9f86d081884c: recorded as it is (not health-checked)"]
record_rebuilt:
  description: When the record was damaged or missing and rebuilt, where the damaged file was kept; else null.
  returned: success
  type: str
  sample: /etc/ansible/facts.d/sciops_fleet_qserv.fact.damaged-20260102T030405Z
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._release.module import node_argument_spec, release_digest
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState
from ansible_collections.sciops.fleet.plugins.module_utils._release.switch import choose_release, retire_slot, switch_release


def main():
    module = AnsibleModule(
        argument_spec=node_argument_spec(
            application={"type": "str", "required": True},
            release={"type": "str"},
            state={"type": "str", "choices": ["present", "absent"], "default": "present"},
            keep_oldstable={"type": "bool", "default": False},
            slot={"type": "str", "choices": ["current", "oldstable"], "default": "current"},
            keep={"type": "int", "default": 3},
            protect={"type": "list", "elements": "str", "default": []},
            reason={"type": "str", "default": "rollout"},
            rpm_downgrade={"type": "bool", "default": False},
            rpm_nodeps={"type": "bool", "default": False},
        ),
        required_if=[("state", "present", ["release"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["keep"] < 1:
            raise NodeError(f"keep must be at least 1, not {params['keep']}")
        state = AppState(params["application"], params["state_root"], params["facts_dir"])
        protect = [release_digest(p, "protect") for p in params["protect"]]
        record, repairs = reconcile(state, module.check_mode)
        if params["state"] == "absent":
            outcome = retire_slot(state, params["slot"], params["keep"], protect, params["reason"], module.check_mode)
            outcome.update(to=None, services=[])
        else:
            wanted = params["release"]
            if "/" in wanted or "@" in wanted:  # a reference pinned by digest
                wanted = release_digest(wanted)
            digest = choose_release(state, record, wanted)
            outcome = switch_release(state, digest, params["slot"], params["keep"], protect, params["reason"],
                                     module.check_mode, keep_oldstable=params["keep_oldstable"],
                                     rpm_downgrade=params["rpm_downgrade"], rpm_nodeps=params["rpm_nodeps"])
    except FleetError as exc:
        fail_from(module, exc)
    except OSError as exc:
        module.fail_json(msg=f"switching {params['application']} to {params['release']} failed: {exc}", error_type="OSError")
    keys = ("changed", "from", "to", "pruned", "services", "oldstable", "oldstable_moved", "oldstable_from", "packages",
            "machines")
    result = {key: outcome[key] for key in keys if key in outcome}
    result["repairs"] = repairs + outcome["repairs"]
    result["record_rebuilt"] = state.rebuilt
    result["changed"] = result["changed"] or bool(result["repairs"])
    for repair in result["repairs"]:
        module.warn(repair)
    for step in result.get("machines") or []:
        if not step.get("ok"):
            module.warn(f"machine {step['machine']} ({step['slot']}) {step['action']}: {step.get('error', 'failed')}")
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {"before": f"{params['slot']}: {(outcome['from'] or {}).get('name')}\n",
                          "after": f"{params['slot']}: {(outcome['to'] or {}).get('name')}\n"}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
