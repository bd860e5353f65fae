# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Releases on a node: fetch a release, install it, switch slots, check health, keep the record.

Layout, per application, under the state root (default /var/lib/sciops-fleet)::

    <app>/releases/<version>-<short digest>/   immutable, one per installed release
    <app>/current -> releases/...              switched atomically and durably
    <app>/oldstable -> releases/...            where kept
    <app>/.lock                                held by every change

and the record in ``<facts_dir>/sciops_fleet_<app>.fact`` (JSON, read by Ansible as
``ansible_local.sciops_fleet_<app>``): the current and oldstable release, every installed release with
its status (installed, good, failed), and a history of switches and health results.
Standard library only: this runs on managed nodes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import stat
import string
import subprocess
import time
import urllib.error

from ansible.module_utils.urls import open_url

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir, fsync_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest, parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import Descriptor
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import load_manifest, pull_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.nspawn import detect_format, extract_image
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (
    ARCHIVE_SUFFIXES,
    IMAGE_KINDS,
    RELEASE_FILE,
    ReleaseError,
    health_kind,
    release_dir_name,
    validate_release,
)
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.version import evr_compare
from ansible_collections.sciops.fleet.plugins.module_utils._common.archive import extract_tar

DEFAULT_STATE_ROOT = "/var/lib/sciops-fleet"
DEFAULT_FACTS_DIR = "/etc/ansible/facts.d"
DEFAULT_CACHE_DIR = "/var/cache/sciops-fleet"
HISTORY_LIMIT = 100
LOCK_WAIT = 300.0  # seconds a change waits for another one of the same application on this node
FILES_RECORD = ".sciops-files.json"
MOUNTS_RECORD = ".sciops-mounts.json"
# Per application: the mount point links this node made; it replaces no other path.
MOUNT_LINKS_RECORD = ".mount-links.json"
IMAGES_DIR = ".images"
UNIT_DIR = "/etc/systemd/system"
SLOTS = ("current", "oldstable")


def now():
    """UTC time as ISO 8601, for the record."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fact_name(app):
    """The local fact's name for APP: ``sciops_fleet_<app>`` with '.' and '-' as '_'."""
    return "sciops_fleet_" + re.sub(r"[^A-Za-z0-9_]", "_", app)


# -- fetching a release ------------------------------------------------------------------------


def fetch_release(reference_text, registry_options):
    """``(release dict, digest, reference)`` of the release artifact REFERENCE_TEXT (a tag or a digest)."""
    reference = parse_reference(reference_text)
    if not reference.ref:
        raise OciError(f"release {reference_text!r} names neither a tag nor a digest")
    store = open_store(reference, **registry_options)
    manifest, digest, _media_type = load_manifest(store, reference.repository, reference.ref, f"release {reference}")
    layers = [Descriptor.from_dict(layer, f"release {reference}, layer") for layer in manifest.get("layers") or []]
    found = [layer for layer in layers if layer.title == RELEASE_FILE]
    if not found:
        raise OciError(f"{reference} is not a release: it holds no {RELEASE_FILE}; publish releases with sciops.fleet.release_publish")
    try:
        data = json.loads(store.read_blob(reference.repository, found[0].digest))
    except ValueError as exc:
        raise OciError(f"{RELEASE_FILE} of {reference} is not JSON: {exc}") from None
    return validate_release(data, str(reference)), digest, reference


class RecordDamaged(FleetError):
    """The application's record on this node cannot be read as a record (bad JSON or the wrong shape)."""


class AppState:
    """One application's releases on this node, and its record. Changes are made under ``lock()``."""

    def __init__(self, app, state_root=DEFAULT_STATE_ROOT, facts_dir=DEFAULT_FACTS_DIR):
        self.app = app
        self.app_dir = os.path.join(state_root, app)
        self.releases_dir = os.path.join(self.app_dir, "releases")
        self.facts_dir = facts_dir
        self.fact_path = os.path.join(facts_dir, fact_name(app) + ".fact")
        self.cache_dir = None  # where this run downloads to, for naming a full disk
        self.rebuilt = None  # where the damaged record was kept when this run rebuilt it

    # -- record ---------------------------------------------------------------------------------

    def load(self):
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
        record.setdefault("application", self.app)
        record.setdefault("releases", {})
        record.setdefault("history", [])
        for slot in SLOTS:
            record.setdefault(slot, None)
        if "seq" not in record:
            _number_legacy_record(record)
        return record

    def _damaged(self, reason):
        return (f"the record {self.fact_path} is damaged ({reason}); release_install, release_switch and release_health "
                f"rebuild it from the release directories, keeping the damaged file beside it")

    def exists(self):
        return os.path.lexists(self.fact_path)

    def save(self, record):
        record["history"] = record["history"][-HISTORY_LIMIT:]
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")
        with disk_full_names(self, "the record of what this node runs was not saved; free space there and run the same "
                                   "step again (it repairs the record from the release directories)"):
            os.makedirs(self.facts_dir, exist_ok=True)
            atomic_write(self.fact_path, data, mode=0o644)

    @contextlib.contextmanager
    def lock(self, wait=LOCK_WAIT, sleep=time.sleep):
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
                        raise OciError(f"{self.app} is being changed on this node by {holder}; waited {wait:g} s for "
                                       f"its lock ({os.path.join(self.app_dir, '.lock')}); try again when it is "
                                       "done, or end that process if it hangs") from None
                    sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} since {now()}".encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- slots ----------------------------------------------------------------------------------

    def slot_target(self, slot):
        """The release directory name SLOT points to, or None."""
        try:
            target = os.readlink(os.path.join(self.app_dir, slot))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/"))

    def set_slot(self, slot, name):
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

    def clear_slot(self, slot):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.app_dir, slot))
            fsync_dir(self.app_dir)

    def release_path(self, name):
        return os.path.join(self.releases_dir, name)

    def release_dirs(self):
        """Names of the release directories on disk (not staging trees nor other dot entries)."""
        try:
            return sorted(n for n in os.listdir(self.releases_dir)
                          if not n.startswith(".") and os.path.isdir(self.release_path(n)) and not os.path.islink(self.release_path(n)))
        except FileNotFoundError:
            return []

    def is_installed(self, name):
        return os.path.isfile(os.path.join(self.release_path(name), FILES_RECORD))

    def name_for(self, record, digest):
        """The release directory name recorded for DIGEST, or None."""
        for name, entry in record["releases"].items():
            if entry.get("digest") == digest:
                return name
        return None


