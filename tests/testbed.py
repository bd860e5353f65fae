# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real test infrastructure for sciops.fleet: an OCI registry and a fleet of systemd nodes.

One implementation serves the pytest fixtures (tests/conftest.py), the molecule scenario and the
benchmarks. Nothing here is faked:

* ``Registry`` runs Debian's ``docker-registry`` (CNCF distribution) on a free loopback port with
  its storage in a temporary directory, optionally behind htpasswd (bcrypt) basic auth.
* ``Fleet`` boots N Debian nodes with real systemd and sshd in ``systemd-nspawn``. The node root is
  built once with debootstrap and cached outside the checkout, keyed by its package list; every node
  gets an overlayfs on top of it and listens on its own loopback address ``127.0.x.N``.

Every process started is recorded by PID in a state file, and every testbed registers itself under
``<cache>/live/`` so that ``sweep`` can tear down what a killed test run left behind.

Command line (``python3 tests/testbed.py --help``)::

    python3 tests/testbed.py root                                      build or reuse the cached node root
    testbed.py fleet up --state DIR [--nodes 4] [--net 127.0.1]
    testbed.py fleet down --state DIR
    testbed.py fleet {stop,start,restart,freeze,thaw} --state DIR --node NODE
    testbed.py registry up --state DIR [--auth USER:PASSWORD]
    testbed.py registry down --state DIR
    testbed.py sweep [--all]                             tear down testbeds whose owner is gone
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

SUITE = "bookworm"
# The node root's package list. Changing it changes the cache key, so a new root is built once.
NODE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "systemd-container",
    "squashfuse",
    "fuse3",
    "rpm",
    "iproute2",
)
# Bump when the post-debootstrap preparation of the root changes.
ROOT_LAYOUT_VERSION = "1"

MASKED_UNITS = ("systemd-modules-load.service",)

NODE_BOOT_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
)


class TestbedError(Exception):
    """A testbed component could not be built, started or stopped."""


