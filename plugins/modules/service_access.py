#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_access
short_description: Let a group start, stop and restart named services and nspawn machines without root
version_added: 0.1.0
description:
  - Grants the members of O(group) the verbs in O(verbs) on the units in O(units), and the verbs in O(machine_verbs)
    on the nspawn machines in O(machines), so that an unprivileged account (an C(ops) group of developers, for
    example) runs C(systemctl restart app@current.service) or C(machinectl reboot app-current) itself, and nothing
    else.
  - With polkit (O(mechanism=polkit), or O(mechanism=auto) on a node where polkit can carry it), the grant is one
    JavaScript rule, C(<rules_dir>/60-sciops-fleet-<name>.rules), that answers yes to
    C(org.freedesktop.systemd1.manage-units) when the caller is in O(group), the unit (polkit's detail C(unit)) is
    one of O(units) and the verb (the detail C(verb)) is granted, and to C(org.freedesktop.machine1.manage-machines)
    for the named machines. It answers nothing to anything else, so other rules and the default (ask for root's
    password) stay in force. polkitd reads the new rule by itself within a second. The group members run plain
    C(systemctl) and C(machinectl); systemd needs 226 or later, polkit 0.106 or later.
  - With sudo (O(mechanism=sudoers), or O(mechanism=auto) where polkit cannot carry it), the grant is one drop-in,
    C(<sudoers_dir>/sciops-fleet-<name>), with one exact command line per unit and verb
    (for the group, as root, without a password, C(/usr/bin/systemctl restart app@current.service)) - no shell, no wildcard, and
    no argument beyond those named, since sudo matches a command written with arguments only when the arguments
    are exactly these. It is checked with C(visudo -cf) under a name sudo ignores and renamed into place only when
    visudo accepts it. The group members run C(sudo systemctl restart app@current.service).
  - O(mechanism=auto) uses polkit when a polkitd binary and O(rules_dir) exist and C(polkit.service) is not masked
    (polkitd is started on demand, so a stopped one is fine), and sudo otherwise. RV(mechanism_reason) says why.
  - A grant is one file. The file of the other mechanism with the same O(name) is removed, so a node that changes
    mechanism keeps one; O(state=absent) removes both.
  - Refused, with a message saying why and nothing written - verbs that are not per unit or amount to root
    (C(enable), C(disable), C(mask), C(link), C(edit), C(daemon-reload), C(set-property), C(isolate), ...;
    enabling is polkit's C(manage-unit-files), which systemd never checks per unit), units that are too broad
    (C(*), C(*.service), C(ssh*) - a pattern may only stand for the instances of one named template, such as
    C(qserv@*.service)), templates themselves, units whose start or stop acts on the whole node (C(reboot.target),
    C(rescue.target), C(polkit.service), ...), and a group that does not exist.
  - Runs on the managed node with the Python standard library.
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Validates the grant (a sudoers text with C(visudo -cf) on a scratch file) and reports whether the file
        would change; writes nothing.
  diff_mode:
    support: full
    details: The rule or sudoers text before and after.
  idempotent:
    support: full
options:
  name:
    description:
      - The grant's name, in its file name. Lower-case letters, digits, C(-) and C(_) (no dot - sudo ignores files
        in C(sudoers.d) whose name has one).
    type: str
    required: true
  group:
    description:
      - The group whose members get the grant. It must exist on the node. Required with O(state=present).
    type: str
  units:
    description:
      - The units the group may act on, each an exact unit name (C(app@current.service), C(backup.timer)) or
        the instances of one template, with one C(*) in the instance part only (C(app@*.service),
        C(app@worker-*.service)).
      - A unit is given in full, with its type; C(systemctl restart app@current) finds the same unit.
      - With sudo, a pattern is written as the units of O(instances) it matches, and refused when it matches none.
      - Grant only units whose unit file, programs and configuration the group cannot write, or the grant is root.
    type: list
    elements: str
    default: []
  verbs:
    description:
      - What the group may do to O(units) - C(start), C(stop), C(restart) (also C(systemctl try-restart)),
        C(reload), C(kill), C(reset-failed). With both C(reload) and C(restart), polkit also allows
        C(systemctl reload-or-restart) and C(try-reload-or-restart); sudo allows the named verbs only.
      - C(status) is accepted and grants nothing - every user may read a unit's state with C(systemctl status).
        A sudo grant of C(systemctl status) would run its pager as root.
      - Any other verb is refused with the reason.
    type: list
    elements: str
    default: []
  instances:
    description:
      - With sudo, the instances a template pattern in O(units) stands for - C(app@*.service) with
        C([current, oldstable]) grants C(app@current.service) and C(app@oldstable.service). sudo's own C(*)
        also matches spaces and further arguments, so a pattern is never written as one.
      - polkit matches the pattern itself; this option is then not used.
    type: list
    elements: str
    default: []
  machines:
    description:
      - nspawn machines (C(systemd-nspawn@<machine>.service), as M(sciops.fleet.nspawn_container) runs them) the
        group may act on with C(machinectl), by exact name.
    type: list
    elements: str
    default: []
  machine_verbs:
    description:
      - What the group may do to O(machines) - C(start) (C(machinectl start)), C(stop) (C(machinectl poweroff) or
        C(stop)), C(reboot), C(terminate). C(status) grants nothing; C(shell) and C(login) (root in the machine) are
        refused.
      - machined asks polkit about C(poweroff) and C(reboot) as the verb C(kill) without the signal, so with polkit a
        grant of C(stop) or C(reboot) also lets the group send any signal to the machine's processes
        (C(machinectl kill)). sudo allows the exact commands only.
    type: list
    elements: str
    default: []
  mechanism:
    description:
      - C(polkit) writes a polkit rule and fails where polkit cannot carry it; C(sudoers) writes a sudoers drop-in;
        C(auto) uses polkit where it can and sudo otherwise.
    type: str
    choices: [auto, polkit, sudoers]
    default: auto
  state:
    description:
      - C(present) puts the grant in place; C(absent) removes the rule and the sudoers drop-in of O(name), whichever
        exist, and nothing else.
      - Only files this module wrote (their first line says so) are replaced or removed. A site's own file of the
        grant's name fails C(present) with a message and is left as it is; C(absent) leaves it and warns.
      - In check mode a group that does not exist yet (one an earlier task of the same play creates) is predicted,
        with a warning, instead of failing.
    type: str
    choices: [present, absent]
    default: present
  rules_dir:
    description: Where polkit reads local rules.
    type: path
    default: /etc/polkit-1/rules.d
  sudoers_dir:
    description: The directory C(/etc/sudoers) includes with C(@includedir).
    type: path
    default: /etc/sudoers.d
notes:
  - C(systemctl status) shows a unit's journal lines only to users who may read the journal; this module grants no
    log access.
  - Members of the group cannot enable, disable, edit or create units, reload systemd, run C(systemd-run), or open
    C(machinectl shell); systemd asks polkit about each of these with an action or verb this module never grants.
seealso:
  - module: sciops.fleet.service_unit
  - module: sciops.fleet.nspawn_container
  - name: polkit(8)
    description: polkit's rules, and the details systemd passes.
    link: https://www.freedesktop.org/software/polkit/docs/latest/polkit.8.html
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: The ops group restarts the release slots of qserv, and nothing else
  sciops.fleet.service_access:
    name: qserv-ops
    group: ops
    units:
      - qserv@*.service
      - qserv-czar.service
    verbs: [start, stop, restart, reload, status]

- name: The same on nodes without polkit, through sudo, with the instances named
  sciops.fleet.service_access:
    name: qserv-ops
    group: ops
    units: [qserv@*.service]
    instances: [current, oldstable]
    verbs: [start, stop, restart]
    mechanism: sudoers

- name: Start, stop and reboot the nspawn machines of an application
  sciops.fleet.service_access:
    name: brainscales-machines
    group: ops
    machines: [brainscales-current, brainscales-oldstable]
    machine_verbs: [start, stop, reboot]

- name: Take the grant away again
  sciops.fleet.service_access:
    name: qserv-ops
    state: absent
"""

RETURN = r"""
mechanism:
  description: How the grant is carried, C(polkit) or C(sudoers); null with O(state=absent).
  returned: always
  type: str
  sample: polkit
mechanism_reason:
  description: Why that mechanism - what was found about polkit on the node.
  returned: always
  type: str
  sample: "polkit.service is masked"
grant_file:
  description: The rule or sudoers file of the grant; null with O(state=absent).
  returned: always
  type: str
  sample: /etc/polkit-1/rules.d/60-sciops-fleet-qserv-ops.rules
removed:
  description: Files removed (or, in check mode, that would be) - the other mechanism's file, or both with O(state=absent).
  returned: always
  type: list
  elements: str
  sample: [/etc/sudoers.d/sciops-fleet-qserv-ops]
grant:
  description: What the group may do, in one line; empty with O(state=absent).
  returned: always
  type: str
  sample: "start, stop, restart, reload qserv@*.service, qserv-czar.service"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.access_files import (
    ARGUMENT_SPEC,
    REQUIRED_IF,
    ServiceAccess,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import AccessError


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C", "SYSTEMD_PAGER": ""})

    def which(program):
        return module.get_bin_path(program)

    try:
        access = ServiceAccess(module.params, run, which, check_mode=module.check_mode,
                               diff=module._diff)  # pylint: disable=protected-access
        result = access.run()
    except AccessError as exc:
        fail_from(module, exc, name=module.params["name"])
    for warning in access.warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
