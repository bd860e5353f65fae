# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller-side lock of an application: one run that changes it at a time. Private to the collection.

A lock is a JSON file ``<lock_dir>/<name>.lock`` naming its holder: what the run does, the controller, the user,
the ansible-playbook process (pid, its start time in clock ticks since boot, the boot id) and when it took the lock.
Every change to it is made under ``flock`` of ``<lock_dir>/<name>.guard``, so two runs never both take it.

A holder on this controller whose process is gone (killed, crashed, or the machine rebooted) is stale: the next run
takes the lock over and says so. A holder on another controller cannot be checked from here; it holds until it
releases the lock or an operator releases it with ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import re
import socket
import time

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

DEFAULT_LOCK_DIR = "/var/tmp/sciops-fleet/locks"
LOCK_DIR_ENV = "SCIOPS_FLEET_LOCK_DIR"


class LockError(FleetError):
    """The fleet lock cannot be taken or released; the message names the holder and what to do."""

    def __init__(self, msg, holder=None):
        super().__init__(msg)
        self.holder = holder


def lock_dir(given=None):
    """The lock directory: GIVEN, else $SCIOPS_FLEET_LOCK_DIR, else the default shared place."""
    return given or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR


def _read(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _start_ticks(pid):
    """The start time of process PID in clock ticks since boot, or None when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])  # field 22; the command name in () may hold spaces
    except (IndexError, ValueError):
        return None


def _iso(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def process_holder(pid, purpose):
    """Who a run of process PID is, for the lock file."""
    ticks = _start_ticks(pid)
    started = None
    if ticks is not None:
        uptime = float((_read("/proc/uptime", "0") or "0").split()[0])
        started = _iso(time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK"))
    return {"purpose": purpose, "controller": socket.gethostname(), "user": getpass.getuser(), "pid": pid,
            "pid_start_ticks": ticks, "boot_id": _read("/proc/sys/kernel/random/boot_id"), "started": started,
            "acquired": _iso(time.time())}


def _same_run(one, other):
    return all(one.get(key) == other.get(key) for key in ("controller", "boot_id", "pid", "pid_start_ticks"))


def is_stale(holder):
    """Whether HOLDER is a run on this controller that is gone (its process ended, or the machine rebooted)."""
    if holder.get("controller") != socket.gethostname():
        return False
    if holder.get("boot_id") != _read("/proc/sys/kernel/random/boot_id"):
        return True
    if not isinstance(holder.get("pid"), int) or holder["pid"] <= 0 or not isinstance(holder.get("pid_start_ticks"), int):
        return True  # names no process of this controller: nothing can ever give it up
    return _start_ticks(holder.get("pid")) != holder.get("pid_start_ticks")


def describe(holder):
    """The holder in words, for messages."""
    return (f"{holder.get('purpose') or 'a run'} (controller {holder.get('controller')}, user {holder.get('user')}, "
            f"ansible-playbook pid {holder.get('pid')}, started {holder.get('started')}, "
            f"lock taken {holder.get('acquired')})")


class FleetLock:
    """The lock NAME (an application) in DIRECTORY."""

    def __init__(self, name, directory=None):
        if not name:
            raise LockError("the lock needs a name (the application it guards)")
        self.name = name
        self.directory = lock_dir(directory)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        self.path = os.path.join(self.directory, f"{safe}.lock")
        self.guard_path = os.path.join(self.directory, f"{safe}.guard")

    def _ensure_dir(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            if self.directory == DEFAULT_LOCK_DIR and os.stat(self.directory).st_uid == os.geteuid():
                os.chmod(self.directory, 0o1777)  # shared by every operator of this controller, as /tmp is
        except OSError as exc:
            raise LockError(f"cannot create the lock directory {self.directory}: {exc}; set the lock directory "
                            f"(rollout_lock_dir, or {LOCK_DIR_ENV}) to a directory every operator can write") from None
        if os.path.islink(self.directory) or not os.path.isdir(self.directory):
            raise LockError(f"the lock directory {self.directory} is a symbolic link or not a directory; a lock is "
                            "never taken through a link: remove it, or set another lock directory")

    def _open(self, path, flags, what):
        """PATH opened without following a link (a link planted in the shared directory is never written through);
        a file this run creates can be used by every operator (the lock passes from user to user)."""
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            hint = ("it is a symbolic link, which no run follows: remove it" if exc.errno == errno.ELOOP else
                    f"every operator needs access to {self.directory}")
            raise LockError(f"cannot open the {what} {path}: {exc.strerror}; {hint}") from None
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o666)
        return fd

    @contextlib.contextmanager
    def _guard(self, deadline=None, clock=time.monotonic, sleep=time.sleep):
        """Hold ``flock`` of the guard file while the lock is read or changed; waits until DEADLINE at most."""
        self._ensure_dir()
        fd = self._open(self.guard_path, os.O_RDONLY | os.O_CREAT, "guard")  # flock needs no write access
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and clock() >= deadline:
                        raise LockError(f"{self.name}: the guard {self.guard_path} stays held by another process "
                                        "(a run that is frozen or stuck); end that process, then try again") from None
                    sleep(0.1)
            yield
        finally:
            os.close(fd)

    def holder(self):
        """The current holder, or None. A lock file that cannot be read as a holder counts as stale."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            return {"purpose": "a lock file that cannot be read (a link?)", "controller": socket.gethostname()}
        with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
        if not text:
            return None  # given up
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return holder if isinstance(holder, dict) else {"purpose": "an unreadable lock file", "controller": socket.gethostname()}

    def _write(self, holder):
        """Write HOLDER (or nothing: given up) into the lock file in place, under the guard: a file in a shared
        sticky directory cannot be replaced by another operator, but it can be rewritten."""
        data = (json.dumps(holder, indent=2, sort_keys=True) + "\n").encode() if holder else b""
        fd = self._open(self.path, os.O_RDWR | os.O_CREAT, "lock")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def try_acquire(self, me, check_mode=False, deadline=None):
        """Take the lock for ME (see process_holder). Returns (changed, stale holder taken over or None); raises
        LockError naming the holder when another live run holds it."""
        with self._guard(deadline):
            holder = self.holder()
            if holder and _same_run(holder, me):
                return False, None
            if holder and not is_stale(holder):
                raise LockError(f"{self.name} is locked by {describe(holder)}", holder)
            if not check_mode:
                try:
                    self._write(me)
                except OSError as exc:
                    raise LockError(f"cannot write the lock {self.path}: {exc}") from None
            return True, holder

    def acquire(self, me, wait=0, check_mode=False, sleep=time.sleep, clock=time.monotonic, interval=1.0):
        """try_acquire, retried for up to WAIT seconds while another run holds the lock."""
        deadline = clock() + max(wait, 0)
        while True:
            try:
                return self.try_acquire(me, check_mode, deadline)
            except LockError as exc:
                if exc.holder is None or clock() >= deadline:
                    raise
            sleep(min(interval, max(deadline - clock(), 0.05)))

    def release(self, me, force=False):
        """Give the lock up. Returns (changed, holder it had). A lock held by another run stays unless FORCE."""
        with self._guard():
            holder = self.holder()
            if holder is None:
                return False, None
            if not force and not _same_run(holder, me) and not is_stale(holder):
                raise LockError(f"{self.name} is not this run's lock: it is held by {describe(holder)}; "
                                "release it with force=true only when that run is gone", holder)
            try:
                self._write(None)
            except OSError as exc:
                raise LockError(f"cannot give up the lock {self.path}: {exc}") from None
            return True, holder