def cache_dir() -> str:
    """Where the node root and the live-testbed records are kept (outside any checkout)."""
    base = os.environ.get("SCIOPS_FLEET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sciops-fleet"
    )
    os.makedirs(base, exist_ok=True)
    return base


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _require(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise TestbedError(
            f"missing command(s): {', '.join(missing)}; run 'make system-deps' "
            "(tools/install-system-deps.sh) as root to install them"
        )


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _is_our_process(pid: int | None, marker: str) -> bool:
    """True when PID still runs the process we started (its command line holds MARKER)."""
    return bool(pid) and _pid_alive(pid) and marker in _cmdline(pid)


def _terminate(pid: int, marker: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process we started, SIGKILL it after TIMEOUT; a reused PID is left alone."""
    if not _is_our_process(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _reap_or_alive(pid):
            return
        time.sleep(0.1)
    _log(f"pid {pid} did not stop within {timeout:.0f}s; sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _reap_or_alive(pid):
        time.sleep(0.1)


def _reap_or_alive(pid: int) -> bool:
    """Reap PID if it is our child and has exited; True while it still runs."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    if not _pid_alive(pid):
        return False
    # A zombie that is not our child counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == real for line in handle)


def _umount(path: str) -> None:
    for attempt in range(10):
        if not _is_mounted(path):
            return
        result = subprocess.run(["umount", path], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        time.sleep(0.3 * (attempt + 1))
    subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    if _is_mounted(path):
        raise TestbedError(f"cannot unmount {path}")


# --------------------------------------------------------------------------------------------
# cgroups: each node in its own, or the nodes' systemd instances share one tree and fight over it


def _cgroup_roots() -> list[str]:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # unified hierarchy only
        return ["/sys/fs/cgroup"]
    return [path for path in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
            if os.path.exists(os.path.join(path, "cgroup.procs"))]


def _make_cgroups(tag: str) -> list[str]:
    """Create a cgroup named TAG in every hierarchy systemd uses.

    systemd-nspawn with --keep-unit puts the container below the cgroup it was started in. Started from
    one shared cgroup, every node's systemd would manage the same /payload/system.slice/... groups: units
    then fail to start ("Failed to attach to cgroup") and one node's stop can reach into another.
    """
    paths = []
    for root in _cgroup_roots():
        path = os.path.join(root, "sciops-testbed", tag)
        os.makedirs(path, exist_ok=True)
        paths.append(path)
    return paths


def _enter_cgroups(paths: list[str]):
    def enter() -> None:
        for path in paths:
            with open(os.path.join(path, "cgroup.procs"), "w", encoding="ascii") as handle:
                handle.write("0")
    return enter


def _remove_cgroups(paths: list[str]) -> None:
    """Remove the cgroups (bottom up; a cgroup goes away by rmdir once it holds no process)."""
    for path in paths:
        if not os.path.isdir(path):
            continue
        for _attempt in range(20):
            for current, _dirs, _files in os.walk(path, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(current)
            if not os.path.exists(path):
                break
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# live-testbed records, so that a killed run can be cleaned up later


def _live_dir() -> str:
    path = os.path.join(cache_dir(), "live")
    os.makedirs(path, exist_ok=True)
    return path


def _register_live(kind: str, state_dir: str, owner: int | None) -> str:
    record = os.path.join(_live_dir(), f"{kind}-{uuid.uuid4().hex[:12]}.json")
    _write_json_atomic(record, {"kind": kind, "state_dir": os.path.abspath(state_dir), "owner": owner})
    return record


def _unregister_live(record: str | None) -> None:
    if record:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record)


def sweep(everything: bool = False) -> int:
    """Tear down testbeds whose owning process is gone (all of them with EVERYTHING). Returns a count."""
    count = 0
    for name in sorted(os.listdir(_live_dir())):
        record = os.path.join(_live_dir(), name)
        data = _read_json(record)
        owner = data.get("owner")
        if not everything and (owner is None or _pid_alive(owner)):
            continue
        _log(f"sweeping {data.get('kind')} at {data.get('state_dir')} (owner {owner})")
        if data.get("kind") == "fleet":
            Fleet.attach(data["state_dir"]).down()
        elif data.get("kind") == "registry":
            Registry.attach(data["state_dir"]).down()
        _unregister_live(record)
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# registry


class Registry:
    """Debian's docker-registry on a free loopback port, storage in STATE_DIR, deletes enabled."""

    MARKER = "docker-registry"

    def __init__(self, state_dir: str, username: str | None = None, password: str | None = None):
        self.state_dir = os.path.abspath(state_dir)
        self.username = username
        self.password = password
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._record: str | None = None

    # public attributes -------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of a reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> str:
        """The registry's log, which holds one access-log line per request."""
        return os.path.join(self.state_dir, "registry.log")

    @property
    def storage_dir(self) -> str:
        return os.path.join(self.state_dir, "storage")

    def access_log(self) -> list[str]:
        """Access-log lines (``"GET /v2/... HTTP/1.1" 200 ...``) written so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return [line.rstrip("\n") for line in handle if '"' in line and "HTTP/1." in line]
        except FileNotFoundError:
            return []

    # lifecycle ---------------------------------------------------------------------------
    @classmethod
    def attach(cls, state_dir: str) -> Registry:
        """A handle on a registry started earlier (by another process) from its state file."""
        reg = cls(state_dir)
        state = _read_json(os.path.join(reg.state_dir, "registry.json"))
        reg.port = state.get("port")
        reg.pid = state.get("pid")
        reg.username = state.get("username")
        reg.password = state.get("password")
        reg._record = state.get("live_record")
        return reg

    def up(self, owner: int | None = None) -> Registry:
        _require("docker-registry")
        if self.username and not shutil.which("htpasswd"):
            _require("htpasswd")
        os.makedirs(self.storage_dir, exist_ok=True)
        self._record = _register_live("registry", self.state_dir, owner)
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            try:
                self._start_process()
                _log(f"registry ready at {self.url} (pid {self.pid}, auth={'yes' if self.username else 'no'})")
                return self
            except TestbedError as exc:
                last_error = str(exc)
                self._stop_process()
        self.down()
        raise TestbedError(f"docker-registry did not start: {last_error}; see {self.log_path}")

    def stop(self) -> None:
        """Stop the registry process (a fault: clients see refused connections); storage is kept."""
        self._stop_process()
        self._save_state()

    def start(self) -> None:
        """Start the registry again on the same port with the same storage."""
        self._start_process()

    def _start_process(self) -> None:
        config = self._write_config()
        log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        try:
            self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ["docker-registry", "serve", config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        self._save_state()
        self._wait_ready()

    def down(self) -> None:
        self._stop_process()
        shutil.rmtree(self.storage_dir, ignore_errors=True)
        _unregister_live(self._record)
        self._record = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, "registry.json"))

    def _stop_process(self) -> None:
        if self.pid:
            _terminate(self.pid, self.MARKER, timeout=10)
        self.pid = None
        self._proc = None

    def _save_state(self) -> None:
        _write_json_atomic(os.path.join(self.state_dir, "registry.json"), {
            "port": self.port, "pid": self.pid, "username": self.username,
            "password": self.password, "live_record": self._record,
        })

    def _write_config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage_dir}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.username:
            htpasswd = os.path.join(self.state_dir, "htpasswd")
            result = subprocess.run(
                ["htpasswd", "-B", "-b", "-n", self.username, self.password or ""],
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise TestbedError(f"htpasswd failed: {result.stderr.strip()}")
            with open(htpasswd, "w", encoding="utf-8") as handle:
                handle.write(result.stdout.strip() + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: sciops-fleet-test", f"    path: {htpasswd}"]
        config = os.path.join(self.state_dir, "config.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return config

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise TestbedError(f"exited with status {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TestbedError(f"no answer on {self.url}/v2/ within {timeout:.0f}s")


# --------------------------------------------------------------------------------------------
# network faults


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 that forwards to UPSTREAM at RATE bytes/s per connection.

    Slows a transfer down enough for a test to interrupt it (stop the registry behind it) at a known
    point. It runs in threads of the test process and stops with ``close()``; connections close when
    either side does.
    """

    def __init__(self, upstream_port: int, rate: int = 8 * 1024 * 1024, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.rate = rate
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ThrottledProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.rate), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        chunk = 64 * 1024
        try:
            while not self._closed.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------
# node root


def root_key() -> str:
    spec = json.dumps({"suite": SUITE, "variant": "minbase", "packages": sorted(NODE_PACKAGES),
                       "layout": ROOT_LAYOUT_VERSION}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def node_root() -> str:
    """Path of the cached node root, built with debootstrap on first use (about a minute)."""
    path = os.path.join(cache_dir(), f"root-{SUITE}-{root_key()}")
    if os.path.isfile(os.path.join(path, ".sciops-root-complete")):
        return path
    _require("debootstrap")
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(path, ".sciops-root-complete")):
            return path
        work = tempfile.mkdtemp(prefix=f"root-{SUITE}-", suffix=".building", dir=cache_dir())
        try:
            cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(NODE_PACKAGES)}", SUITE, work]
            mirror = os.environ.get("SCIOPS_FLEET_MIRROR")
            if mirror:
                cmd.append(mirror)
            _log(f"building the node root with debootstrap ({SUITE}, {len(NODE_PACKAGES)} packages); "
                 "this happens once per package list")
            started = time.monotonic()
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
                raise TestbedError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
            _prepare_root(work)
            with open(os.path.join(work, ".sciops-root-complete"), "w", encoding="utf-8") as handle:
                handle.write(json.dumps({"packages": sorted(NODE_PACKAGES), "suite": SUITE}) + "\n")
            if os.path.exists(path):
                shutil.rmtree(path)
            os.rename(work, path)
            _log(f"node root ready in {time.monotonic() - started:.0f}s at {path}")
        finally:
            if os.path.exists(work):
                shutil.rmtree(work, ignore_errors=True)
    return path


def _prepare_root(root: str) -> None:
    """Make the debootstrapped tree a neutral node: identity is set per node in its overlay."""
    for name in ("etc/hostname", "etc/machine-id"):
        with open(os.path.join(root, name), "w", encoding="utf-8"):
            pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, "var/lib/dbus/machine-id"))
    # Host keys come per node, so that nodes are distinct SSH hosts.
    ssh_dir = os.path.join(root, "etc/ssh")
    for name in os.listdir(ssh_dir):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(ssh_dir, name))
    os.makedirs(os.path.join(root, "etc/ansible/facts.d"), exist_ok=True)


