# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet: N Debian nodes with real systemd and sshd in ``systemd-nspawn``.

Every node boots on its own overlayfs over the cached node root and listens on its own loopback address
``127.0.x.N``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from typing import Any

from .cgroups import _enter_cgroups, _make_cgroups, _remove_cgroups
from .common import (TestbedError, _is_mounted, _is_our_process, _log, _port_open, _read_json, _reap_or_alive,
                     _require, _terminate, _umount, _write_json_atomic)
from .live import _register_live, _unregister_live
from .noderoot import node_root

MASKED_UNITS = ("systemd-modules-load.service",)

NODE_BOOT_TIMEOUT = 90.0
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)


# Every node's systemd, journald, logind and dbus take inotify instances from the host's per-user limit (the nodes
# run as the host's root). Debian's default of 128 is used up by two six-node fleets at once, and a node then boots
# degraded ("Failed to create inotify object: Too many open files").
INOTIFY_INSTANCES = 1024
INOTIFY_SYSCTL = "/proc/sys/fs/inotify/max_user_instances"


def _ensure_inotify_instances() -> None:
    """Raise the host's fs.inotify.max_user_instances to INOTIFY_INSTANCES when it is lower (root only)."""
    try:
        with open(INOTIFY_SYSCTL, encoding="ascii") as handle:
            current = int(handle.read().strip())
        if current < INOTIFY_INSTANCES:
            with open(INOTIFY_SYSCTL, "w", encoding="ascii") as handle:
                handle.write(f"{INOTIFY_INSTANCES}\n")
            _log(f"raised fs.inotify.max_user_instances from {current} to {INOTIFY_INSTANCES} (each node runs systemd)")
    except (OSError, ValueError) as exc:
        _log(f"could not raise fs.inotify.max_user_instances ({exc}); several fleets at once may boot degraded")


