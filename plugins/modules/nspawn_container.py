#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nspawn_container
short_description: Install and run a systemd-nspawn machine from a squashfs image, a tarball or a directory
version_added: 0.1.0
description:
  - Installs a machine image as the tree C(<machines_dir>/<name>) (by default C(/var/lib/machines/<name>), where
    C(machinectl) and C(systemd-nspawn@.service) look), writes its settings file C(<settings_dir>/<name>.nspawn)
    (bind mounts, read-only root, network mode, capabilities, environment), and enables, starts or stops
    C(systemd-nspawn@<name>.service).
  - The image is a file or directory B(on the node), for example an environment image or a release artifact
    fetched with M(sciops.fleet.oras_pull). A squashfs image is unpacked with C(unsquashfs) (squashfs-tools) when
    the node has it, else mounted with C(squashfuse) and copied; a node with neither cannot install a squashfs
    image (use a tarball). A tarball (plain, gzip, bzip2, xz, or zstd when C(zstd) is installed) is extracted with
    GNU C(tar), keeping owners and modes. A directory is copied with C(cp -a).
  - The image is unpacked into a new directory next to the machine's tree and renamed into place, so a failed
    installation leaves no half tree. The tree's root gets mode C(0755), as an operating system tree needs.
  - Idempotent by content. What the tree was installed from (the image's SHA-256; for a directory image, a
    digest of its listing - paths, modes, owners, sizes, times, link targets) is recorded in O(state_dir). The
    same image again changes nothing. A file image at the recorded path with the recorded size, modification time
    and inode is not hashed again.
  - B(Replacing the image of an installed machine is explicit.) A different image fails the module unless
    O(replace=true). With it, a running machine is stopped, the old tree is moved aside, the new one renamed into
    place, the old one deleted, and the machine started again. Everything written inside the old tree is lost;
    keep a machine's data in a bind-mounted directory (O(bind)) to survive a replacement.
  - A change of the settings file restarts a machine with O(state=started) (settings apply when a machine starts);
    with O(state=present) a running machine keeps running and RV(pending_restart) says the change waits for a restart.
  - When the machine fails to start, the module fails with the unit's state and the last lines of its journal.
  - Runs on the managed node with the Python standard library and the systemd tools.
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Hashes the image and predicts what would be installed, written, enabled, started or stopped; changes nothing.
  diff_mode:
    support: full
    details: The settings file before and after, and the image digest before and after.
  idempotent:
    support: full
options:
  name:
    description: The machine's name (up to 64 letters, digits, C(-) and C(_)); also its host name.
    type: str
    required: true
  image:
    description:
      - The image on the node to install the machine from - a squashfs image, a tarball or a directory holding the
        machine's root tree (C(/usr), C(/etc), ...). To boot, the tree needs an init system (systemd).
      - Unset manages an installed machine without touching its tree.
    type: path
  image_format:
    description: What O(image) is; C(auto) tells from the content.
    type: str
    choices: [auto, directory, tar, squashfs]
    default: auto
  replace:
    description:
      - Replace an installed tree whose image differs from O(image) (or was not installed by this module). A
        running machine is stopped for it and started again. Without it, such a difference fails the module and
        the installed machine stays as it is.
    type: bool
    default: false
  boot:
    description:
      - Boot the tree's init system (C(Boot=yes)). With C(false), the machine runs O(command) as its only process.
    type: bool
    default: true
  command:
    description: With O(boot=false), the command to run in the machine (C(Parameters=)), one list item per argument.
    type: list
    elements: str
    default: []
  read_only:
    description: Mount the machine's root read-only (C(ReadOnly=yes)).
    type: bool
    default: false
  volatile:
    description: Run the machine with a volatile root or C(/var) (C(Volatile=)); unset leaves systemd's default (C(no)).
    type: str
    choices: ["no", "yes", state, overlay]
  bind:
    description: Bind mounts, each C(SOURCE[:DESTINATION[:OPTIONS]]) with absolute paths (C(Bind=)).
    type: list
    elements: str
    default: []
  bind_ro:
    description: Read-only bind mounts, in the same form as O(bind) (C(BindReadOnly=)).
    type: list
    elements: str
    default: []
  network:
    description:
      - C(private) gives the machine its own network namespace with only a loopback interface.
      - C(host) shares the node's network (a service in the machine binds the node's addresses).
      - C(veth) gives it a virtual Ethernet link to the node (C(ve-<name>)), to be configured on the node,
        for example by systemd-networkd; O(ports) are forwarded over it.
    type: str
    choices: [private, host, veth]
    default: private
  ports:
    description: With O(network=veth), ports forwarded from the node to the machine, as C(tcp:8080:80) (C(Port=)).
    type: list
    elements: str
    default: []
  capabilities:
    description: Capabilities to give the machine beyond systemd-nspawn's default set (C(Capability=)).
    type: list
    elements: str
    default: []
  drop_capabilities:
    description: Capabilities to take from the machine (C(DropCapability=)).
    type: list
    elements: str
    default: []
  environment:
    description: Environment variables of the machine's init or O(command) (C(Environment=)).
    type: dict
    default: {}
  private_users:
    description:
      - User namespacing (C(PrivateUsers=)). The default C(no) runs the machine with the tree's owners as they
        are. C(pick) runs it in a user namespace of its own; systemd then changes the tree's owners on the first
        start, which takes a while for a large tree.
    type: str
    choices: ["no", "yes", pick, identity]
    default: "no"
  settings:
    description:
      - >-
        More C(.nspawn) directives, C({Section: {Directive: value}}), added to or overriding those the options
        above produce; a value is written as in M(sciops.fleet.service_unit)'s sections.
    type: dict
    default: {}
  enabled:
    description:
      - Whether the machine starts at boot (C(systemctl enable systemd-nspawn@<name>.service machines.target), as
        C(machinectl enable) does). Unset leaves it as it is.
    type: bool
  state:
    description:
      - C(present) installs the image and settings and leaves a running machine running.
      - C(started) also starts the machine, and restarts it when its settings changed.
      - C(stopped) installs and stops it.
      - C(absent) stops and disables the machine and removes its tree, settings file and record.
    type: str
    choices: [present, started, stopped, absent]
    default: present
  settle:
    description: Seconds to watch the machine's unit after starting it; a machine that fails within this time fails the module.
    type: float
    default: 3.0
  journal_lines:
    description: How many of the machine unit's last journal lines a failure reports.
    type: int
    default: 20
  machines_dir:
    description: Where machine trees are installed. C(machinectl) and C(systemd-nspawn@.service) look in C(/var/lib/machines).
    type: path
    default: /var/lib/machines
  settings_dir:
    description: Where C(.nspawn) settings files are written; files there are trusted, so all their settings apply.
    type: path
    default: /etc/systemd/nspawn
  state_dir:
    description: Where the record of each machine's installed image is kept.
    type: path
    default: /var/lib/sciops-fleet/_machines