# --------------------------------------------------------------------------------------------
# fleet


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

    def __init__(self, state_dir: str, nodes: int = 4, net: str = "127.0.1"):
        self.state_dir = os.path.abspath(state_dir)
        self.count = nodes
        self.net = net
        self.nodes: dict[str, dict] = {}
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

    def ssh(self, name: str, command: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
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


# --------------------------------------------------------------------------------------------
# command line


def _parse_auth(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    if ":" not in value:
        raise TestbedError("--auth takes USER:PASSWORD")
    user, password = value.split(":", 1)
    return user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="testbed.py", description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("root", help="build or reuse the cached node root and print its path")
    sweep_p = sub.add_parser("sweep", help="tear down testbeds whose owning process is gone")
    sweep_p.add_argument("--all", action="store_true", help="also those started from this command")

    fleet_p = sub.add_parser("fleet", help="the systemd test fleet")
    fleet_p.add_argument("action", choices=["up", "down", "stop", "start", "restart", "freeze", "thaw"])
    fleet_p.add_argument("--node", help="node name for stop/start/restart/freeze/thaw")
    fleet_p.add_argument("--state", required=True, help="directory for the fleet's state and overlays")
    fleet_p.add_argument("--nodes", type=int, default=4)
    fleet_p.add_argument("--net", default="127.0.1", help="first three octets of the node addresses")

    reg_p = sub.add_parser("registry", help="the OCI registry")
    reg_p.add_argument("action", choices=["up", "down"])
    reg_p.add_argument("--state", required=True)
    reg_p.add_argument("--auth", help="USER:PASSWORD for htpasswd basic auth")

    args = parser.parse_args(argv)
    try:
        if args.what == "root":
            print(node_root())
        elif args.what == "sweep":
            print(f"swept {sweep(everything=args.all)} testbed(s)")
        elif args.what == "registry":
            if args.action == "up":
                user, password = _parse_auth(args.auth)
                os.makedirs(args.state, exist_ok=True)
                reg = Registry(args.state, user, password).up()
                print(json.dumps({"url": reg.url, "host": reg.host, "pid": reg.pid}))
            else:
                Registry.attach(args.state).down()
        else:
            if args.action == "up":
                fleet = Fleet(args.state, args.nodes, args.net).up()
                print(fleet.inventory_path)
            elif args.action == "down":
                Fleet.attach(args.state).down()
            else:
                fleet = Fleet.attach(args.state)
                if args.node not in fleet.nodes:
                    raise TestbedError(f"no node {args.node!r} in the fleet at {args.state}; "
                                       f"nodes: {', '.join(fleet.names) or 'none'}")
                getattr(fleet, args.action)(args.node)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
