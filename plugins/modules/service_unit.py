#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_unit
short_description: Install a systemd unit verified by systemd, hardened by default, and run it
version_added: 0.1.0
description:
  - Writes a systemd unit (service, socket, timer, mount, path, target, ... and template units such as
    C(app@.service)), or a drop-in that changes a unit installed by a package, from O(sections) or from
    O(content).
  - The new text is checked with C(systemd-analyze verify) B(before) it replaces the installed file, in a scratch
    directory placed first on systemd's unit path, so a drop-in is checked together with its unit and a template
    through the instances that will run. A unit systemd refuses, or in which it would ignore a line (an unknown
    directive, an invalid value), is not installed; the module fails with systemd's message and the installed
    unit, and the service running from it, stay as they were.
  - The file is written atomically and durably (temporary file, fsync, rename, fsync of the directory).
    C(systemctl daemon-reload) runs only when a file changed or systemd says a unit needs it.
  - Services written from O(sections) get hardened defaults (see O(hardening)), and the module reports the
    service's C(systemd-analyze security) exposure score.
  - With O(state), a unit is started when it is not running, and restarted only when its effective text
    (file and drop-ins, as C(systemctl cat) shows it) or one of the files in O(restart_on_change) changed since
    it was last started by this module; what it was started with is recorded in O(state_dir).
  - When a unit fails to start, restart or reload, the module fails with the unit's C(ActiveState),
    C(SubState) and C(Result) and the last lines of its journal.
  - Runs on the managed node with the Python standard library and the systemd tools.
  - The role C(sciops.fleet.app_service) uses this module to install an application's template unit with one
    instance per release slot.
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Verifies the candidate unit and predicts which units would be enabled, started, restarted or stopped;
        writes, reloads and starts nothing. The exposure score is not reported in check mode.
  diff_mode:
    support: full
    details: The unit text before and after, shown by Ansible as a unified diff.
  idempotent:
    support: partial
    details:
      - A second run with the same arguments changes nothing, except with O(state=restarted), which restarts
        every time it runs, as asked.
