# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller-side lock of an application: one holder, named in the refusal; a dead holder's lock taken over."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._release.fleet_lock import FleetLock, LockError, process_holder


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # pylint: disable=consider-using-with
    proc.wait()
    return proc.pid


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    lock = FleetLock("qserv", str(tmp_path))
    me = process_holder(os.getpid(), "rollout of reg/qserv@sha256:aaa")
    assert lock.acquire(me) == (True, None)
    assert lock.acquire(me) == (False, None)  # the same run again
    other = process_holder(os.getppid(), "rollout of reg/qserv@sha256:bbb")
    with pytest.raises(LockError) as refused:
        lock.acquire(other, wait=1, interval=0.2)
    message = str(refused.value)
    assert "qserv is locked by rollout of reg/qserv@sha256:aaa" in message and f"pid {os.getpid()}" in message
    assert me["started"] in message and me["controller"] in message
    with pytest.raises(LockError):
        lock.release(other)
    assert lock.release(me)[0] and lock.holder() is None
    assert lock.acquire(other) == (True, None)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    lock = FleetLock("qserv", str(tmp_path))
    gone = process_holder(os.getpid(), "rollout of reg/qserv:stable")
    gone["pid"] = _dead_pid()
    lock.acquire(gone)
    changed, stale = lock.acquire(process_holder(os.getpid(), "rollout of reg/qserv:candidate"))
    assert changed and stale["pid"] == gone["pid"]
    assert lock.holder()["purpose"] == "rollout of reg/qserv:candidate"


def test_check_mode_takes_nothing(tmp_path):
    lock = FleetLock("qserv", str(tmp_path))
    assert lock.acquire(process_holder(os.getpid(), "check"), check_mode=True) == (True, None)
    assert lock.holder() is None
