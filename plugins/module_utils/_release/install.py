# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Installing a release on a node: its artifacts fetched by digest (verified, cached), placed by their install
kind, its configs rendered, into a staging tree renamed into ``releases/<version>-<short digest>/`` when complete.
Slots are never touched here."""

from __future__ import annotations

import json
import os
import shutil
import string
from typing import Any, Dict, Mapping, Optional

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import pull_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._release import kinds
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError, disk_full_names
from ansible_collections.sciops.fleet.plugins.module_utils._release.files import record_files
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Placement
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import RELEASE_FILE, release_dir_name
from ansible_collections.sciops.fleet.plugins.module_utils._release.reconcile import reconcile
from ansible_collections.sciops.fleet.plugins.module_utils._release.record import next_seq, release_entry
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import FILES_RECORD, AppState


def render(text: str, variables: Mapping[str, str], where: str) -> str:
    """TEXT with ``${name}`` replaced from VARIABLES; an undefined name or a stray ``$`` names WHERE."""
    try:
        return string.Template(text).substitute(variables)
    except KeyError as exc:
        raise NodeError(f"{where}: the template uses ${{{exc.args[0]}}}, which no variable defines; "
                        f"add it to the config's vars or to the rollout's config variables") from None
    except ValueError as exc:
        raise NodeError(f"{where}: {exc}; write a literal $ as $$") from None


def install_release(state: AppState, release: Dict[str, Any], digest: str, registry_options: Mapping[str, Any],
                    cache_dir: Optional[str] = None, config_vars: Optional[Mapping[str, str]] = None,
                    check_mode: bool = False) -> Dict[str, Any]:
    """Install RELEASE (validated dict) with id DIGEST into releases/<version>-<short digest>/; never touch slots.

    First makes the record agree with the disk (see reconcile()): a release directory left complete by an
    interrupted run is adopted, not installed again. A failed install removes its staging tree.
    Returns a dict: name, path, changed, artifacts (per artifact: files and transfer), transfer totals,
    repairs (what reconcile() repaired) and record_rebuilt (where a damaged record was kept, or None).
    """
    name = release_dir_name(release, digest)
    final = state.release_path(name)
    state.cache_dir = cache_dir
    outcome: Dict[str, Any] = {"name": name, "path": final, "changed": False, "artifacts": [], "repairs": [],
                               "record_rebuilt": None, "transfer": {"bytes_downloaded": 0, "blobs_downloaded": 0}}
    record, outcome["repairs"] = reconcile(state, check_mode)
    outcome["record_rebuilt"] = state.rebuilt
    if name in record["releases"] and state.is_installed(name):
        outcome["changed"] = kinds.activate(state, release, final, check_mode=check_mode) or bool(outcome["repairs"])
        return outcome
    outcome["changed"] = True
    if check_mode:
        return outcome
    consequence = "the release was not installed and current is untouched; free space there and install again"
    with state.lock():
        record = state.load()
        if name in record["releases"] and state.is_installed(name):
            outcome["changed"] = kinds.activate(state, release, final) or bool(outcome["repairs"])
            return outcome
        # A mount point the node may not take is refused before anything is fetched or placed.
        kinds.activate(state, release, final, check_mode=True)
        staging = os.path.join(state.releases_dir, f".{name}.staging")
        try:
            with disk_full_names(state, consequence):
                # A staging tree under the lock is what an interrupted install left: start it over.
                shutil.rmtree(staging, ignore_errors=True)
                os.makedirs(staging)
                job = Placement(state, release, staging, final)
                _build_release(job, digest, registry_options, cache_dir, config_vars, outcome)
                if os.path.exists(final):  # a directory without the files record is an unfinished copy
                    kinds.deactivate(final)
                    shutil.rmtree(final)
                os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-built stays behind, even on a full disk
            raise
        fsync_dir(state.releases_dir)
        kinds.activate(state, release, final)
        record["releases"][name] = release_entry(dict(release, digest=digest), next_seq(record))
        if job.packages:
            record["releases"][name]["packages"] = job.packages
        state.save(record)
    return outcome


def _no_link_on_the_way(staging: str, relative: str, what: str) -> str:
    """STAGING/RELATIVE, refused when it or a directory on the way is a symbolic link: an image may hold links that
    lead out of the release (absolute ones are kept in unpacked trees), and a config is never read or written
    through one."""
    path = staging
    for part in relative.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise NodeError(f"{what}: {os.path.relpath(path, staging)} in the release is a symbolic link; a config is "
                            "never read or written through a link: give a path inside a real directory of the release")
    return path


def _build_release(job: Placement, digest: str, registry_options: Mapping[str, Any], cache_dir: Optional[str],
                   config_vars: Optional[Mapping[str, str]], outcome: Dict[str, Any]) -> None:
    """Fill JOB's staging tree with the release's artifacts (each placed by its kind), configs, release.json,
    mounts record and files record."""
    release, staging = job.release, job.staging
    cache = BlobCache(cache_dir) if cache_dir else None
    for artifact in release["artifacts"]:
        reference = parse_reference(artifact["reference"])
        store = open_store(reference, **registry_options)
        pulled = pull_artifact(store, reference.repository, artifact["digest"], job.dest(artifact), str(reference),
                               cache=cache, expected_digest=artifact["digest"], link=True,
                               layers=kinds.KINDS[artifact["install"]].pull_layers)
        kinds.KINDS[artifact["install"]].place(job, artifact, pulled["files"], str(reference))
        for key in ("bytes_downloaded", "blobs_downloaded"):
            outcome["transfer"][key] += store.stats.get(key, 0)
        outcome["artifacts"].append({"name": artifact["name"], "digest": artifact["digest"],
                                     "files": [f["name"] for f in pulled["files"]]})
    variables = {"application": release["application"], "version": release["version"],
                 "release_dir": job.final, "current_dir": os.path.join(job.state.app_dir, "current")}
    for config in release["configs"]:
        where = f"config {config['dest']} of {release['application']} {release['version']}"
        source = _no_link_on_the_way(staging, config["source"], f"{where}: its template")
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise NodeError(f"{where}: cannot read its template {config['source']}: {exc.strerror}") from None
        merged = {**variables, **config["vars"], **(config_vars or {})}
        dest = _no_link_on_the_way(staging, config["dest"], where)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        atomic_write(dest, render(text, merged, where).encode("utf-8"), mode=int(config["mode"], 8))
    atomic_write(os.path.join(staging, RELEASE_FILE), (json.dumps(release, indent=2, sort_keys=True) + "\n").encode())
    kinds.seal(job)
    files = record_files(staging, job.verified)
    atomic_write(os.path.join(staging, FILES_RECORD), json.dumps({"digest": digest, "files": files}, sort_keys=True).encode())
    for package in job.packages:
        package["file"] = os.path.relpath(package.pop("path"), staging)
