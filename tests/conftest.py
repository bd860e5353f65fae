# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pytest fixtures: the collection on the import path, a real registry, a real fleet, and Ansible runs."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile

import pytest

import testbed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_DIR = os.path.join(REPO, "build", "collections")


def _link_collection() -> None:
    """Make the checkout importable as ansible_collections.sciops.fleet (a symlink under build/)."""
    parent = os.path.join(COLLECTIONS_DIR, "ansible_collections", "sciops")
    link = os.path.join(parent, "fleet")
    os.makedirs(parent, exist_ok=True)
    if os.path.realpath(link) != REPO:
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(REPO, link)
    if COLLECTIONS_DIR not in sys.path:
        sys.path.insert(0, COLLECTIONS_DIR)


_link_collection()
# Subprocesses (ansible-playbook, molecule) find the collection and the venv's tools.
os.environ["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS_DIR
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet: needs the systemd test fleet (root, systemd-nspawn)")
    config.addinivalue_line("markers", "registry: needs the real OCI registry (docker-registry)")


@pytest.fixture(scope="session")
def testbed_root():
    """A session directory for registries and fleets, removed at the end."""
    path = tempfile.mkdtemp(prefix="sciops-testbed-")
    yield path
    # A component that could not be torn down keeps its state file: leave the evidence in place.
    leftovers = [n for n in ("fleet/fleet.json", "registry/registry.json", "auth-registry/registry.json")
                 if os.path.exists(os.path.join(path, n))]
    if not leftovers:
        shutil.rmtree(path, ignore_errors=True)


def _registry(testbed_root, name, username=None, password=None):
    state = os.path.join(testbed_root, name)
    os.makedirs(state)
    reg = testbed.Registry(state, username, password)
    try:
        reg.up(owner=os.getpid())
        yield reg
    finally:
        reg.down()


@pytest.fixture(scope="session")
def registry(testbed_root):
    """Debian's docker-registry on a free loopback port, no auth, deletes enabled."""
    yield from _registry(testbed_root, "registry")


@pytest.fixture(scope="session")
def auth_registry(testbed_root):
    """The same registry behind htpasswd (bcrypt) basic auth; .username and .password are valid."""
    yield from _registry(testbed_root, "auth-registry", "fleet-ci", secrets.token_urlsafe(16))


@pytest.fixture(scope="session")
def fleet(testbed_root):
    """SCIOPS_TEST_NODES (default 6) nodes with real systemd and sshd, reachable at 127.0.1.N."""
    nodes = int(os.environ.get("SCIOPS_TEST_NODES", "6"))
    state = os.path.join(testbed_root, "fleet")
    instance = testbed.Fleet(state, nodes=nodes, net=os.environ.get("SCIOPS_TEST_NET", "127.0.1"))
    try:
        instance.up(owner=os.getpid())
        yield instance
    finally:
        instance.down()


@pytest.fixture
def ansible(tmp_path):
    """Run Ansible through ansible-runner (as AWX does) and get the per-host outcome.

    ``ansible(inventory, module=..., module_args=..., hosts=...)`` or ``ansible(inventory, playbook=PATH)``
    returns an ``AnsibleRun`` with ``rc``, ``status``, ``stdout`` and ``hosts[name] -> list of results``.
    """
    def run(inventory, hosts="all", module=None, module_args="", playbook=None, extravars=None,
            envvars=None, timeout=600, check=False):
        import ansible_runner  # pylint: disable=import-outside-toplevel
        private = tempfile.mkdtemp(prefix="run-", dir=tmp_path)
        env = {
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_DIR,
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            # A per-run control path: no SSH master from an earlier run masks a dead node.
            "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(private, "cp"),
            "ANSIBLE_TIMEOUT": "10",
            "ANSIBLE_NOCOLOR": "1",
            # The test's own lock directory: runs of other tests on this machine never hold its locks.
            "SCIOPS_FLEET_LOCK_DIR": str(tmp_path / "locks"),
        }
        env.update(envvars or {})
        cmdline = "--check --diff" if check else None
        kwargs = {"private_data_dir": private, "inventory": inventory, "quiet": True,
                  "envvars": env, "extravars": extravars or {}, "timeout": timeout}
        if cmdline:
            kwargs["cmdline"] = cmdline
        if playbook:
            kwargs["playbook"] = playbook
        else:
            kwargs.update(host_pattern=hosts, module=module, module_args=module_args)
        runner = ansible_runner.run(**kwargs)
        return AnsibleRun(runner)
    return run


class AnsibleRun:
    """The outcome of one ansible-runner run, per host."""

    def __init__(self, runner):
        self.rc = runner.rc
        self.status = runner.status
        self.stdout = runner.stdout.read() if runner.stdout else ""
        # Per-host counters of the play recap: ok, changed, failures, dark (unreachable), skipped, ...
        self.stats = runner.stats or {}
        self.ok: dict[str, list[dict]] = {}
        self.failed: dict[str, list[dict]] = {}
        self.unreachable: dict[str, list[dict]] = {}
        for event in runner.events:
            data = event.get("event_data", {})
            host = data.get("host")
            kind = event.get("event")
            if kind == "runner_on_ok":
                self.ok.setdefault(host, []).append(data.get("res", {}))
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                self.failed.setdefault(host, []).append(data.get("res", {}))
            elif kind == "runner_on_unreachable":
                self.unreachable.setdefault(host, []).append(data.get("res", {}))

    def __repr__(self):
        return (f"AnsibleRun(rc={self.rc}, ok={sorted(self.ok)}, failed={sorted(self.failed)}, "
                f"unreachable={sorted(self.unreachable)})\n{self.stdout[-4000:]}")


@pytest.fixture
def run_module(tmp_path):
    """Run a module of this collection on this machine, as Ansible would, without a play.

    ``run_module("oras_pull", check=False, diff=False, **args)`` returns the module's JSON result, with
    ``failed`` set when it failed and ``elapsed`` (seconds) added.
    """
    counter = iter(range(1_000_000))

    def run(name, /, check=False, diff=False, **args):
        import json  # pylint: disable=import-outside-toplevel
        import subprocess  # pylint: disable=import-outside-toplevel
        import time  # pylint: disable=import-outside-toplevel
        path = tmp_path / f"module-args-{next(counter)}.json"
        payload = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}), encoding="utf-8")
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", f"ansible_collections.sciops.fleet.plugins.modules.{name}", str(path)],
            capture_output=True, text=True, check=False, timeout=900,
            env=dict(os.environ, PYTHONPATH=COLLECTIONS_DIR),
        )
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"{name} printed no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
        result["elapsed"] = time.monotonic() - started
        return result
    return run
