# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every testbed component shares: its error, the cache directory, state files, processes, ports, mounts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

STOP_TIMEOUT = 30.0


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


def _write_json_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any]:
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
