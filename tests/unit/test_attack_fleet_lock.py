# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attacks on the controller-side lock (issue 12, item 3) by the operators and local users of one controller.

The default lock directory is shared by every user of the controller (mode 1777, as /tmp), so these tests run
parts of a lock's life as other local users (daemon, nobody): they need root to switch users."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._release import fleet_lock as _fleet_lock
from ansible_collections.sciops.fleet.plugins.module_utils._release.fleet_lock import FleetLock, LockError, process_holder

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switches to other local users")


@pytest.fixture(name="open_tmp")
def fixture_open_tmp():
    """A directory other local users can reach (pytest's tmp_path is under a 0700 directory)."""
    path = tempfile.mkdtemp(prefix="sciops-attack-lock-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _as_user(user, func):
    """Run FUNC() in a child process as local USER; returns ('ok', value) or ('error', message)."""
    entry = pwd.getpwnam(user)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become USER, as another operator's ansible-playbook would be
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.environ.update(USER=user, LOGNAME=user)
            os.umask(0o022)
            try:
                out = ["ok", func()]
            except LockError as exc:
                out = ["error", str(exc)]
            os.write(write_end, json.dumps(out, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


def _shared_dir(tmp_path):
    """A lock directory as the default one is made: created by root (the first run), mode 1777."""
    tmp_path.chmod(0o755)
    path = tmp_path / "locks"
    path.mkdir()
    path.chmod(0o1777)
    return str(path)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # pylint: disable=consider-using-with
    proc.wait()
    return proc.pid


@needs_root
def test_a_second_operator_takes_the_lock_the_first_operator_gave_up(open_tmp):
    directory = _shared_dir(open_tmp)

    def take_and_give_up():
        lock = FleetLock("qserv", directory)
        me = process_holder(os.getpid(), "rollout by daemon")
        lock.acquire(me)
        return lock.release(me)[0]

    def take():
        return FleetLock("qserv", directory).acquire(process_holder(os.getpid(), "rollout by nobody"))[0]

    assert _as_user("daemon", take_and_give_up) == ["ok", True]
    # Observed: ["error", "cannot open .../qserv.guard: [Errno 13] Permission denied; every operator needs write
    # access to ..."]: the guard is created 0666 & ~umask (0644), so only its creator can open it O_RDWR again.
    result = _as_user("nobody", take)
    assert result == ["ok", True], result[1]


@needs_root
def test_a_lock_left_by_another_operators_killed_run_is_taken_over(open_tmp):
    directory = _shared_dir(open_tmp)
    dead = _dead_pid()

    def leave_a_stale_lock():
        me = process_holder(os.getpid(), "rollout by daemon, then killed")
        me["pid"] = dead
        return FleetLock("qserv", directory).acquire(me)[0]

    def take():
        return FleetLock("qserv", directory).acquire(process_holder(os.getpid(), "rollout by nobody"))[0]

    assert _as_user("daemon", leave_a_stale_lock) == ["ok", True]
    # Observed: an error (the guard cannot be opened; with a 0666 guard, os.replace over daemon's lock file in the
    # sticky directory is refused with EPERM, and so is force=true): the killed run blocks every other operator.
    result = _as_user("nobody", take)
    assert result == ["ok", True], result[1]


@needs_root
def test_a_local_user_cannot_make_the_controller_write_through_a_planted_link(open_tmp):
    # Another local user created the lock directory before any run did (it is a fixed path under /var/tmp), and
    # plants links at the names the next run writes: its temporary lock file and the guard.
    open_tmp.chmod(0o755)
    directory = open_tmp / "locks"
    attacker = pwd.getpwnam("nobody")
    directory.mkdir()
    directory.chmod(0o1777)
    os.chown(directory, attacker.pw_uid, attacker.pw_gid)
    victim = open_tmp / "root-only"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    planted_guard_target = open_tmp / "created-by-root"
    lock = FleetLock("qserv", str(directory))

    def plant():
        os.symlink(str(victim), f"{lock.path}.tmp-{os.getppid()}")  # the pid of the run (here: this test)
        os.symlink(str(planted_guard_target), lock.guard_path)
        return True

    assert _as_user("nobody", plant) == ["ok", True]
    try:
        lock.acquire(process_holder(os.getpid(), "rollout by root"))
    except LockError:
        pass  # refusing a directory another user owns, or a link, is fine
    # Observed: the root-only file now holds the lock's JSON (open(tmp, "w") follows the link), and a file
    # created-by-root exists where the planted guard link pointed (os.open(..., O_CREAT) follows it).
    assert victim.read_text() == "precious\n"
    assert not planted_guard_target.exists()


def test_wait_bounds_the_time_a_second_run_waits(tmp_path):
    # A run frozen (SIGSTOP, a hung shared file system) or a local user holding the guard: the next run must
    # still give up after `wait` seconds, as documented ("waits up to rollout_lock_timeout seconds").
    lock = FleetLock("qserv", str(tmp_path))
    lock._ensure_dir()  # pylint: disable=protected-access
    fd = os.open(lock.guard_path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    code = ("import os, sys; sys.path[:0] = %r\n"
            "from ansible_collections.sciops.fleet.plugins.module_utils._release.fleet_lock import FleetLock, LockError, process_holder\n"
            "try:\n  FleetLock('qserv', %r).acquire(process_holder(os.getpid(), 'second'), wait=1)\n"
            "except LockError as exc:\n  print(exc)\n") % (sys.path, str(tmp_path))
    started = time.monotonic()
    try:
        # Observed: TimeoutExpired: flock(LOCK_EX) without LOCK_NB blocks for as long as the guard is held.
        subprocess.run([sys.executable, "-c", code], timeout=15, check=True, capture_output=True)
    finally:
        os.close(fd)
    assert time.monotonic() - started < 15


def test_a_planted_lock_naming_no_process_is_not_held_for_ever(tmp_path):
    # Any user of the shared directory can write a holder that names this controller and boot but no process:
    # _start_ticks(None) is None == pid_start_ticks None, so it is never stale.
    lock = FleetLock("qserv", str(tmp_path))
    os.makedirs(lock.directory, exist_ok=True)
    me = process_holder(os.getpid(), "x")
    with open(lock.path, "w", encoding="utf-8") as handle:
        json.dump({"controller": me["controller"], "boot_id": me["boot_id"], "purpose": "planted"}, handle)
    assert _fleet_lock.is_stale(json.load(open(lock.path, encoding="utf-8")))  # pylint: disable=consider-using-with