notes:
  - Nested use - a machine inside a node that is itself a container - needs that container to be started with
    the capabilities to run one (the test fleet's nodes run with C(--capability=all)).
  - A node that cannot loop-mount (a container) cannot boot a squashfs image in place; this module always unpacks
    the image into a tree, which works everywhere at the cost of the tree's disk space.
  - Run tasks inside a running machine with the connection plugin C(sciops.fleet.nspawn).
seealso:
  - module: sciops.fleet.service_unit
  - module: sciops.fleet.oras_pull
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Boot a machine from an environment image, with the data directory bound in
  sciops.fleet.nspawn_container:
    name: analysis
    image: /var/cache/sciops-fleet/images/analysis-2024.1.sqfs
    bind:
      - /srv/data:/data
    bind_ro:
      - /etc/site.conf:/etc/site.conf
    environment:
      SITE: lab-a
    enabled: true
    state: started

- name: Move the machine to a new image (stops it, replaces the tree, starts it again)
  sciops.fleet.nspawn_container:
    name: analysis
    image: /var/cache/sciops-fleet/images/analysis-2024.2.sqfs
    replace: true
    state: started

- name: Run one program in a read-only tree from a release tarball, sharing the node's network
  sciops.fleet.nspawn_container:
    name: qserv-proxy
    image: /var/lib/sciops-fleet/qserv/current/proxy-rootfs.tar.zst
    boot: false
    command: [/usr/bin/qserv-proxy, --listen, "127.0.0.1:4040"]
    read_only: true
    network: host
    drop_capabilities: [CAP_NET_RAW]
    state: started

- name: Remove a machine
  sciops.fleet.nspawn_container:
    name: analysis
    state: absent
"""

RETURN = r"""
name:
  description: The machine's name.
  returned: always
  type: str
  sample: analysis
unit:
  description: The machine's unit.
  returned: always
  type: str
  sample: systemd-nspawn@analysis.service
machine_dir:
  description: The machine's tree.
  returned: always
  type: str
  sample: /var/lib/machines/analysis
settings_file:
  description: The machine's settings file.
  returned: always
  type: str
  sample: /etc/systemd/nspawn/analysis.nspawn
image_digest:
  description: The digest of O(image) (C(sha256:...) of a file, C(tree:sha256:...) of a directory's listing).
  returned: when O(image) is given
  type: str
  sample: sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
image_changed:
  description: Whether the tree was (or would be) installed from O(image).
  returned: always
  type: bool
  sample: true
replaced:
  description: Whether an installed tree was (or would be) replaced.
  returned: always
  type: bool
  sample: false
settings_changed:
  description: Whether the settings file was (or would be) written.
  returned: always
  type: bool
  sample: true
enabled_changed:
  description: Whether the machine was enabled or disabled.
  returned: always
  type: bool
  sample: true
started:
  description: Whether the machine was started.
  returned: always
  type: bool
  sample: true
restarted:
  description: Whether the machine was restarted (new settings, or started again after its image was replaced).
  returned: always
  type: bool
  sample: false
stopped:
  description: Whether the machine was stopped.
  returned: always
  type: bool
  sample: false
removed:
  description: Whether the machine's tree, settings or record were removed (O(state=absent)).
  returned: always
  type: bool
  sample: false
pending_restart:
  description: With O(state=present), the settings changed while the machine runs; they apply at its next start.
  returned: always
  type: bool
  sample: false
journal:
  description: On failure to start, the last O(journal_lines) lines of the machine unit's journal.
  returned: failure
  type: list
  elements: str
  sample: ["2024-05-02T10:00:01+0000 node3 systemd-nspawn[812]: Directory /var/lib/machines/analysis doesn't look like an OS root directory"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.nspawn import ARGUMENT_SPEC, Machine
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.manager import Systemd
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def run_systemd(argv, env):
        return module.run_command(argv, environ_update=env)

    def run(argv):
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    systemd = Systemd(run_systemd, systemctl=module.get_bin_path("systemctl", required=True),
                      journalctl=module.get_bin_path("journalctl", required=True),
                      analyze=module.get_bin_path("systemd-analyze"))
    try:
        result = Machine(systemd, run, module.get_bin_path, module.params, check_mode=module.check_mode,
                         diff=module._diff).apply()  # pylint: disable=protected-access
    except UnitError as exc:
        fail_from(module, exc, name=module.params["name"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