def running_release(digest, state_root=DEFAULT_STATE_ROOT, facts_dir=DEFAULT_FACTS_DIR):
    """What this node already runs as release DIGEST: ``{application, version, oldstable}`` when some application's
    ``current`` points to it, installed and recorded healthy; else None. Reads only local files."""
    try:
        names = sorted(n for n in os.listdir(facts_dir) if n.startswith("sciops_fleet_") and n.endswith(".fact"))
    except OSError:
        return None
    for file_name in names:
        try:
            with open(os.path.join(facts_dir, file_name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        if record_shape_problem(record):
            continue
        current = record.get("current")
        if not isinstance(current, dict) or current.get("digest") != digest or not record.get("application"):
            continue
        state = AppState(record["application"], state_root, facts_dir)
        name = state.slot_target("current")
        entry = (record.get("releases") or {}).get(name) or {}
        if name and state.is_installed(name) and entry.get("digest") == digest and entry.get("status") == "good":
            oldstable = state.slot_target("oldstable")
            return {"application": state.app, "version": entry.get("version"),
                    "oldstable": release_summary(record, oldstable) if oldstable else None}
    return None


def release_summary(record, name):
    """What the record says of release NAME, for slots and history: name, digest, version, protocol."""
    entry = record["releases"].get(name) or {}
    return {"name": name, "digest": entry.get("digest"), "version": entry.get("version"), "protocol": entry.get("protocol")}


# -- the record: shape, order, repair -------------------------------------------------------------

STATUSES = ("installed", "good", "failed")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _json_type(value):
    return _JSON_TYPES.get(type(value), type(value).__name__)


def record_shape_problem(record):
    """What makes RECORD (parsed JSON) not a record, or None. Checks every field the modules read."""
    if not isinstance(record, dict):
        return f"it is {_json_type(record)}, not an object"
    expected = {"application": str, "releases": dict, "history": list, "seq": int}
    for key, kind in expected.items():
        if key in record and (not isinstance(record[key], kind) or isinstance(record[key], bool)):
            return f"{key} is {_json_type(record[key])}, not {_JSON_TYPES[kind]}"
    for name, entry in (record.get("releases") or {}).items():
        where = f"releases.{name}"
        if not isinstance(entry, dict):
            return f"{where} is {_json_type(entry)}, not an object"
        if not isinstance(entry.get("digest"), str) or not is_digest(entry["digest"]):
            return f"{where}.digest is {entry.get('digest')!r}, not a release id"
        if entry.get("status") not in STATUSES:
            return f"{where}.status is {entry.get('status')!r}, not one of {', '.join(STATUSES)}"
        for key in ("version", "protocol", "role", "installed_at", "last_active", "checked_at"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                return f"{where}.{key} is {_json_type(entry[key])}, not a string"
        for key in ("installed_seq", "last_active_seq", "checked_seq"):
            if entry.get(key) is not None and (not isinstance(entry[key], int) or isinstance(entry[key], bool)):
                return f"{where}.{key} is {_json_type(entry[key])}, not a number"
        packages = entry.get("packages", [])
        if not isinstance(packages, list) or not all(
                isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("name", "evr", "arch", "file")) for p in packages):
            return f"{where}.packages is not a list of packages (name, evr, arch, file)"
    for index, event in enumerate(record.get("history") or []):
        if not isinstance(event, dict):
            return f"history[{index}] is {_json_type(event)}, not an object"
        for key in ("from", "to", "release"):
            if event.get(key) is not None and not isinstance(event[key], dict):
                return f"history[{index}].{key} is {_json_type(event[key])}, not an object"
    for slot in SLOTS:
        value = record.get(slot)
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("name"), str)):
            return f"{slot} is {_json_type(value)}, not null or an object naming a release"
    return None


def _number_legacy_record(record):
    """Give a record written without sequence numbers its order: history events are numbered as they stand, and a
    release's last_active_seq is the number of the last switch to it. Releases never switched to come first."""
    last = {}
    for index, event in enumerate(record["history"], 1):
        event.setdefault("seq", index)
        if event.get("event") == "switch" and event.get("to"):
            last[event["to"].get("name")] = event["seq"]
    for name, entry in record["releases"].items():
        entry.setdefault("installed_seq", 0)
        if name in last:
            entry.setdefault("last_active_seq", last[name])
    record["seq"] = max([e.get("seq", 0) for e in record["history"]] + [0])


def next_seq(record):
    """The next number of the record's own order: every change gets one; times are for people to read."""
    record["seq"] = record.get("seq", 0) + 1
    return record["seq"]


def _append(record, event):
    event["seq"] = next_seq(record)
    event.setdefault("time", now())
    record["history"].append(event)
    return event


def _recency(entry):
    """How recently a release was in use, by the record's order (legacy entries fall back to their times)."""
    return (max(entry.get("last_active_seq") or 0, entry.get("installed_seq") or 0),
            entry.get("last_active") or entry.get("installed_at") or "")


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path or "/")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