options:
  name:
    description:
      - The unit's name with its type, for example C(qserv-czar.service), C(app@.service) (a template),
        C(app.socket), C(backup.timer), C(srv-data.mount).
      - With O(dropin), the unit the drop-in changes, which may come from a package.
      - Name a template, not an instance; list the instances in O(instances).
    type: str
    required: true
  dropin:
    description:
      - Write a drop-in named so (C(.conf) is added when missing) into C(<unit_dir>/<name>.d/) instead of the
        unit file. Use it to change a unit installed by a package without copying it.
      - Hardened defaults are not added to drop-ins.
    type: str
  sections:
    description:
      - >-
        The unit as data, C({Section: {Directive: value}}), for example C({Unit: {Description: ...},
        Service: {ExecStart: ...}, Install: {WantedBy: multi-user.target}}).
      - A value may be a string, a number, a boolean (written C(yes)/C(no)), a list (the directive is
        repeated, once per item), an empty string (C(Directive=), which resets a list such as
        C(CapabilityBoundingSet=)), or null (the directive is left out; use this to remove a hardened default).
      - Sections are written in the order C([Unit]), the type's own section, others, C([Install]).
      - Mutually exclusive with O(content). With neither, the module manages only the state of an existing unit.
    type: dict
  content:
    description:
      - The unit's full text, for example C("{{ lookup('template', 'app.service.j2') }}"). Written as given
        (a final newline is added when missing); hardened defaults are not added.
      - Mutually exclusive with O(sections).
    type: str
  hardening:
    description:
      - For C(.service) units written from O(sections), add hardened defaults to C([Service]) for every directive
        the sections do not set - C(DynamicUser=yes) (left out when C(User=) is given), C(StateDirectory=),
        C(CacheDirectory=) and C(LogsDirectory=) named after the unit (C(app/%i) for a template), C(UMask=0077),
        C(NoNewPrivileges=yes), an empty C(CapabilityBoundingSet=), C(ProtectSystem=strict), C(ProtectHome=yes),
        C(PrivateTmp=yes), C(PrivateDevices=yes), C(PrivateUsers=yes), C(DevicePolicy=closed), C(ProtectKernelTunables=yes),
        C(ProtectKernelModules=yes), C(ProtectKernelLogs=yes), C(ProtectControlGroups=yes), C(ProtectClock=yes),
        C(ProtectHostname=yes), C(ProtectProc=invisible), C(RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6),
        C(RestrictNamespaces=yes), C(RestrictRealtime=yes), C(RestrictSUIDSGID=yes), C(LockPersonality=yes),
        C(MemoryDenyWriteExecute=yes), C(SystemCallArchitectures=native),
        C(SystemCallFilter=@system-service ~@privileged) and C(SystemCallErrorNumber=EPERM).
      - Each default is overridden by giving the directive in O(sections) and removed by giving it as null. A
        service that needs a JIT compiler (Java, Node.js) needs C(MemoryDenyWriteExecute) set to null; one that
        must write outside its own directories needs C(ReadWritePaths=).
      - The defaults are written below a comment in the unit, so a reader can tell them from the user's settings.
    type: bool
    default: true
  unit_dir:
    description: Where unit files and drop-in directories are written.
    type: path
    default: /etc/systemd/system
  mode:
    description: Permissions of the unit file, as an octal string such as C("0644").
    type: raw
    default: "0644"
  verify:
    description:
      - How a new text is checked before it is installed.
      - C(strict) refuses it when C(systemd-analyze verify) fails or says it ignores a line of the unit (unknown
        directive or section, invalid value, removed option). Other remarks of systemd about the unit become warnings.
      - C(errors) refuses it only when C(systemd-analyze verify) fails.
      - C(none) does not check. Only for nodes without C(systemd-analyze).
    type: str
    choices: [strict, errors, none]
    default: strict
  instances:
    description:
      - For a template unit, the instances that O(enabled) and O(state) apply to, such as C([current, oldstable])
        for C(app@current.service) and C(app@oldstable.service). A template is also verified through them.
    type: list
    elements: str
    default: []
  enabled:
    description:
      - Whether the unit (or each instance) starts at boot. Unset leaves it as it is.
      - A unit without an C([Install]) section cannot be enabled; the module says so.
    type: bool
  state:
    description:
      - C(started) starts the unit when it is not running, and restarts it when its text or a file in
        O(restart_on_change) changed since it was last started by this module (or when there is no record of that).
      - C(reloaded) is C(started), except that a change of the files in O(restart_on_change) alone reloads the
        unit (C(systemctl reload-or-restart)) instead of restarting it. A change of the unit text still restarts it.
      - C(restarted) restarts the unit on every run.
      - C(stopped) stops it when it runs.
      - C(absent) removes the unit - stops and disables it (for a template, the instances in O(instances), or
        every instance systemd knows of when none is named), removes the unit file (or, with O(dropin), the
        drop-in, and its directory when that is then empty), reloads systemd and forgets what the instances were
        started with. It cannot be combined with O(sections), O(content) or O(enabled). A drop-in's unit is
        stopped but not disabled, since the unit itself stays.
      - Unset leaves the unit's state alone.
    type: str
    choices: [started, stopped, restarted, reloaded, absent]
  restart_on_change:
    description:
      - Files the unit reads (configuration, environment files), compared by content with what they held when the
        unit was last started by this module. A directory, or a link to one (such as a release's C(current) link),
        is compared by the path it resolves to.
      - C(%i) in a path is replaced by each instance name, so C(/etc/app/%i.conf) makes a change of
        C(/etc/app/current.conf) restart only C(app@current.service).
    type: list
    elements: path
    default: []
  settle:
    description:
      - Seconds to watch a unit after starting, restarting or reloading it. A unit that fails or enters
        C(auto-restart) (crashed, waiting to be restarted) within this time fails the module.
    type: float
    default: 2.0
  journal_lines:
    description: How many of the unit's last journal lines a failure reports.
    type: int
    default: 20
  security_report:
    description:
      - Report the C(systemd-analyze security) exposure of a service (the first instance of a template) in
        RV(exposure) and RV(exposure_rating).
    type: bool
    default: true
  state_dir:
    description: Where the record of what each unit was last started with is kept, one small JSON file per unit.
    type: path
    default: /var/lib/sciops-fleet/_units
notes:
  - Install a socket's or timer's service before the socket or timer itself; C(systemd-analyze verify) refuses a
    socket whose service does not exist.
  - The C(ExecStart=) program must exist when the unit is installed; systemd refuses the unit otherwise.
  - C(systemd-analyze security) exists from systemd 240; on older systemd the exposure is not reported.
seealso:
  - module: ansible.builtin.systemd_service
  - module: sciops.fleet.nspawn_container
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Run a hardened web service, restarted when its configuration changes
  sciops.fleet.service_unit:
    name: status-page.service
    sections:
      Unit:
        Description: Status page of the experiment
        After: network-online.target
        Wants: network-online.target
      Service:
        Type: exec
        ExecStart: /opt/status-page/bin/serve --config /etc/status-page/serve.toml
        Restart: on-failure
      Install:
        WantedBy: multi-user.target
    restart_on_change:
      - /etc/status-page/serve.toml
    enabled: true
    state: started
  register: status_page

- name: Show how exposed the service is (systemd's scale, 0 best to 10 worst)
  ansible.builtin.debug:
    msg: "{{ status_page.exposure }} {{ status_page.exposure_rating }}"

- name: One template, two release slots side by side, each restarted only when its own config changes
  sciops.fleet.service_unit:
    name: brainscales-server@.service
    sections:
      Unit:
        Description: BrainScaleS experiment server (%i)
      Service:
        EnvironmentFile: /etc/brainscales/%i.env
        ExecStart: /var/lib/sciops-fleet/brainscales/%i/bin/server --port ${PORT}
        # The server JIT-compiles its RPC stubs.
        MemoryDenyWriteExecute: null
      Install:
        WantedBy: multi-user.target
    instances: [current, oldstable]
    restart_on_change:
      - /etc/brainscales/%i.env
      - /var/lib/sciops-fleet/brainscales/%i
    enabled: true
    state: started

- name: Raise a limit of a packaged unit with a drop-in
  sciops.fleet.service_unit:
    name: postgresql@.service
    dropin: 50-limits
    sections:
      Service:
        LimitNOFILE: 65536
    instances: ["15-main"]
    state: started

- name: A unit written from a template on the controller
  sciops.fleet.service_unit:
    name: qserv-worker.service
    content: "{{ lookup('ansible.builtin.template', 'qserv-worker.service.j2') }}"
    state: started

- name: Remove a service that is no longer wanted (stopped, disabled, its file removed)
  sciops.fleet.service_unit:
    name: old-exporter.service
    state: absent

- name: A nightly timer for a oneshot service installed before it
  sciops.fleet.service_unit:
    name: cache-prune.timer
    sections:
      Timer:
        OnCalendar: "*-*-* 03:00:00"
        RandomizedDelaySec: 15min
        Persistent: true
      Install:
        WantedBy: timers.target
    enabled: true
    state: started

- name: Retire the oldstable slot
  sciops.fleet.service_unit:
    name: brainscales-server@.service
    instances: [oldstable]
    enabled: false
    state: stopped
"""

RETURN = r"""
name:
  description: The unit (or template) the module wrote or managed.
  returned: always
  type: str
  sample: brainscales-server@.service
unit_file:
  description: The unit file or drop-in the module manages.
  returned: always
  type: str
  sample: /etc/systemd/system/brainscales-server@.service
units:
  description: The units O(enabled) and O(state) applied to (the instances, for a template).
  returned: always
  type: list
  elements: str
  sample: [brainscales-server@current.service, brainscales-server@oldstable.service]
written:
  description: Whether the file was (or in check mode would be) written.
  returned: always
  type: bool
  sample: true
daemon_reloaded:
  description: Whether C(systemctl daemon-reload) ran (or would run).
  returned: always
  type: bool
  sample: true
verify_output:
  description: What C(systemd-analyze verify) printed for an accepted unit (warnings about other units, for example).
  returned: always
  type: list
  elements: str
  sample: []
enabled_changed:
  description: Units that were enabled or disabled.
  returned: always
  type: list
  elements: str
  sample: [brainscales-server@current.service]
started:
  description: Units that were started because they were not running.
  returned: always
  type: list
  elements: str
  sample: []
restarted:
  description: Units that were restarted.
  returned: always
  type: list
  elements: str
  sample: [brainscales-server@current.service]
reloaded:
  description: Units that were reloaded (O(state=reloaded) and only watched files changed).
  returned: always
  type: list
  elements: str
  sample: []
stopped:
  description: Units that were stopped.
  returned: always
  type: list
  elements: str
  sample: []
removed:
  description: Whether the unit file (or drop-in) was removed (O(state=absent)).
  returned: always
  type: bool
  sample: false
restart_reasons:
  description: Per unit started, restarted or reloaded, why.
  returned: always
  type: dict
  sample: {"brainscales-server@current.service": "changed: /etc/brainscales/current.env"}
exposure:
  description:
    - The overall exposure level from C(systemd-analyze security), 0.0 (best) to 10.0; below 5.0 is systemd's
      C(OK) band or better. Null in check mode, for units other than services, and where systemd cannot tell.
  returned: always
  type: float
  sample: 1.9
exposure_rating:
  description: systemd's word for the exposure level (C(OK), C(MEDIUM), C(EXPOSED), C(UNSAFE)).
  returned: always
  type: str
  sample: OK
unit:
  description: On failure to start, the unit that failed.
  returned: failure
  type: str
  sample: brainscales-server@current.service
active_state:
  description: On failure to start, the unit's C(ActiveState).
  returned: failure
  type: str
  sample: failed
sub_state:
  description: On failure to start, the unit's C(SubState).
  returned: failure
  type: str
  sample: failed
unit_result:
  description: On failure to start, the unit's C(Result).
  returned: failure
  type: str
  sample: exit-code
journal:
  description: On failure to start, the last O(journal_lines) lines of the unit's journal (also in the message).
  returned: failure
  type: list
  elements: str
  sample: ["2024-05-02T10:00:01+0000 node3 server[812]: cannot bind 127.0.0.1:7000: address in use"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import (
    ARGUMENT_SPEC,
    MUTUALLY_EXCLUSIVE,
    ServiceUnit,
)
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import Systemd
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)

    def run(argv, env):
        return module.run_command(argv, environ_update=env)

    tools = {name: module.get_bin_path(name, required=True) for name in ("systemctl", "journalctl")}
    analyze = module.get_bin_path("systemd-analyze", required=module.params["verify"] != "none")
    systemd = Systemd(run, systemctl=tools["systemctl"], journalctl=tools["journalctl"], analyze=analyze)
    try:
        result = ServiceUnit(systemd, module.params, check_mode=module.check_mode, diff=module._diff,  # pylint: disable=protected-access
                             warn=module.warn).run()
    except UnitError as exc:
        fail_from(module, exc, name=module.params["name"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
