# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: nspawn
short_description: Run tasks inside a running systemd-nspawn machine on the host Ansible runs on
version_added: 0.1.0
description:
  - Runs commands in a running systemd-nspawn machine on the same host as Ansible, and copies files into and out
    of it, by entering the namespaces (mount, UTS, IPC, network, PID, and cgroup and user when the machine has its
    own) of the machine's leader process with C(nsenter). Modules run with the machine's own Python and see its
    file system, host name, processes and network.
  - The machine is found by name (the inventory host name, or C(ansible_host)) - through C(machinectl) when
    systemd-machined knows it (machines started by C(systemd-nspawn@.service), C(machinectl start), or
    M(sciops.fleet.nspawn_container)); otherwise by the C(systemd-nspawn) process whose C(--machine) (or, without
    one, whose C(--directory)) names it, which covers machines started with C(--register=no).
  - Nothing needs to run inside the machine - no SSH server, no D-Bus, not even an init system; it needs
    C(/bin/sh) and C(cat), and Python for modules.
  - Needs root on the host (entering another process's namespaces does), and a machine on the same host. To reach
    machines on remote nodes, run the play on those nodes (C(ansible-pull), an AWX execution node), or use
    C(delegate_to) with a host that is the node itself.
  - Commands run with a clean environment (C(PATH), C(HOME=/root), C(TERM=dumb)) and, in a booted machine, outside
    the machine's own systemd (its C(systemctl) works, but processes a task leaves behind are not in a unit of the
    machine).
author:
  - sciops.fleet maintainers (@sciops)
extends_documentation_fragment:
  - connection_pipelining
options:
  remote_addr:
    description: The machine's name.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_nspawn_machine
  nspawn_leader:
    description:
      - The host PID of the machine's leader (its init, or the stub init of C(--as-pid2)), to skip the lookup.
    type: int
    vars:
      - name: ansible_nspawn_leader
  nsenter_path:
    description: The C(nsenter) program (util-linux) on the host.
    type: str
    default: nsenter
    vars:
      - name: ansible_nspawn_nsenter
  machinectl_path:
    description: The C(machinectl) program on the host; when absent, only the process lookup is used.
    type: str
    default: machinectl
    vars:
      - name: ansible_nspawn_machinectl
notes:
  - C(remote_user) is ignored; tasks run as root in the machine. Use C(become) with a become method the machine
    has (C(su), C(sudo), C(runuser)) to run as another user.
"""

EXAMPLES = r"""
---
# inventory.yml: the machines of this host, reached through nsenter
# all:
#   hosts:
#     analysis:
#       ansible_connection: sciops.fleet.nspawn
#       ansible_python_interpreter: /usr/bin/python3

- name: Configure a machine from inside
  hosts: analysis
  gather_facts: false
  tasks:
    - name: Write the site configuration inside the machine
      ansible.builtin.copy:
        dest: /etc/site.conf
        content: "site = lab-a\n"
        mode: "0644"
