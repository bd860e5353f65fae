# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node root: a Debian tree built once with debootstrap and cached outside the checkout.

The cache is keyed by the root's package list (``root_key()``); every node gets an overlayfs on top of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

from .common import TestbedError, _log, _require, cache_dir

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
    # service_access: polkit rules where polkitd runs, a sudoers drop-in (visudo-checked) where it does not.
    "polkitd",
    "libpam-systemd",
    "sudo",
)
# Bump when the post-debootstrap preparation of the root changes.
ROOT_LAYOUT_VERSION = "1"


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
