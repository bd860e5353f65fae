# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""One application's releases on a node: its directories, slots, lock and record file.

Layout, per application, under the state root (default /var/lib/sciops-fleet)::

    <app>/releases/<version>-<short digest>/   immutable, one per installed release
    <app>/current -> releases/...              switched atomically and durably
    <app>/oldstable -> releases/...            where kept
    <app>/.lock                                held by every change

and the record in ``<facts_dir>/sciops_fleet_<app>.fact`` (JSON, read by Ansible as
``ansible_local.sciops_fleet_<app>``; see ``record``). Standard library only: this runs on managed nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from typing import Any, Callable, Iterator, List, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._common.node_layout import CACHE_ROOT, FACTS_DIR, STATE_ROOT
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import NAME_RE
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError, RecordDamaged, disk_full_names
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import (
    HISTORY_LIMIT,
    SLOTS,
    Record,
    now,
    number_legacy_record,
    record_shape_problem,
)

DEFAULT_STATE_ROOT = STATE_ROOT
DEFAULT_FACTS_DIR = FACTS_DIR
DEFAULT_CACHE_DIR = CACHE_ROOT
LOCK_WAIT = 300.0  # seconds a change waits for another one of the same application on this node
FILES_RECORD = ".sciops-files.json"


def fact_name(app: str) -> str:
    """The local fact's name for APP: ``sciops_fleet_<app>`` with '.' and '-' as '_'."""
    return "sciops_fleet_" + re.sub(r"[^A-Za-z0-9_]", "_", app)


class AppState:
    """One application's releases on this node, and its record. Changes are made under ``lock()``."""

    def __init__(self, app: str, state_root: str = DEFAULT_STATE_ROOT, facts_dir: str = DEFAULT_FACTS_DIR) -> None:
        if not isinstance(app, str) or not NAME_RE.match(app):
            # The name is a path below the state root: only a name a release may have reaches no other directory.
            raise NodeError(f"application {app!r} is not an application name (lower-case letters, digits, '.', '_', "
                            "'-', starting with a letter or digit); give the name its releases have")
        self.app = app
        self.app_dir = os.path.join(state_root, app)
        self.releases_dir = os.path.join(self.app_dir, "releases")
        self.facts_dir = facts_dir
        self.fact_path = os.path.join(facts_dir, fact_name(app) + ".fact")
        self.cache_dir: Optional[str] = None  # where this run downloads to, for naming a full disk
        self.rebuilt: Optional[str] = None  # where the damaged record was kept when this run rebuilt it

    def load(self) -> Record:
        """The record (an empty one when there is none yet); RecordDamaged when it is not a record.

        A record written before records carried sequence numbers gets them here, in memory, from its history order."""
        try:
            with open(self.fact_path, encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            record = {}
        except UnicodeDecodeError as exc:
            raise RecordDamaged(self._damaged(f"not UTF-8 text: {exc.reason}")) from None
        except ValueError as exc:
            raise RecordDamaged(self._damaged(f"not JSON: {exc}")) from None
        problem = record_shape_problem(record)
        if problem:
            raise RecordDamaged(self._damaged(problem))
        other = record.get("application")
        if other not in (None, self.app):
            # Two names that differ only in '.', '-' and '_' share one fact name: never mix their records.
            raise NodeError(f"the record {self.fact_path} belongs to application {other}, not {self.app}: the two "
                            f"names share one record; publish {self.app} under a name that differs from {other} in "
                            "more than '.', '-' and '_'")
        record.setdefault("application", self.app)
        record.setdefault("releases", {})
        record.setdefault("history", [])
        for slot in SLOTS:
            record.setdefault(slot, None)
        if "seq" not in record:
            number_legacy_record(record)
        return record

    def _damaged(self, reason: str) -> str:
        return (f"the record {self.fact_path} is damaged ({reason}); release_install, release_switch and release_health "
                f"rebuild it from the release directories, keeping the damaged file beside it")

    def exists(self) -> bool:
        return os.path.lexists(self.fact_path)

    def save(self, record: Record) -> None:
        record["history"] = record["history"][-HISTORY_LIMIT:]
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
        with disk_full_names(self, "the record of what this node runs was not saved; free space there and run the same "
                                   "step again (it repairs the record from the release directories)"):
            os.makedirs(self.facts_dir, exist_ok=True)
            atomic_write(self.fact_path, data, mode=0o644)

    @contextlib.contextmanager
    def lock(self, wait: float = LOCK_WAIT, sleep: Callable[[float], Any] = time.sleep) -> Iterator[None]:
        """Hold the application's lock: one change at a time (a timer run and a manual run do not interleave).

        Waits at most WAIT seconds, then fails naming the process that holds it: a step that hangs while holding
        the lock must not stop every later step on this node without a word."""
        os.makedirs(self.releases_dir, exist_ok=True)
        fd = os.open(os.path.join(self.app_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                        raise NodeError(f"{self.app} is being changed on this node by {holder}; waited {wait:g} s for "
                                        f"its lock ({os.path.join(self.app_dir, '.lock')}); try again when it is "
                                        "done, or end that process if it hangs") from None
                    sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} since {now()}".encode(), 0)
            yield
        finally:
            os.close(fd)

    def slot_target(self, slot: str) -> Optional[str]:
        """The release directory name SLOT points to, or None."""
        try:
            target = os.readlink(os.path.join(self.app_dir, slot))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/"))

    def set_slot(self, slot: str, name: str) -> None:
        """Point SLOT at releases/NAME atomically (a new link renamed over the old) and durably (dir fsync)."""
        link = os.path.join(self.app_dir, slot)
        tmp = os.path.join(self.app_dir, f".{slot}.tmp-{os.getpid()}")
        for stale in os.listdir(self.app_dir):  # links left by a switch killed before its rename
            if stale.startswith(f".{slot}.tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.app_dir, stale))
        os.symlink(os.path.join("releases", name), tmp)
        os.replace(tmp, link)
        fsync_dir(self.app_dir)

    def clear_slot(self, slot: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.app_dir, slot))
            fsync_dir(self.app_dir)

    def release_path(self, name: str) -> str:
        return os.path.join(self.releases_dir, name)

    def release_dirs(self) -> List[str]:
        """Names of the release directories on disk (not staging trees nor other dot entries)."""
        try:
            return sorted(n for n in os.listdir(self.releases_dir)
                          if not n.startswith(".") and os.path.isdir(self.release_path(n)) and not os.path.islink(self.release_path(n)))
        except FileNotFoundError:
            return []

    def is_installed(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.release_path(name), FILES_RECORD))

    def name_for(self, record: Record, digest: str) -> Optional[str]:
        """The release directory name recorded for DIGEST, or None."""
        for name, entry in record["releases"].items():
            if entry.get("digest") == digest:
                return name
        return None