@contextlib.contextmanager
def disk_full_names(state, consequence):
    """Turn a full disk (ENOSPC, EDQUOT) into an error that names the directory that filled up and what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        places = [(state.releases_dir, "the releases directory"), (state.facts_dir, "the facts directory (the record)")]
        if state.cache_dir:
            places.append((state.cache_dir, "the download cache"))
        named = [p for p in places if exc.filename and os.path.abspath(str(exc.filename)).startswith(p[0].rstrip("/") + "/")]
        if not named:  # a write has no file name: the fullest file system is the one
            free = [(_free_bytes(p[0]), p) for p in places]
            free = [f for f in free if f[0] is not None]
            named = [min(free, key=lambda f: f[0])[1]] if free else places
        directory, label = named[0]
        what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        raise OciError(f"{what} in {directory} ({label} of {state.app}): {consequence}") from None


def verify_release_dir(state, name):
    """``(release dict or None, reason)``: release NAME is complete when its files record names the release id of
    NAME, its release.json validates, and every recorded file is there with its size and digest (links too)."""
    root = state.release_path(name)
    try:
        with open(os.path.join(root, FILES_RECORD), encoding="utf-8") as handle:
            files_record = json.load(handle)
        digest, files = files_record["digest"], files_record["files"]
        with open(os.path.join(root, RELEASE_FILE), encoding="utf-8") as handle:
            release = validate_release(json.load(handle), os.path.join(root, RELEASE_FILE))
    except (OSError, ValueError, KeyError, TypeError, ReleaseError) as exc:
        return None, f"its files record or {RELEASE_FILE} cannot be read ({exc})"
    if not isinstance(digest, str) or not is_digest(digest) or release_dir_name(release, digest) != name:
        return None, f"its files record names release {digest!r}, which is not the release {name}"
    for relative, entry in sorted(files.items()):
        path = os.path.join(root, relative)
        if "link" in entry:
            if not os.path.islink(path) or os.readlink(path) != entry["link"]:
                return None, f"{relative} is not the link the files record names"
        elif "type" in entry:
            if not _special_matches(path, entry):
                return None, f"{relative} is not the {entry['type']} the files record names"
        elif os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) != entry.get("size"):
            return None, f"{relative} is missing or has another size than its files record says"
    for relative, entry in sorted(files.items()):  # sizes first: a short file fails without being read
        if "link" not in entry and "type" not in entry and digest_file(os.path.join(root, relative))[0] != entry.get("digest"):
            return None, f"{relative} does not have the digest its files record names"
    return dict(release, digest=digest), None


def _entry(release, seq):
    return {"digest": release["digest"], "version": release["version"], "protocol": release["protocol"],
            "role": release["role"], "installed_at": now(), "installed_seq": seq, "status": "installed"}


def _packages_of(state, name, release):
    """The RPM packages of an installed release (read back from its files) for an adopted entry."""
    packages = []
    for artifact in release["artifacts"]:
        if artifact["install"] != "rpm":
            continue
        folder = os.path.join(state.release_path(name), artifact["name"])
        for file_name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if file_name.endswith(".rpm"):
                package = _rpm_header(os.path.join(folder, file_name))
                package["file"] = os.path.relpath(package.pop("path"), state.release_path(name))
                packages.append(package)
    return packages


def reconcile(state, check_mode=False):
    """Make the record agree with what is on disk, under the lock; ``(record, repairs)``.

    A damaged record (or a missing one while release directories exist) is rebuilt from the disk, the damaged file
    kept beside it as ``<fact>.damaged-<UTC time>`` (``state.rebuilt`` says where). A complete release directory the
    record does not know (an install killed after its rename, a record that could not be saved) is adopted; an
    incomplete one, and staging trees of interrupted installs, are removed; entries whose directory is gone are
    dropped; a slot the record names wrongly (a switch killed before its record was saved) is recorded as it is,
    with a repaired switch in the history. REPAIRS lists what was done, for the module's warnings. CHECK_MODE
    computes the same without writing anything."""
    if check_mode:
        return _reconcile(state, dry=True)
    with disk_full_names(state, "the repaired record was not saved; free space there and run the same step again"):
        with state.lock():
            return _reconcile(state, dry=False)


def _reconcile(state, dry):
    """reconcile() with the lock held (or DRY: nothing written)."""
    repairs = []
    on_disk = state.release_dirs()
    try:
        record = state.load()
        damaged = None
    except RecordDamaged as exc:
        damaged = str(exc)
    if damaged or (not state.exists() and on_disk):
        reason = damaged.split(";", maxsplit=1)[0] if damaged else "the record was missing"
        record = {"application": state.app, "releases": {}, "history": [], "current": None, "oldstable": None, "seq": 0}
        kept = None
        if damaged:
            kept = f"{state.fact_path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            if not dry:
                os.replace(state.fact_path, kept)
                fsync_dir(state.facts_dir)
            repairs.append(f"{reason}: rebuilt from the release directories; the damaged record is kept as {kept}")
        else:
            repairs.append(f"the record {state.fact_path} was missing: rebuilt from the release directories")
        if not dry:
            state.rebuilt = kept or state.fact_path
        _append(record, {"event": "rebuild", "result": "rebuilt", "kept": kept,
                         "reason": reason})
    if not dry:
        for entry_name in os.listdir(state.releases_dir) if os.path.isdir(state.releases_dir) else []:
            if entry_name.endswith(".staging"):  # an interrupted install; the lock is ours, so no install is running
                shutil.rmtree(os.path.join(state.releases_dir, entry_name), ignore_errors=True)
    held = {slot: state.slot_target(slot) for slot in SLOTS}
    for name in on_disk:
        if name in record["releases"] and state.is_installed(name):
            continue
        release, why = verify_release_dir(state, name)
        known = record["releases"].get(name)
        if release and (not known or known.get("digest") == release["digest"]):
            if not known:
                record["releases"][name] = _entry(release, next_seq(record))
                packages = _packages_of(state, name, release) if not dry else []
                if packages:
                    record["releases"][name]["packages"] = packages
                _append(record, {"event": "adopt", "release": release_summary(record, name), "result": "adopted"})
                repairs.append(f"release {name} was installed but not recorded: adopted (its files verify)")
        elif name in held.values():
            repairs.append(f"release {name} is in a slot but does not verify ({why}); kept, see its drift in status")
        else:
            if not dry:
                deactivate_images(state.release_path(name))
                shutil.rmtree(state.release_path(name), ignore_errors=True)
            record["releases"].pop(name, None)
            repairs.append(f"release {name} was incomplete ({why}): removed, install it again")
    for name in list(record["releases"]):
        if name not in on_disk:
            record["releases"].pop(name)
            repairs.append(f"release {name} was recorded but its directory is gone: dropped from the record")
    for slot in SLOTS:
        name = held[slot] if held[slot] in record["releases"] else None
        recorded = (record.get(slot) or {}).get("name")
        if recorded == name and (name is None or record[slot].get("digest") == record["releases"][name]["digest"]):
            continue
        before = record.get(slot)
        record[slot] = dict(release_summary(record, name), status=record["releases"][name]["status"]) if name else None
        if name:
            record["releases"][name]["last_active_seq"] = record.get("seq", 0) + 1
        _append(record, {"event": "switch", "slot": slot, "reason": "repaired: the link had moved but the record had not",
                         "from": before, "to": release_summary(record, name) if name else None,
                         "result": "switched", "repaired": True})
        repairs.append(f"{slot} points to {name or 'nothing'} but the record said {recorded or 'nothing'}: "
                       "recorded as it is (not health-checked)")
    if repairs and not dry:
        state.save(record)
    return record, repairs


# -- install ------------------------------------------------------------------------------------


def _extract(archive, dest):
    """Extract the tar archive ARCHIVE into DEST with the data policy: no member lands or leads outside DEST."""
    extract_tar(archive, dest, inside="the release")


def _render(text, variables, where):
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise OciError(f"{where}: the template uses ${{{exc.args[0]}}}, which no variable defines; "
                       f"add it to the config's vars or to the rollout's config variables") from None
    except ValueError as exc:
        raise OciError(f"{where}: {exc}; write a literal $ as $$") from None


def _special_kind(mode):
    """What a file that is neither regular nor a link is, for the files record."""
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "char device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return "special file"


def _special_matches(path, entry):
    """Whether PATH is still the special file ENTRY records (checked without opening it)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode) and _special_kind(info.st_mode) == entry["type"]


def _record_files(root, known=None):
    """Digest, size and mode of every file below ROOT (for drift checks), each file flushed to disk.

    KNOWN maps paths relative to ROOT to the digest and size they were verified with when placed (and flushed);
    they are not read again."""
    known = known or {}
    files = {}
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                files[relative] = {"link": os.readlink(path)}
                continue
            if not stat.S_ISREG(info.st_mode):  # a fifo or device of an unpacked tree: opening it could block
                files[relative] = {"type": _special_kind(info.st_mode), "mode": "%04o" % (info.st_mode & 0o7777)}
                continue
            if relative in known:
                files[relative] = dict(known[relative], mode="%04o" % (os.stat(path).st_mode & 0o7777))
                continue
            fsync_file(path)
            digest, size = digest_file(path)
            files[relative] = {"digest": digest, "size": size, "mode": "%04o" % (os.stat(path).st_mode & 0o7777)}
        for name in dirs:
            fsync_dir(os.path.join(base, name))
    return files


def install_release(state, release, digest, registry_options, cache_dir=None, config_vars=None, check_mode=False):
    """Install RELEASE (validated dict) with id DIGEST into releases/<version>-<short digest>/; never touch slots.

    First makes the record agree with the disk (see reconcile()): a release directory left complete by an
    interrupted run is adopted, not installed again. A failed install removes its staging tree.
    Returns a dict: name, path, changed, artifacts (per artifact: files and transfer), transfer totals,
    repairs (what reconcile() repaired) and record_rebuilt (where a damaged record was kept, or None).
    """
    name = release_dir_name(release, digest)
    final = state.release_path(name)
    state.cache_dir = cache_dir
    outcome = {"name": name, "path": final, "changed": False, "artifacts": [], "repairs": [], "record_rebuilt": None,
               "transfer": {"bytes_downloaded": 0, "blobs_downloaded": 0}}
    record, outcome["repairs"] = reconcile(state, check_mode)
    outcome["record_rebuilt"] = state.rebuilt
    if name in record["releases"] and state.is_installed(name):
        outcome["changed"] = activate_images(state, release, final, check_mode=check_mode) or bool(outcome["repairs"])
        return outcome
    outcome["changed"] = True
    if check_mode:
        return outcome
    consequence = "the release was not installed and current is untouched; free space there and install again"
    with state.lock():
        record = state.load()
        if name in record["releases"] and state.is_installed(name):
            outcome["changed"] = activate_images(state, release, final) or bool(outcome["repairs"])
            return outcome
        # A mount point the node may not take is refused before anything is fetched or placed.
        activate_images(state, release, final, check_mode=True)
        staging = os.path.join(state.releases_dir, f".{name}.staging")
        try:
            with disk_full_names(state, consequence):
                # A staging tree under the lock is what an interrupted install left: start it over.
                shutil.rmtree(staging, ignore_errors=True)
                os.makedirs(staging)
                packages = _build_release(state, release, digest, registry_options, staging, final, cache_dir,
                                          config_vars, outcome)
                if os.path.exists(final):  # a directory without the files record is an unfinished copy
                    deactivate_images(final)
                    shutil.rmtree(final)
                os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-built stays behind, even on a full disk
            raise
        fsync_dir(state.releases_dir)
        activate_images(state, release, final)
        record["releases"][name] = _entry(dict(release, digest=digest), next_seq(record))
        if packages:
            record["releases"][name]["packages"] = packages
        state.save(record)
    return outcome