"""

import os
import shlex
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

# The namespaces a task enters always, and those it enters only when the machine has its own (entering one's
# own user namespace is an error).
ALWAYS = (("mnt", "--mount"), ("uts", "--uts"), ("ipc", "--ipc"), ("net", "--net"), ("pid", "--pid"))
IF_DIFFERENT = (("cgroup", "--cgroup"), ("user", "--user"))

MACHINE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "TERM": "dumb"}


def machine_of_argv(argv):
    """The machine name a ``systemd-nspawn`` command line runs: ``-M``/``--machine``, else the directory's name."""
    name = directory = None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        if arg in ("-M", "--machine", "-D", "--directory"):
            value = next(args, None)
            if arg in ("-M", "--machine"):
                name = value
            else:
                directory = value
        elif arg.startswith("--machine="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-M") and len(arg) > 2:
            name = arg[2:]
        elif arg.startswith("--directory="):
            directory = arg.split("=", 1)[1]
        elif arg.startswith("-D") and len(arg) > 2:
            directory = arg[2:]
        elif not arg.startswith("-"):
            break  # the command to run in the machine begins
    if name:
        return name
    return os.path.basename(directory.rstrip("/")) if directory else None


def _read_cmdline(proc_root, pid):
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def leader_from_processes(name, proc_root="/proc"):
    """The leader PID of machine NAME from the process table: the child of the systemd-nspawn running it."""
    for entry in sorted(os.listdir(proc_root)):
        if not entry.isdigit():
            continue
        argv = _read_cmdline(proc_root, entry)
        if not argv or os.path.basename(argv[0]) != "systemd-nspawn" or machine_of_argv(argv) != name:
            continue
        try:
            with open(os.path.join(proc_root, entry, "task", entry, "children"), encoding="ascii") as handle:
                children = handle.read().split()
        except OSError:
            continue
        if children:
            return int(children[0])
    return None


def namespace_flags(leader, proc_root="/proc", self_pid="self"):
    """nsenter's flags for LEADER: the fixed namespaces, plus cgroup and user when they differ from ours."""
    flags = [flag for _ns, flag in ALWAYS]
    for namespace, flag in IF_DIFFERENT:
        try:
            theirs = os.readlink(os.path.join(proc_root, str(leader), "ns", namespace))
            ours = os.readlink(os.path.join(proc_root, str(self_pid), "ns", namespace))
        except OSError:
            continue
        if theirs != ours:
            flags.append(flag)
    return flags


def nsenter_argv(nsenter, leader, flags, command):
    """The command line that runs COMMAND (a list) in the machine whose leader is LEADER."""
    return [nsenter, "--target", str(leader), *flags, "--root", "--wd", "--", *command]


class Connection(ConnectionBase):
    """Run commands in a local systemd-nspawn machine through nsenter."""

    transport = "sciops.fleet.nspawn"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._leader = None
        self._flags = None
        self._nsenter = None

    @property
    def machine(self):
        return self.get_option("remote_addr")

    def _connect(self):
        if self._connected:
            return self
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure(
                f"sciops.fleet.nspawn needs root on the host to enter machine {self.machine}; run ansible as root")
        self._nsenter = shutil.which(self.get_option("nsenter_path"))
        if not self._nsenter:
            raise AnsibleConnectionFailure(
                f"{self.get_option('nsenter_path')} not found on the host; install util-linux")
        self._leader = self.get_option("nspawn_leader") or self._find_leader()
        if not os.path.exists(f"/proc/{self._leader}"):
            raise AnsibleConnectionFailure(f"machine {self.machine}: leader process {self._leader} is gone")
        self._flags = namespace_flags(self._leader)
        display.vvv(f"NSPAWN machine {self.machine}: leader pid {self._leader}, entering {' '.join(self._flags)}",
                    host=self.machine)
        self._connected = True
        return self

    def _find_leader(self):
        machinectl = shutil.which(self.get_option("machinectl_path"))
        if machinectl:
            proc = subprocess.run([machinectl, "show", "--property=Leader", "--value", "--", self.machine],
                                  capture_output=True, text=True, check=False)
            value = proc.stdout.strip()
            if proc.returncode == 0 and value.isdigit() and value != "0":
                return int(value)
        leader = leader_from_processes(self.machine)
        if leader is None:
            raise AnsibleConnectionFailure(
                f"no running systemd-nspawn machine named {self.machine} on this host (asked machinectl and looked "
                "for a systemd-nspawn process with that --machine); start it, or set ansible_nspawn_leader")
        return leader

    def _argv(self, command):
        return nsenter_argv(self._nsenter, self._leader, self._flags, command)

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        executable = self._play_context.executable or "/bin/sh"
        argv = self._argv([executable, "-c", cmd])
        display.vvv(f"EXEC {shlex.join(argv)}", host=self.machine)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                stderr=subprocess.PIPE, env=dict(MACHINE_ENV))
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self.machine)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        argv = self._argv(["/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"])
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
            proc = subprocess.run(argv, stdin=source, capture_output=True, env=dict(MACHINE_ENV), check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"failed to write {out_path} in machine {self.machine}: "
                               f"{to_native(proc.stderr).strip()}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self.machine)
        argv = self._argv(["/bin/sh", "-c", f"cat < {shlex.quote(in_path)}"])
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as dest:
            proc = subprocess.run(argv, stdout=dest, stderr=subprocess.PIPE, env=dict(MACHINE_ENV), check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"failed to read {in_path} in machine {self.machine}: "
                               f"{to_native(proc.stderr).strip()}")

    def close(self):
        self._connected = False