class Fleet:
    """N nspawn nodes with real systemd and sshd, node N reachable over SSH at NET.N."""

    MARKER = "systemd-nspawn"

    def __init__(self, state_dir: str, nodes: int = 4, net: str = "127.0.1") -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.count = nodes
        self.net = net
        self.nodes: dict[str, dict[str, Any]] = {}
        self._record: str | None = None

    # paths ------------------------------------------------------------------------------
    @property
    def key_path(self) -> str:
        return os.path.join(self.state_dir, "id_ed25519")

    @property
    def inventory_path(self) -> str:
        return os.path.join(self.state_dir, "inventory.yml")

    @property
    def ssh_config_path(self) -> str:
        return os.path.join(self.state_dir, "ssh_config")

    @property
    def names(self) -> list[str]:
        return sorted(self.nodes, key=lambda n: int(n[4:]))

    def address(self, name: str) -> str:
        return self.nodes[name]["address"]

    # lifecycle ---------------------------------------------------------------------------
    @classmethod
    def attach(cls, state_dir: str) -> Fleet:
        fleet = cls(state_dir)
        state = _read_json(os.path.join(fleet.state_dir, "fleet.json"))
        fleet.count = state.get("count", 0)
        fleet.net = state.get("net", fleet.net)
        fleet.nodes = state.get("nodes", {})
        fleet._record = state.get("live_record")
        return fleet

    def up(self, owner: int | None = None) -> Fleet:
        _require("systemd-nspawn", "ssh", "ssh-keygen", "mount", "umount")
        if os.geteuid() != 0:
            raise TestbedError("the test fleet needs root (systemd-nspawn and overlay mounts)")
        if not 1 <= self.count <= 250:
            raise TestbedError(f"--nodes must be between 1 and 250, not {self.count}")
        _ensure_inotify_instances()
        root = node_root()
        os.makedirs(self.state_dir, exist_ok=True)
        if not os.path.exists(self.key_path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sciops-fleet-test",
                            "-f", self.key_path], check=True)
        busy = [f"{self.net}.{i}" for i in range(1, self.count + 1) if _port_open(f"{self.net}.{i}", 22)]
        if busy:
            raise TestbedError(f"something already listens on port 22 of {', '.join(busy)}: another fleet runs on "
                               f"{self.net}.x; stop it, or choose other addresses (--net, SCIOPS_TEST_NET)")
        self._record = _register_live("fleet", self.state_dir, owner)
        started = time.monotonic()
        try:
            for index in range(1, self.count + 1):
                name = f"node{index}"
                self.nodes[name] = {"address": f"{self.net}.{index}", "pid": None, "frozen": False}
                self._prepare_node(name, root)
                self._save_state()
            for name in self.names:
                self._spawn(name)
            self._save_state()
            for name in self.names:
                self._wait_booted(name)
        except BaseException:
            self.down()
            raise
        self._write_inventory()
        _log(f"fleet of {self.count} node(s) up in {time.monotonic() - started:.1f}s; "
             f"inventory {self.inventory_path}")
        return self

    def down(self) -> None:
        """Stop every node, unmount and remove its overlay; safe to call more than once."""
        errors = []
        for name in list(self.nodes):
            try:
                self.stop(name)
                node_dir = self._node_dir(name)
                _umount(os.path.join(node_dir, "merged"))
                shutil.rmtree(node_dir, ignore_errors=True)
            except TestbedError as exc:
                errors.append(f"{name}: {exc}")
        self.nodes = {}
        _unregister_live(self._record)
        self._record = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, "fleet.json"))
        if errors:
            raise TestbedError("teardown incomplete: " + "; ".join(errors))

    def stop(self, name: str) -> None:
        """Shut node NAME down (SIGTERM to its nspawn process); its overlay and state are kept."""
        node = self.nodes[name]
        if node.get("pid"):
            self.thaw(name)
            _terminate(node["pid"], self.MARKER)
        node["pid"] = None
        _remove_cgroups(node.pop("cgroups", []))
        self._save_state()

    def start(self, name: str) -> None:
        """Boot node NAME again on its existing overlay and wait until it is running."""
        if self.nodes[name].get("pid") and _is_our_process(self.nodes[name]["pid"], self.MARKER):
            return
        self._spawn(name)
        self._save_state()
        self._wait_booted(name)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def freeze(self, name: str) -> None:
        """Stop every process of node NAME (SIGSTOP): it stays up but answers nothing (unreachable)."""
        for pid in self._container_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.nodes[name]["frozen"] = True
        self._save_state()

    def thaw(self, name: str) -> None:
        if not self.nodes[name].get("frozen"):
            return
        for pid in self._container_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.nodes[name]["frozen"] = False
        self._save_state()

    def ssh(self, name: str, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run COMMAND on node NAME over SSH as root."""
        result = subprocess.run(
            ["ssh", "-i", self.key_path, *SSH_OPTIONS, f"root@{self.address(name)}", command],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise TestbedError(f"{name}: '{command}' exited {result.returncode}: {result.stderr.strip()}")
        return result

    # internals ---------------------------------------------------------------------------
    def _node_dir(self, name: str) -> str:
        return os.path.join(self.state_dir, "nodes", name)

    def _save_state(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        _write_json_atomic(os.path.join(self.state_dir, "fleet.json"), {
            "count": self.count, "net": self.net, "nodes": self.nodes, "live_record": self._record,
        })

    def _prepare_node(self, name: str, root: str) -> None:
        node_dir = self._node_dir(name)
        merged = os.path.join(node_dir, "merged")
        for sub in ("upper", "work", "merged"):
            os.makedirs(os.path.join(node_dir, sub), exist_ok=True)
        if not _is_mounted(merged):
            options = f"lowerdir={root},upperdir={node_dir}/upper,workdir={node_dir}/work"
            result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise TestbedError(f"{name}: overlay mount failed: {result.stderr.strip()}")
        address = self.nodes[name]["address"]
        with open(os.path.join(merged, "etc/hostname"), "w", encoding="utf-8") as handle:
            handle.write(name + "\n")
        conf_dir = os.path.join(merged, "etc/ssh/sshd_config.d")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "50-sciops-testbed.conf"), "w", encoding="utf-8") as handle:
            handle.write(f"ListenAddress {address}\nPermitRootLogin prohibit-password\nUseDNS no\n")
        if not os.path.exists(os.path.join(merged, "etc/ssh/ssh_host_ed25519_key")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
                            "-f", os.path.join(merged, "etc/ssh/ssh_host_ed25519_key")], check=True)
        # With --capability=all this unit would try to load kernel modules into the shared kernel, and
        # fail when several nodes boot at once; a node loads no modules.
        for unit in MASKED_UNITS:
            link = os.path.join(merged, "etc/systemd/system", unit)
            if not os.path.islink(link):
                os.symlink("/dev/null", link)
        ssh_dir = os.path.join(merged, "root/.ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        with open(self.key_path + ".pub", encoding="utf-8") as src:
            public = src.read()
        with open(os.path.join(ssh_dir, "authorized_keys"), "w", encoding="utf-8") as handle:
            handle.write(public)
        os.chmod(os.path.join(ssh_dir, "authorized_keys"), 0o600)

    def _spawn(self, name: str) -> None:
        node_dir = self._node_dir(name)
        cmd = ["systemd-nspawn", "-D", os.path.join(node_dir, "merged"), "-M", name, "-b",
               "--register=no", "--keep-unit", "--console=passive", "--capability=all"]
        if os.path.exists("/dev/fuse"):
            cmd.append("--bind=/dev/fuse")
        cgroups = _make_cgroups(f"{os.path.basename(self.state_dir)}-{hashlib.sha256(self.state_dir.encode()).hexdigest()[:8]}-{name}")
        log = open(os.path.join(node_dir, "console.log"), "ab")  # pylint: disable=consider-using-with
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,  # pylint: disable=consider-using-with
                                    start_new_session=True, preexec_fn=_enter_cgroups(cgroups))
        finally:
            log.close()
        self.nodes[name]["pid"] = proc.pid
        self.nodes[name]["frozen"] = False
        self.nodes[name]["cgroups"] = cgroups

    def _wait_booted(self, name: str) -> None:
        deadline = time.monotonic() + NODE_BOOT_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            pid = self.nodes[name]["pid"]
            if not _reap_or_alive(pid):
                raise TestbedError(f"{name}: systemd-nspawn exited during boot; see "
                                   f"{self._node_dir(name)}/console.log")
            try:
                result = self.ssh(name, "systemctl is-system-running --wait", timeout=30, check=False)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
                continue
            state = result.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.ssh(name, "systemctl --failed --no-legend --plain; "
                                  "journalctl -b -p warning --no-pager -n 30", check=False).stdout
                raise TestbedError(f"{name}: booted degraded; failed units and warnings:\n{failed}")
            last = result.stderr.strip() or state
            time.sleep(0.5)
        console = ""
        with contextlib.suppress(OSError):
            with open(os.path.join(self._node_dir(name), "console.log"), encoding="utf-8", errors="replace") as handle:
                console = "".join(handle.readlines()[-15:])
        raise TestbedError(f"{name}: not running after {NODE_BOOT_TIMEOUT:.0f}s (last: {last}); console:\n{console}")

    def _container_pids(self, name: str) -> list[int]:
        """Every PID inside node NAME: those sharing its init's PID namespace."""
        pid = self.nodes[name].get("pid")
        if not _is_our_process(pid, self.MARKER):
            return []
        children = []
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as handle:
                children = [int(c) for c in handle.read().split()]
        if not children:
            return []
        try:
            namespace = os.readlink(f"/proc/{children[0]}/ns/pid")
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                        pids.append(int(entry))
        return pids

    def _write_inventory(self) -> None:
        lines = ["---", "all:", "  children:", "    fleet:", "      hosts:"]
        for name in self.names:
            lines.append(f"        {name}:")
            lines.append(f"          ansible_host: {self.address(name)}")
        lines += [
            "  vars:",
            "    ansible_user: root",
            f"    ansible_ssh_private_key_file: {self.key_path}",
            "    ansible_ssh_common_args: >-",
            "      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "    ansible_python_interpreter: /usr/bin/python3",
            "    ansible_pipelining: true",
        ]
        with open(self.inventory_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        with open(self.ssh_config_path, "w", encoding="utf-8") as handle:
            for name in self.names:
                handle.write(f"Host {name}\n  HostName {self.address(name)}\n  User root\n"
                             f"  IdentityFile {self.key_path}\n  StrictHostKeyChecking no\n"
                             "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