def _no_link_on_the_way(staging, relative, what):
    """STAGING/RELATIVE, refused when it or a directory on the way is a symbolic link: an image may hold links that
    lead out of the release (absolute ones are kept in unpacked trees), and a config is never read or written
    through one."""
    path = staging
    for part in relative.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise OciError(f"{what}: {os.path.relpath(path, staging)} in the release is a symbolic link; a config is "
                           "never read or written through a link: give a path inside a real directory of the release")
    return path


def _build_release(state, release, digest, registry_options, staging, final, cache_dir, config_vars, outcome):
    """Fill STAGING with the release's artifacts, configs, release.json and files record; the RPM packages."""
    cache = BlobCache(cache_dir) if cache_dir else None
    mounts = []
    packages = []
    placed = {}  # files verified on placement: not hashed again for the files record
    for artifact in release["artifacts"]:
        reference = parse_reference(artifact["reference"])
        store = open_store(reference, **registry_options)
        dest = os.path.join(staging, artifact["name"])
        pulled = pull_artifact(store, reference.repository, artifact["digest"], dest, str(reference), cache=cache,
                               expected_digest=artifact["digest"], link=True)
        if artifact["install"] == "rpm":
            not_rpm = [item["name"] for item in pulled["files"] if not item["name"].endswith(".rpm")]
            if not_rpm:
                raise OciError(f"artifact {artifact['name']} of {release['application']} {release['version']} is "
                               f"installed as rpm but holds {', '.join(not_rpm)}; push only .rpm files in it")
            packages.extend(_rpm_header(item["path"]) for item in pulled["files"])
        if artifact["install"] == "extract":
            for item in pulled["files"]:
                if item["name"].endswith(ARCHIVE_SUFFIXES):
                    _extract(item["path"], dest)
                    os.unlink(item["path"])
        elif artifact["install"] in IMAGE_KINDS:
            mounts.extend(_place_image(staging, final, artifact, pulled["files"], str(reference)))
        else:
            placed.update({os.path.relpath(item["path"], staging): {"digest": item["digest"], "size": item["size"]}
                           for item in pulled["files"]})
        for key in ("bytes_downloaded", "blobs_downloaded"):
            outcome["transfer"][key] += store.stats.get(key, 0)
        outcome["artifacts"].append({"name": artifact["name"], "digest": artifact["digest"],
                                     "files": [f["name"] for f in pulled["files"]]})
    variables = {"application": release["application"], "version": release["version"],
                 "release_dir": final, "current_dir": os.path.join(state.app_dir, "current")}
    for config in release["configs"]:
        where = f"config {config['dest']} of {release['application']} {release['version']}"
        source = _no_link_on_the_way(staging, config["source"], f"{where}: its template")
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise OciError(f"{where}: cannot read its template {config['source']}: {exc.strerror}") from None
        merged = {**variables, **config["vars"], **(config_vars or {})}
        dest = _no_link_on_the_way(staging, config["dest"], where)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        atomic_write(dest, _render(text, merged, where).encode("utf-8"), mode=int(config["mode"], 8))
    atomic_write(os.path.join(staging, RELEASE_FILE), (json.dumps(release, indent=2, sort_keys=True) + "\n").encode())
    if mounts:
        atomic_write(os.path.join(staging, MOUNTS_RECORD), (json.dumps(mounts, indent=2, sort_keys=True) + "\n").encode())
    else:  # only the node writes its mounts record
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(staging, MOUNTS_RECORD))
    files = _record_files(staging, placed)
    atomic_write(os.path.join(staging, FILES_RECORD), json.dumps({"digest": digest, "files": files}, sort_keys=True).encode())
    if packages:
        for package in packages:
            package["file"] = os.path.relpath(package.pop("path"), staging)
    return packages


# -- environment images ---------------------------------------------------------------------------


def _run(argv, what):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ, LC_ALL="C"))
    except OSError as exc:
        raise OciError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        raise OciError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def mount_type():
    """``(type, options)`` of a read-only squashfs mount on this node: the kernel's through a loop device where
    there are loop devices, else squashfuse through FUSE (containers, such as the test nodes, have no loop devices)."""
    with contextlib.suppress(OSError):
        with open("/proc/filesystems", encoding="utf-8") as handle:
            kernel = any(line.split()[-1] == "squashfs" for line in handle if line.strip())
        if kernel and os.path.exists("/dev/loop-control"):
            return "squashfs", "ro,loop,nodev"
    if shutil.which("squashfuse") and os.path.exists("/dev/fuse"):
        return "fuse.squashfuse", "ro,nodev,allow_other"
    raise OciError("this node can mount a squashfs image neither with a loop device (no /dev/loop-control or no "
                   "squashfs file system) nor with squashfuse (not installed, or no /dev/fuse); install squashfuse "
                   "and fuse3, or install the artifact with install: unpack")


def _place_image(staging, final, artifact, files, where):
    """Put the environment image of ARTIFACT (pulled into staging/<name>/) in place: unpacked into staging/<name>/,
    or kept under .images/ with staging/<name>/ left empty as its mount point. Returns the mounts to record."""
    images = [f for f in files if not f["name"].endswith((".json", ".txt"))]
    if len(images) != 1:
        raise OciError(f"artifact {artifact['name']} ({where}) must hold exactly one environment image "
                       f"(squashfs or tar archive); it holds {', '.join(f['name'] for f in files) or 'nothing'}")
    image = images[0]["path"]
    try:
        image_format = detect_format(image)
    except UnitError as exc:
        raise OciError(f"artifact {artifact['name']} ({where}): {exc}") from None
    dest = os.path.join(staging, artifact["name"])
    holding = os.path.join(staging, IMAGES_DIR)
    os.makedirs(holding, exist_ok=True)
    kept = os.path.join(holding, f"{artifact['name']}.{'squashfs' if image_format == 'squashfs' else 'tar'}")
    os.rename(image, kept)
    for item in files:  # metadata pulled beside the image stays out of the mount point
        if item is not images[0] and os.path.exists(item["path"]):
            os.rename(item["path"], os.path.join(holding, f"{artifact['name']}.{item['name'].replace('/', '_')}"))
    if artifact["install"] == "unpack" or image_format != "squashfs":
        try:
            extract_image(kept, image_format, dest, _run, shutil.which, staging)
        except UnitError as exc:
            raise OciError(f"artifact {artifact['name']} ({where}): {exc}") from None
        if not os.path.isdir(dest):
            os.makedirs(dest)
        os.unlink(kept)
        return []
    fs_type, options = mount_type()
    where_final = os.path.join(final, artifact["name"])
    unit = _run(["systemd-escape", "--path", "--suffix=mount", where_final], "systemd-escape").strip()
    return [{"name": artifact["name"], "unit": unit, "what": os.path.join(final, IMAGES_DIR, os.path.basename(kept)),
             "where": where_final, "type": fs_type, "options": options}]


