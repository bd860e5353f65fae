# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real test infrastructure for sciops.fleet: an OCI registry and a fleet of systemd nodes.

One implementation serves the pytest fixtures (tests/conftest.py), the molecule scenario and the
benchmarks. Nothing here is faked:

* ``Registry`` (``registry.py``) runs Debian's ``docker-registry`` (CNCF distribution) on a free loopback
  port with its storage in a temporary directory, optionally behind htpasswd (bcrypt) basic auth.
* ``Fleet`` (``fleet.py``) boots N Debian nodes with real systemd and sshd in ``systemd-nspawn``. The node
  root (``noderoot.py``) is built once with debootstrap and cached outside the checkout, keyed by its
  package list; every node gets an overlayfs on top of it and listens on its own loopback address
  ``127.0.x.N``.
* ``ThrottledProxy`` (``proxy.py``) slows a connection down so that a test can interrupt a transfer.

Every process started is recorded by PID in a state file, and every testbed registers itself under
``<cache>/live/`` (``live.py``) so that ``sweep`` (``teardown.py``) can tear down what a killed test run
left behind. ``common.py`` holds what they share (the error, the cache directory, state files, processes,
ports, mounts), ``cgroups.py`` the nodes' cgroups.

Command line (``python3 tests/testbed --help``, ``cli.py``)::

    python3 tests/testbed root                                         build or reuse the cached node root
    testbed fleet up --state DIR [--nodes 4] [--net 127.0.1]
    testbed fleet down --state DIR
    testbed fleet {stop,start,restart,freeze,thaw} --state DIR --node NODE
    testbed registry up --state DIR [--auth USER:PASSWORD]
    testbed registry down --state DIR
    testbed sweep [--all]                                tear down testbeds whose owner is gone
"""

from __future__ import annotations

from .cli import main
from .common import TestbedError, cache_dir, free_port
from .fleet import SSH_OPTIONS, Fleet
from .noderoot import NODE_PACKAGES, SUITE, node_root, root_key
from .proxy import ThrottledProxy
from .registry import Registry
from .teardown import sweep

__all__ = [
    "NODE_PACKAGES", "SSH_OPTIONS", "SUITE", "Fleet", "Registry", "TestbedError", "ThrottledProxy",
    "cache_dir", "free_port", "main", "node_root", "root_key", "sweep",
]
