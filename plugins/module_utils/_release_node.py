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
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import string
import subprocess
import time
import urllib.error

from ansible.module_utils.urls import open_url

from ansible_collections.sciops.fleet.plugins.module_utils._fsutil import atomic_write, fsync_dir, fsync_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci_client import open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci_download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci_errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci_reference import digest_file, is_digest, parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oci_store import Descriptor
from ansible_collections.sciops.fleet.plugins.module_utils._oras_artifact import load_manifest, pull_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._systemd_unit import UnitError
from ansible_collections.sciops.fleet.plugins.module_utils._nspawn import detect_format, extract_image
from ansible_collections.sciops.fleet.plugins.module_utils._release import (
    ARCHIVE_SUFFIXES,
    IMAGE_KINDS,
    RELEASE_FILE,
    ReleaseError,
    health_kind,
    release_dir_name,
    validate_release,
)
from ansible_collections.sciops.fleet.plugins.module_utils._rpm_version import evr_compare
from ansible_collections.sciops.fleet.plugins.module_utils._safe_extract import extract_tar

DEFAULT_STATE_ROOT = "/var/lib/sciops-fleet"
DEFAULT_FACTS_DIR = "/etc/ansible/facts.d"
DEFAULT_CACHE_DIR = "/var/cache/sciops-fleet"
HISTORY_LIMIT = 100
FILES_RECORD = ".sciops-files.json"
MOUNTS_RECORD = ".sciops-mounts.json"
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


class RecordDamaged(OciError):
    """The application's record on this node cannot be read as a record (bad JSON or the wrong shape)."""