_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\\-]+\.mount$")


def _read_mounts(release_dir):
    """The mounts the node recorded for the release in RELEASE_DIR. Each entry must be one the node itself writes
    (a unit name systemd-escape gives, the image under .images/, the mount point below the release): the unit's
    file is written and removed as root, so nothing else may steer it."""
    try:
        with open(os.path.join(release_dir, MOUNTS_RECORD), encoding="utf-8") as handle:
            mounts = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise OciError(f"the mounts record {os.path.join(release_dir, MOUNTS_RECORD)} cannot be read ({exc})") from None
    problem = None if isinstance(mounts, list) else "it is not a list"
    for mount in mounts if problem is None else []:
        fields = ("name", "unit", "what", "where", "type", "options")
        if not isinstance(mount, dict) or not all(isinstance(mount.get(k), str) for k in fields) or \
                any(c in mount[k] for k in fields for c in "\n\r\0"):
            problem = f"entry {mount!r} is not a mount the node writes"
        elif not _UNIT_NAME_RE.match(mount["unit"]) or "/" in mount["unit"]:
            problem = f"unit {mount['unit']!r} is not a mount unit name"
        elif os.path.dirname(mount["what"]) != os.path.join(release_dir, IMAGES_DIR) or \
                os.path.dirname(mount["where"]) != release_dir or mount["type"] not in ("squashfs", "fuse.squashfuse"):
            problem = f"mount {mount['name']!r} does not mount an image of this release inside it"
        if problem:
            break
    if problem:
        raise OciError(f"the mounts record {os.path.join(release_dir, MOUNTS_RECORD)} is not this node's own: {problem}; "
                       "nothing of it is mounted or removed")
    return mounts


def activate_images(state, release, release_dir, check_mode=False):
    """Mount the release's images (an enabled systemd .mount unit each) and link each artifact's mount_point to
    ``<app>/current/<name>``. True when something was (or would be) changed."""
    changed = False
    for mount in _read_mounts(release_dir):
        path = os.path.join(UNIT_DIR, mount["unit"])
        text = (f"# sciops.fleet: environment image {mount['name']} of {state.app}, release {os.path.basename(release_dir)}\n"
                f"[Unit]\nDescription=sciops.fleet {state.app} {mount['name']} ({os.path.basename(release_dir)})\n"
                f"After=local-fs.target\n\n[Mount]\nWhat={mount['what']}\nWhere={mount['where']}\n"
                f"Type={mount['type']}\nOptions={mount['options']}\n\n[Install]\nWantedBy=multi-user.target\n")
        try:
            with open(path, encoding="utf-8") as handle:
                same = handle.read() == text
        except OSError:
            same = False
        active = subprocess.run(["systemctl", "is-active", "--quiet", mount["unit"]], check=False).returncode == 0
        if same and active:
            continue
        changed = True
        if check_mode:
            continue
        if not same:
            atomic_write(path, text.encode("utf-8"), mode=0o644)
            _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
        try:
            _run(["systemctl", "enable", "--now", mount["unit"]], f"mounting {mount['what']} at {mount['where']}")
        except OciError as exc:
            journal = subprocess.run(["journalctl", "-u", mount["unit"], "-n", "10", "--no-pager", "-q"],
                                     capture_output=True, text=True, check=False).stdout.strip()
            raise OciError(f"{exc}; journal: {journal.replace(chr(10), ' | ')}") from None
    created = _mount_links(state)
    for artifact in release["artifacts"]:
        if not artifact.get("mount_point"):
            continue
        link, target = artifact["mount_point"], os.path.join(state.app_dir, "current", artifact["name"])
        ours = link in created
        if os.path.islink(link) and os.readlink(link) == target:
            if not ours and not check_mode:  # made before links were recorded: it is ours, it names our current
                created[link] = target
                _save_mount_links(state, created)
            continue
        if os.path.lexists(link) and not (ours and os.path.islink(link)):
            kind = "link" if os.path.islink(link) else "directory" if os.path.isdir(link) else "file"
            why = "this node made a link there, which was since replaced" if ours else \
                f"this node did not create it (it is not in {os.path.join(state.app_dir, MOUNT_LINKS_RECORD)})"
            raise OciError(f"mount_point {link} of artifact {artifact['name']} exists as a {kind} and {why}; it is "
                           f"left as it is: move it away so that it can point to {target}, or publish the release "
                           "with another mount_point")
        changed = True
        if check_mode:
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # Recorded before it is made: a link left by a kill in between is still known as ours.
        created[link] = target
        _save_mount_links(state, created)
        tmp = _new_link(target, f"{link}.tmp-{os.getpid()}")
        os.replace(tmp, link)
        fsync_dir(os.path.dirname(link))
    return changed


def _new_link(target, base):
    """A new link to TARGET at BASE or BASE.<n>, whichever is free: what is there already is not ours to remove."""
    for attempt in range(100):
        path = base if attempt == 0 else f"{base}.{attempt}"
        try:
            os.symlink(target, path)
            return path
        except FileExistsError:
            continue
    raise OciError(f"cannot make a link beside {base}: {base} and the next 99 names are taken; remove them")


def _mount_links(state):
    """The mount point links this node created for STATE's application: {link: target}."""
    try:
        with open(os.path.join(state.app_dir, MOUNT_LINKS_RECORD), encoding="utf-8") as handle:
            links = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OciError(f"the record of mount point links {os.path.join(state.app_dir, MOUNT_LINKS_RECORD)} cannot be "
                       f"read ({exc}); check the links it should list and rewrite it as a JSON mapping of link to target") from None
    if not isinstance(links, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
        raise OciError(f"the record of mount point links {os.path.join(state.app_dir, MOUNT_LINKS_RECORD)} is not a "
                       "JSON mapping of link to target; check the links it should list and rewrite it")
    return links


def _save_mount_links(state, links):
    os.makedirs(state.app_dir, exist_ok=True)
    atomic_write(os.path.join(state.app_dir, MOUNT_LINKS_RECORD),
                 (json.dumps(links, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)


def deactivate_images(release_dir):
    """Stop, disable and remove the mount units of the release in RELEASE_DIR (before it is removed)."""
    try:
        mounts = _read_mounts(release_dir)
    except OciError:
        mounts = []  # a record that is not the node's own names no unit of the node's to remove
    for mount in mounts:
        subprocess.run(["systemctl", "disable", "--now", mount["unit"]], capture_output=True, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(UNIT_DIR, mount["unit"]))
    if mounts:
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)


# -- RPM packages -------------------------------------------------------------------------------

_RPM_QF = "%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\t%{ARCH}\\n"


def _rpm(argv, what):
    try:
        result = subprocess.run(["rpm"] + argv, capture_output=True, text=True, check=False, timeout=600)
    except FileNotFoundError:
        raise OciError(f"{what}: the rpm tool is not installed on this node; install the rpm package") from None
    return result


def _display_evr(evr):
    """``0:1.0-1`` -> ``1.0-1``: the epoch only when there is one."""
    return evr[2:] if evr.startswith("0:") else evr


def _rpm_header(path):
    """Name, EVR and arch of the RPM file at PATH (read with rpm -qp), and PATH."""
    result = _rpm(["-qp", "--nosignature", "--qf", _RPM_QF, path], f"reading {os.path.basename(path)}")
    if result.returncode != 0 or not result.stdout.strip():
        raise OciError(f"{os.path.basename(path)} is not a readable RPM: {(result.stderr or result.stdout).strip()}")
    name, evr, arch = result.stdout.strip().splitlines()[-1].split("\t")
    return {"name": name, "evr": _display_evr(evr), "arch": arch, "path": path}


def installed_rpms(names):
    """``{name: EVR or None}``: what this node's rpm database has of the packages NAMES, in one rpm query."""
    found = dict.fromkeys(names)
    if not found:
        return found
    # rpm -q answers for every name, and exits non-zero when one of them is not installed.
    result = _rpm(["-q", "--qf", _RPM_QF, *found], "asking rpm for the installed packages")
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] in found:
            found[fields[0]] = _display_evr(fields[1])
    return found


def rpm_plan(state, record, name, previous=None):
    """What switching from release PREVIOUS to release NAME does to the RPM packages: per package name, file, wanted
    and installed EVR, and the action (install, upgrade, downgrade, keep; erase for a package of PREVIOUS that NAME
    no longer ships and that is installed)."""
    plan = []
    wanted = (record["releases"].get(name) or {}).get("packages") or []
    left = (record["releases"].get(previous) or {}).get("packages") or [] if previous and previous != name else []
    have = installed_rpms([package["name"] for package in wanted + left])
    for package in wanted:
        installed = have[package["name"]]
        if installed is None:
            action = "install"
        else:
            order = evr_compare(package["evr"], installed)
            action = "keep" if order == 0 else ("upgrade" if order > 0 else "downgrade")
        plan.append({"name": package["name"], "evr": package["evr"], "arch": package["arch"], "installed": installed,
                     "action": action, "file": os.path.join(state.release_path(name), package["file"])})
    shipped = {package["name"] for package in plan}
    for package in left:
        if package["name"] not in shipped and have[package["name"]] is not None:
            plan.append({"name": package["name"], "evr": None, "arch": package["arch"], "installed": have[package["name"]],
                         "action": "erase", "file": None})
    return plan


def apply_rpms(plan, downgrade=False, nodeps=False, check_mode=False):
    """Install the packages of PLAN that differ from the node's in one rpm transaction (``rpm -U``; with
    ``--oldpackage`` for a downgrade, which DOWNGRADE must allow), then erase the packages the release no longer
    ships (``rpm -e``) that are still installed. Returns whether anything changed."""
    lowered = [p for p in plan if p["action"] == "downgrade"]
    if lowered and not downgrade:
        listing = ", ".join(f"{p['name']} {p['installed']} -> {p['evr']}" for p in lowered)
        raise OciError(f"switching would downgrade the RPM package(s) {listing}; allow it explicitly with "
                       "rpm_downgrade (rollout_rpm_downgrade in the rollout)")
    todo = [p for p in plan if p["action"] not in ("keep", "erase")]
    gone = [p for p in plan if p["action"] == "erase"]
    if not (todo or gone) or check_mode:
        return bool(todo or gone)
    if todo:
        _rpm_upgrade(todo, bool(lowered), nodeps)
    still = installed_rpms([p["name"] for p in gone])  # a new package may have obsoleted one
    gone = [p for p in gone if still[p["name"]] is not None]
    if gone:
        result = _rpm(["-e", "--quiet"] + (["--nodeps"] if nodeps else []) + [p["name"] for p in gone],
                      "erasing RPM packages")
        if result.returncode != 0:
            detail = " | ".join((result.stderr + result.stdout).strip().splitlines()[-8:])
            raise OciError(f"rpm -e of {', '.join(p['name'] for p in gone)} (no longer in the release) failed (exit "
                           f"{result.returncode}): {detail}; the release's own packages are installed, current still "
                           "names the release before")
    return True


def _rpm_upgrade(todo, lowered, nodeps):
    argv = ["-U", "--quiet"] + (["--oldpackage"] if lowered else []) + (["--nodeps"] if nodeps else [])
    result = _rpm(argv + [p["file"] for p in todo], "installing RPM packages")
    if result.returncode != 0:
        detail = " | ".join((result.stderr + result.stdout).strip().splitlines()[-8:])
        hint = "; on a node whose rpm database does not list the system's own packages (Debian) set rpm_nodeps" \
            if "Failed dependencies" in detail or "is needed by" in detail else ""
        raise OciError(f"rpm -U of {', '.join(p['name'] + '-' + p['evr'] for p in todo)} failed (exit "
                       f"{result.returncode}): {detail}{hint}")


# -- switch and prune ---------------------------------------------------------------------------


def choose_release(state, record, text):
    """The release id TEXT means on this node: an id, ``previous`` (what current was before its last switch,
    still installed and not failed), or a version installed here."""
    if is_digest(text):
        return text
    if text == "previous":
        current = (record.get("current") or {}).get("digest")
        switches = [e for e in record["history"] if e.get("event") == "switch" and e.get("slot") == "current"]
        for event in sorted(switches, key=lambda e: e.get("seq") or 0, reverse=True):  # the record's order, not times
            if not event.get("from"):
                continue
            digest = event["from"].get("digest")
            name = state.name_for(record, digest)
            if digest != current and name and state.is_installed(name) and record["releases"][name].get("status") != "failed":
                return digest
        raise OciError(f"{state.app} has no previous release on this node to go back to (none installed that did not fail)")
    matches = [entry["digest"] for name, entry in record["releases"].items()
               if entry.get("version") == text and state.is_installed(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(sorted({e.get("version") for e in record["releases"].values()})) or "none"
        raise OciError(f"{state.app} {text} is not installed on this node (installed: {known}); roll it out instead")
    raise OciError(f"{state.app} {text} is installed more than once on this node; name it by release id")


def release_services(state, name):
    """The services release NAME declares (from its release.json)."""
    try:
        with open(os.path.join(state.release_path(name), RELEASE_FILE), encoding="utf-8") as handle:
            return list(json.load(handle).get("services") or [])
    except (OSError, ValueError):
        return []


def switch_release(state, digest, slot="current", keep=3, protect=(), reason="rollout", check_mode=False,
                   keep_oldstable=False, rpm_downgrade=False, rpm_nodeps=False):
    """Point SLOT at the installed release DIGEST, record it, and prune old releases.

    With KEEP_OLDSTABLE, switching ``current`` to a release of another protocol first points ``oldstable`` at
    the release current left, so that a server keeps answering clients of the old protocol (lockstep).

    Keeps the KEEP most recently used releases that did not fail, and never removes what a slot points
    to or what PROTECT names (digests). Returns a dict: changed, from, to, pruned, services, oldstable
    (what oldstable points to afterwards), oldstable_moved, and oldstable_from (what it pointed to before),
    packages (the RPM plan when switching current).

    The RPM packages of the release switched to become the node's (``rpm -U``) before ``current`` moves: rpm holds
    one version of a package, so they follow ``current``, never ``oldstable``.
    """
    if slot not in SLOTS:
        raise OciError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    record, repairs = reconcile(state, check_mode)
    name = state.name_for(record, digest)
    if name is None or not state.is_installed(name):
        raise OciError(f"release {digest} of {state.app} is not installed on this node; install it first (sciops.fleet.release_install)")
    before = state.slot_target(slot)
    pending = {slot: name}
    old_oldstable = state.slot_target("oldstable")
    if (keep_oldstable and slot == "current" and before and before != name and before != old_oldstable
            and state.is_installed(before)
            and (record["releases"].get(before) or {}).get("protocol") != (record["releases"].get(name) or {}).get("protocol")):
        pending["oldstable"] = before
    outcome = {"changed": before != name or bool(repairs), "from": release_summary(record, before) if before else None,
               "to": release_summary(record, name), "pruned": [], "services": release_services(state, name),
               "oldstable_from": None, "oldstable_moved": "oldstable" in pending,
               "repairs": repairs, "record_rebuilt": state.rebuilt}
    if "oldstable" in pending:
        outcome["oldstable_from"] = release_summary(record, old_oldstable) if old_oldstable else None
    after_oldstable = pending.get("oldstable", name if slot == "oldstable" else old_oldstable)
    outcome["oldstable"] = release_summary(record, after_oldstable) if after_oldstable else None
    outcome["packages"] = rpm_plan(state, record, name, before) if slot == "current" else []
    if outcome["packages"]:
        rpm_changed = apply_rpms(outcome["packages"], rpm_downgrade, rpm_nodeps, check_mode)
        outcome["changed"] = outcome["changed"] or rpm_changed
    if check_mode:
        outcome["pruned"] = _prune_plan(state, record, keep, protect, pending)
        outcome["changed"] = outcome["changed"] or bool(outcome["pruned"])
        return outcome
    with disk_full_names(state, "nothing was switched; free space there and switch again"), state.lock():
        record = state.load()
        moved = False
        for target_slot in sorted(pending, key=lambda s: s != "oldstable"):  # oldstable first: a server never lacks either
            target, previous = pending[target_slot], state.slot_target(target_slot)
            if previous == target:
                continue
            state.set_slot(target_slot, target)
            moved = True
            record[target_slot] = release_summary(record, target)
            event = _append(record, {"event": "switch", "slot": target_slot,
                                     "reason": reason if target_slot == slot else f"{reason} (lockstep)",
                                     "from": release_summary(record, previous) if previous else None,
                                     "to": release_summary(record, target), "result": "switched"})
            record["releases"][target]["last_active"] = event["time"]
            record["releases"][target]["last_active_seq"] = event["seq"]
        _prune(state, record, keep, protect, pending, outcome)
        if moved or outcome["pruned"]:
            state.save(record)
    return outcome


def retire_slot(state, slot="oldstable", keep=3, protect=(), reason="retire", check_mode=False):
    """Empty SLOT (never ``current``), record it, and prune its release when KEEP allows.

    Returns a dict: changed, from (what the slot pointed to), pruned."""
    if slot == "current":
        raise OciError("current is never emptied; switch it to another release instead")
    if slot not in SLOTS:
        raise OciError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    record, repairs = reconcile(state, check_mode)
    before = state.slot_target(slot)
    outcome = {"changed": before is not None or bool(repairs), "from": release_summary(record, before) if before else None,
               "pruned": [], "repairs": repairs, "record_rebuilt": state.rebuilt}
    if check_mode or before is None:
        return outcome
    with disk_full_names(state, "oldstable was not retired; free space there and retire again"), state.lock():
        record = state.load()
        state.clear_slot(slot)
        record[slot] = None
        _append(record, {"event": "retire", "slot": slot, "reason": reason,
                         "from": outcome["from"], "to": None, "result": "retired"})
        _prune(state, record, keep, protect, {}, outcome)
        state.save(record)
    return outcome


def _prune(state, record, keep, protect, pending, outcome):
    """Remove what _prune_plan names (under the lock), noting it in OUTCOME."""
    for victim in _prune_plan(state, record, keep, protect, pending):
        deactivate_images(state.release_path(victim))
        # Renamed out of the way first: a kill during the removal leaves a tree reconcile() removes, never a recorded
        # release with files missing.
        doomed = os.path.join(state.releases_dir, f".{victim}.staging")
        shutil.rmtree(doomed, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.rename(state.release_path(victim), doomed)
            fsync_dir(state.releases_dir)
        shutil.rmtree(doomed, ignore_errors=True)
        record["releases"].pop(victim, None)
        outcome["pruned"].append(victim)
    if outcome["pruned"]:
        fsync_dir(state.releases_dir)
        outcome["changed"] = True


def _prune_plan(state, record, keep, protect, pending):
    """Release names to remove: beyond the KEEP newest releases that did not fail, and every failed one,
    never one a slot (or PENDING slot change) points to, nor one whose digest is in PROTECT."""
    held = {state.slot_target(slot) for slot in SLOTS} | set(pending.values())
    held |= {name for name, entry in record["releases"].items() if entry.get("digest") in set(protect or ())}
    candidates = [(name, entry) for name, entry in record["releases"].items() if name not in held]
    failed = [name for name, entry in candidates if entry.get("status") == "failed"]
    # Newest first by the record's own order, never by clocks: a node whose clock is wrong keeps the right releases.
    usable = sorted((c for c in candidates if c[1].get("status") != "failed"), key=lambda c: _recency(c[1]), reverse=True)
    room = max(keep - len([h for h in held if h in record["releases"] and record["releases"][h].get("status") != "failed"]), 0)
    return sorted(failed + [name for name, _entry in usable[room:]])


# -- health ---------------------------------------------------------------------------------------


def _check_once(check, variables):
    kind, target = health_kind(check)
    target = string.Template(target).safe_substitute(variables)
    timeout = check["timeout"]
    if kind == "tcp":
        host, _sep, port = target.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return f"connected to {target}"
    if kind == "http":
        try:
            with open_url(target, timeout=timeout, follow_redirects="safe") as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except urllib.error.URLError as exc:
            raise OSError(f"{target}: {exc.reason}") from None
        if status != check.get("expect_status", 200):
            raise OSError(f"{target} answered HTTP {status}, not {check.get('expect_status', 200)}")
        return f"{target} answered HTTP {status}"
    result = subprocess.run(target, shell=True, capture_output=True, text=True, timeout=timeout, check=False,  # nosec: the release's own check
                            cwd=variables.get("current_dir") if os.path.isdir(variables.get("current_dir", "")) else None)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise OSError(f"'{target}' exited {result.returncode}: {' | '.join(tail)}")
    return f"'{target}' exited 0"


def run_health_checks(release, variables, sleep=time.sleep):
    """Run every health check of RELEASE with its retries; a list of {name, ok, detail, attempts}."""
    results = []
    for check in release["health"]:
        attempts = 0
        while True:
            attempts += 1
            try:
                detail = _check_once(check, variables)
                results.append({"name": check["name"], "ok": True, "detail": detail, "attempts": attempts})
                break
            except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                if attempts > check["retries"]:
                    results.append({"name": check["name"], "ok": False, "detail": str(exc) or type(exc).__name__, "attempts": attempts})
                    break
                sleep(check["delay"])
    return results


def record_health(state, digest, healthy, results, slot="current"):
    """Mark release DIGEST good or failed in the record; a failed release never counts as good again until re-checked.

    Refuses unless SLOT points to DIGEST's release at the time of recording: a verdict is about the release a slot
    runs, never about one another run switched away. The same verdict again writes nothing (idempotent): only a
    changed verdict is saved and added to the history. Returns whether the record changed; ``state.rebuilt`` says
    where a damaged record was kept when it had to be rebuilt first."""
    if slot not in SLOTS:
        raise OciError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    with disk_full_names(state, "the health verdict was not recorded; free space there and check again"), state.lock():
        record, repairs = _reconcile(state, dry=False)
        name = state.name_for(record, digest)
        if name is None:
            raise OciError(f"release {digest} of {state.app} is not installed on this node")
        target = state.slot_target(slot)
        if target != name:
            raise OciError(f"release {digest} ({name}) of {state.app} is not what {slot} points to on this node "
                           f"({target or 'nothing'}): its health is not recorded; another run may have switched "
                           f"{slot} meanwhile, check the release {slot} runs")
        status = "good" if healthy else "failed"
        entry = record["releases"][name]
        slot_entries = [record[s] for s in SLOTS if record.get(s) and record[s].get("name") == name]
        if entry.get("status") == status and all(e.get("status") == status for e in slot_entries):
            return bool(repairs)
        entry["status"] = status
        for slot_entry in slot_entries:
            slot_entry["status"] = status
        event = _append(record, {"event": "health", "slot": slot, "release": release_summary(record, name),
                                 "result": status, "failed_checks": [r["name"] for r in results if not r["ok"]]})
        entry["checked_at"], entry["checked_seq"] = event["time"], event["seq"]
        state.save(record)
    return True


# -- preflight ----------------------------------------------------------------------------------


def _os_families():
    names = set()
    with contextlib.suppress(OSError):
        with open("/etc/os-release", encoding="utf-8") as handle:
            for line in handle:
                key, _sep, value = line.strip().partition("=")
                if key in ("ID", "ID_LIKE"):
                    names.update(value.strip('"').lower().split())
    if names & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        names.add("redhat")
    return names


def _memory_mb():
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    return None


def _kernel_features():
    features = set()
    with contextlib.suppress(OSError):
        with open("/proc/filesystems", encoding="utf-8") as handle:
            features.update(line.split()[-1] for line in handle if line.strip())
    return features


def preflight(release, state_root, artifact_sizes):
    """Can this node run RELEASE? ``(ok, reasons, facts)``: every reason it cannot, not just the first."""
    needs = release["requires"]
    reasons = []
    machine = platform.machine()
    if needs["arch"] and machine not in needs["arch"]:
        reasons.append(f"architecture {machine} is not one of {', '.join(needs['arch'])}")
    families = _os_families()
    if needs["os_family"] and not families & set(needs["os_family"]):
        reasons.append(f"operating system ({', '.join(sorted(families)) or 'unknown'}) is not of the family {', '.join(needs['os_family'])}")
    probe = state_root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "/"
    free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
    need_mb = needs["disk_mb"] + sum(artifact_sizes) // (1024 * 1024)
    if free_mb < need_mb:
        reasons.append(f"{free_mb} MiB free under {probe}, the release needs {need_mb} MiB (disk_mb plus its artifacts)")
    memory = _memory_mb()
    if needs["memory_mb"] and memory is not None and memory < needs["memory_mb"]:
        reasons.append(f"{memory} MiB of memory, the release needs {needs['memory_mb']} MiB")
    commands = list(needs["commands"])
    if any(a["install"] == "rpm" for a in release["artifacts"]) and "rpm" not in commands:
        commands.append("rpm")  # the release installs RPM packages
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        reasons.append(f"command(s) not found: {', '.join(missing)}")
    features = _kernel_features()
    absent = [k for k in needs["kernel"] if not (os.path.exists(k) if k.startswith("/") else k in features)]
    if absent:
        reasons.append(f"kernel feature(s) missing: {', '.join(absent)}")
    facts = {"arch": machine, "os_family": sorted(families), "free_mb": free_mb, "need_mb": need_mb, "memory_mb": memory}
    return not reasons, reasons, facts


def artifact_sizes(release, registry_options):
    """Total bytes of each artifact's files, read from the registries; an unreachable artifact is a reason, not a crash."""
    sizes, reasons = [], []
    for artifact in release["artifacts"]:
        try:
            reference = parse_reference(artifact["reference"])
            store = open_store(reference, **registry_options)
            manifest, _digest, _type = load_manifest(store, reference.repository, artifact["digest"], f"artifact {reference}")
            sizes.append(sum(int(layer.get("size", 0)) for layer in manifest.get("layers") or []))
        except (OciError, ReleaseError) as exc:
            reasons.append(f"artifact {artifact['name']} cannot be read: {exc}")
    return sizes, reasons


# -- status -------------------------------------------------------------------------------------


def drift(state, name):
    """How release NAME on disk differs from what was installed: changed, missing and added files."""
    root = state.release_path(name)
    try:
        with open(os.path.join(root, FILES_RECORD), encoding="utf-8") as handle:
            recorded = json.load(handle)["files"]
    except (OSError, ValueError, KeyError):
        return {"changed": [], "missing": [], "added": [], "error": f"{root} has no readable files record"}
    changed, missing, seen = [], [], set()
    for relative, entry in sorted(recorded.items()):
        path = os.path.join(root, relative)
        seen.add(relative)
        if "link" in entry:
            if not os.path.islink(path) or os.readlink(path) != entry["link"]:
                (missing if not os.path.lexists(path) else changed).append(relative)
            continue
        if "type" in entry:
            if not _special_matches(path, entry):
                (missing if not os.path.lexists(path) else changed).append(relative)
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            missing.append(relative)
        elif os.path.getsize(path) != entry["size"] or digest_file(path)[0] != entry["digest"]:
            changed.append(relative)
        elif "%04o" % (os.stat(path).st_mode & 0o7777) != entry["mode"]:
            changed.append(relative)
    added = []
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(base, d))]  # a mounted image is read-only
        for file_name in names:
            relative = os.path.relpath(os.path.join(base, file_name), root)
            if relative not in seen and relative != FILES_RECORD:
                added.append(relative)
    return {"changed": changed, "missing": missing, "added": sorted(added)}


def application_status(state):
    """What this node says about the application: slots, since when, protocol, drift of current."""
    record = state.load()
    status = {"application": state.app, "installed": sorted(
        ({"name": n, "version": e.get("version"), "status": e.get("status")} for n, e in record["releases"].items()),
        key=lambda r: r["name"])}
    for slot in SLOTS:
        name = state.slot_target(slot)
        entry = dict(release_summary(record, name), status=record["releases"].get(name, {}).get("status")) if name else None
        if entry:
            switches = [h for h in record["history"] if h.get("event") == "switch" and h.get("slot") == slot
                        and (h.get("to") or {}).get("name") == name]
            entry["since"] = switches[-1]["time"] if switches else None
            entry["working"] = state.is_installed(name)
        status[slot] = entry
    current = status["current"]
    status["drift"] = drift(state, current["name"]) if current and current["working"] else None
    status["packages"] = []
    recorded = (record["releases"].get(current["name"]) or {}).get("packages") if current else None
    have = installed_rpms([package["name"] for package in recorded or []])
    for package in recorded or []:
        installed = have[package["name"]]
        label = f"{package['name']}-{installed}" if installed else f"{package['name']} (not installed)"
        if installed and installed != package["evr"]:
            label += f" (release wants {package['evr']})"
        status["packages"].append({"name": package["name"], "wanted": package["evr"], "installed": installed,
                                   "label": label})
    return status