class AppState:
    """One application's releases on this node, and its record. Changes are made under ``lock()``."""

    def __init__(self, app, state_root=DEFAULT_STATE_ROOT, facts_dir=DEFAULT_FACTS_DIR):
        self.app = app
        self.app_dir = os.path.join(state_root, app)
        self.releases_dir = os.path.join(self.app_dir, "releases")
        self.facts_dir = facts_dir
        self.fact_path = os.path.join(facts_dir, fact_name(app) + ".fact")

    # -- record ---------------------------------------------------------------------------------

    def load(self):
        """The record (an empty one when there is none yet)."""
        try:
            with open(self.fact_path, encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            record = {}
        except ValueError as exc:
            raise RecordDamaged(f"the record {self.fact_path} is damaged ({exc}); move it away to start a new one") from None
        record.setdefault("application", self.app)
        record.setdefault("releases", {})
        record.setdefault("history", [])
        for slot in SLOTS:
            record.setdefault(slot, None)
        return record

    def save(self, record):
        record["history"] = record["history"][-HISTORY_LIMIT:]
        os.makedirs(self.facts_dir, exist_ok=True)
        atomic_write(self.fact_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)

    @contextlib.contextmanager
    def lock(self):
        """Hold the application's lock: one change at a time (a timer run and a manual run do not interleave)."""
        os.makedirs(self.releases_dir, exist_ok=True)
        fd = os.open(os.path.join(self.app_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.path.join("releases", name), tmp)
        os.replace(tmp, link)
        fsync_dir(self.app_dir)

    def clear_slot(self, slot):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.app_dir, slot))
            fsync_dir(self.app_dir)

    def release_path(self, name):
        return os.path.join(self.releases_dir, name)

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
        current = record.get("current") if isinstance(record, dict) else None
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
            if os.path.islink(path):
                files[relative] = {"link": os.readlink(path)}
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

    Returns a dict: name, path, changed, artifacts (per artifact: files and transfer), transfer totals.
    """
    name = release_dir_name(release, digest)
    final = state.release_path(name)
    outcome = {"name": name, "path": final, "changed": False, "artifacts": [], "transfer": {"bytes_downloaded": 0, "blobs_downloaded": 0}}
    if state.is_installed(name):
        outcome["changed"] = activate_images(state, release, final, check_mode=check_mode)
        return outcome
    outcome["changed"] = True
    if check_mode:
        return outcome
    with state.lock():
        if state.is_installed(name):
            outcome["changed"] = activate_images(state, release, final)
            return outcome
        staging = os.path.join(state.releases_dir, f".{name}.staging")
        # A staging tree under the lock is what an interrupted install left: start it over.
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
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
            source = os.path.join(staging, config["source"])
            where = f"config {config['dest']} of {release['application']} {release['version']}"
            try:
                with open(source, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                raise OciError(f"{where}: cannot read its template {config['source']}: {exc.strerror}") from None
            merged = {**variables, **config["vars"], **(config_vars or {})}
            dest = os.path.join(staging, config["dest"])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            atomic_write(dest, _render(text, merged, where).encode("utf-8"), mode=int(config["mode"], 8))
        atomic_write(os.path.join(staging, RELEASE_FILE), (json.dumps(release, indent=2, sort_keys=True) + "\n").encode())
        if mounts:
            atomic_write(os.path.join(staging, MOUNTS_RECORD), (json.dumps(mounts, indent=2, sort_keys=True) + "\n").encode())
        files = _record_files(staging, placed)
        atomic_write(os.path.join(staging, FILES_RECORD), json.dumps({"digest": digest, "files": files}, sort_keys=True).encode())
        if os.path.exists(final):  # a directory without the files record is an unfinished copy
            deactivate_images(final)
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_dir(state.releases_dir)
        activate_images(state, release, final)
        record = state.load()
        record["releases"][name] = {"digest": digest, "version": release["version"], "protocol": release["protocol"],
                                    "role": release["role"], "installed_at": now(), "status": "installed"}
        if packages:
            for package in packages:
                package["file"] = os.path.relpath(package.pop("path"), staging)
            record["releases"][name]["packages"] = packages
        state.save(record)
    return outcome


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


def _read_mounts(release_dir):
    try:
        with open(os.path.join(release_dir, MOUNTS_RECORD), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return []


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
    for artifact in release["artifacts"]:
        if not artifact.get("mount_point"):
            continue
        link, target = artifact["mount_point"], os.path.join(state.app_dir, "current", artifact["name"])
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link) and not os.path.islink(link):
            raise OciError(f"mount_point {link} of artifact {artifact['name']} exists and is not a link; "
                           f"move it away so that it can point to {target}")
        changed = True
        if check_mode:
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        tmp = f"{link}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(os.path.dirname(link))
    return changed


def deactivate_images(release_dir):
    """Stop, disable and remove the mount units of the release in RELEASE_DIR (before it is removed)."""
    mounts = _read_mounts(release_dir)
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
        for event in reversed(record["history"]):
            if event.get("event") != "switch" or event.get("slot") != "current" or not event.get("from"):
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
    record = state.load()
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
    outcome = {"changed": before != name, "from": release_summary(record, before) if before else None,
               "to": release_summary(record, name), "pruned": [], "services": release_services(state, name),
               "oldstable_from": None, "oldstable_moved": "oldstable" in pending}
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
    with state.lock():
        record = state.load()
        for target_slot in sorted(pending, key=lambda s: s != "oldstable"):  # oldstable first: a server never lacks either
            target, previous = pending[target_slot], state.slot_target(target_slot)
            if previous == target:
                continue
            state.set_slot(target_slot, target)
            record[target_slot] = release_summary(record, target)
            record["releases"][target]["last_active"] = now()
            record["history"].append({"time": now(), "event": "switch", "slot": target_slot,
                                      "reason": reason if target_slot == slot else f"{reason} (lockstep)",
                                      "from": release_summary(record, previous) if previous else None,
                                      "to": release_summary(record, target), "result": "switched"})
        _prune(state, record, keep, protect, pending, outcome)
        if outcome["changed"]:
            state.save(record)
    return outcome


def retire_slot(state, slot="oldstable", keep=3, protect=(), reason="retire", check_mode=False):
    """Empty SLOT (never ``current``), record it, and prune its release when KEEP allows.

    Returns a dict: changed, from (what the slot pointed to), pruned."""
    if slot == "current":
        raise OciError("current is never emptied; switch it to another release instead")
    if slot not in SLOTS:
        raise OciError(f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    record = state.load()
    before = state.slot_target(slot)
    outcome = {"changed": before is not None, "from": release_summary(record, before) if before else None, "pruned": []}
    if check_mode or before is None:
        return outcome
    with state.lock():
        record = state.load()
        state.clear_slot(slot)
        record[slot] = None
        record["history"].append({"time": now(), "event": "retire", "slot": slot, "reason": reason,
                                  "from": outcome["from"], "to": None, "result": "retired"})
        _prune(state, record, keep, protect, {}, outcome)
        state.save(record)
    return outcome


def _prune(state, record, keep, protect, pending, outcome):
    """Remove what _prune_plan names (under the lock), noting it in OUTCOME."""
    for victim in _prune_plan(state, record, keep, protect, pending):
        deactivate_images(state.release_path(victim))
        shutil.rmtree(state.release_path(victim), ignore_errors=True)
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
    usable = sorted((c for c in candidates if c[1].get("status") != "failed"),
                    key=lambda c: c[1].get("last_active") or c[1].get("installed_at") or "", reverse=True)
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


def record_health(state, digest, healthy, results):
    """Mark release DIGEST good or failed in the record; a failed release never counts as good again until re-checked."""
    with state.lock():
        record = state.load()
        name = state.name_for(record, digest)
        if name is None:
            raise OciError(f"release {digest} of {state.app} is not installed on this node")
        status = "good" if healthy else "failed"
        changed = record["releases"][name].get("status") != status
        record["releases"][name]["status"] = status
        record["releases"][name]["checked_at"] = now()
        for slot in SLOTS:
            if record.get(slot) and record[slot].get("name") == name:
                record[slot]["status"] = status
        record["history"].append({"time": now(), "event": "health", "release": release_summary(record, name),
                                  "result": status, "failed_checks": [r["name"] for r in results if not r["ok"]]})
        state.save(record)
    return changed


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
