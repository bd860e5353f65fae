# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Copy (promote) an artifact, image or index from one store to another, optionally with its referrers.

The manifest bytes are copied unchanged, so the digest at the destination is the digest at the source and
referrers keep pointing at it. What is transferred depends on where source and destination are:

* the same repository of the same store: a re-tag, no blob is read or written;
* two repositories of the same registry: each missing blob is mounted across repositories, and only
  uploaded when the registry declines the mount;
* different stores (registries, OCI layouts): each missing blob is downloaded with the verified routine
  into a temporary directory (one blob at a time) and pushed from there; a layout's blob file is pushed
  straight from the layout.

A destination that already has a blob or manifest is not sent it again, so a repeated copy sends nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import NotFoundError, OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import split_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import Descriptor, OciStore, manifest_children, parse_manifest
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import current_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oras.referrers import referrer_graph

COUNT_KEYS = ("blobs_copied", "blobs_mounted", "blobs_present", "bytes_copied", "manifests_copied")


class ArtifactCopy:
    """Copies manifests and blobs from SOURCE (repository SOURCE_REPO) to DESTINATION (DESTINATION_REPO).

    SOURCE and DESTINATION are OciStores; pass the same object for both when they are the same registry or
    layout, which turns blob transfers into cross-repository mounts and copies within a repository into
    re-tags. TEMP_DIR is where blobs wait between download and upload (default: the system's temp directory).
    """

    def __init__(self, source: OciStore, source_repo: str | None, destination: OciStore, destination_repo: str | None,
                 temp_dir: str | None = None) -> None:
        self.source = source
        self.source_repo = source_repo
        self.destination = destination
        self.destination_repo = destination_repo
        self.same_store = source is destination
        self.same_repository = self.same_store and (isinstance(source, LayoutStore) or source_repo == destination_repo)
        self.temp_dir = temp_dir
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self._present = {}
        self._manifests_done = set()
        self._blobs_done = set()
        self._scratch = None

    def destination_has(self, digest: str) -> bool:
        """True when the destination holds manifest DIGEST."""
        if self.same_repository:
            return True
        if digest not in self._present:
            try:
                self.destination.resolve(self.destination_repo, digest)
                self._present[digest] = True
            except NotFoundError:
                self._present[digest] = False
        return self._present[digest]

    def _must_walk(self, digest):
        """Whether the children of manifest DIGEST must be checked at the destination.

        A registry refuses a manifest whose blobs or child manifests it lacks, so a manifest it has is complete.
        An image layout enforces nothing: its blobs are checked, which costs a stat each.
        """
        if self.same_repository:
            return False
        return isinstance(self.destination, LayoutStore) or not self.destination_has(digest)

    def copy_children(self, digest: str, data: bytes) -> None:
        """Make sure everything the manifest DATA (digest DIGEST) points to is at the destination."""
        if not self._must_walk(digest):
            return
        where = f"manifest {digest}"
        manifest = parse_manifest(data, where)
        children = manifest_children(manifest, where)
        if "manifests" in manifest:
            for child in children:
                self.copy_manifest(child.digest)
        else:
            for blob in children:
                self.copy_blob(blob)

    def copy_manifest(self, digest: str, force: bool = False) -> None:
        """Copy manifest DIGEST and its children, storing it by digest unless present (or FORCE: store it anyway,
        which makes a registry or layout list it as a referrer of its subject)."""
        if digest in self._manifests_done:
            return
        self._manifests_done.add(digest)
        present = self.destination_has(digest)
        if present and not force and not isinstance(self.destination, LayoutStore):
            return
        data, _digest, media_type = self.source.get_manifest(self.source_repo, digest)
        self.copy_children(digest, data)
        if force or not present:
            self.destination.put_manifest(self.destination_repo, digest, data, media_type)
            self._present[digest] = True
            self.counts["manifests_copied"] += 1

    def copy_blob(self, descriptor: Descriptor) -> None:
        """Put blob DESCRIPTOR at the destination unless it is there: mount, push from a layout, or download and push."""
        digest = descriptor.digest
        if digest in self._blobs_done:
            return
        self._blobs_done.add(digest)
        if self.destination.blob_exists(self.destination_repo, digest):
            self.counts["blobs_present"] += 1
            return
        if self.same_store and hasattr(self.destination, "mount_blob"):
            if self.destination.mount_blob(self.destination_repo, digest, self.source_repo):
                self.counts["blobs_mounted"] += 1
                return
        if isinstance(self.source, LayoutStore):
            path = self.source.blob_path(digest)
            if not os.path.isfile(path):
                raise NotFoundError(f"oci-layout:{self.source.path}@{digest}", "blob",
                                    "a manifest in the layout names it but the layout does not hold it")
            self.destination.push_blob(self.destination_repo, path, digest, descriptor.size)
        else:
            path = self.source.fetch_blob_to(self.source_repo, descriptor, self._scratch_dir(), split_digest(digest)[1])
            try:
                self.destination.push_blob(self.destination_repo, path, digest, descriptor.size)
            finally:
                os.unlink(path)
        self.counts["blobs_copied"] += 1
        self.counts["bytes_copied"] += descriptor.size

    def copy_root(self, digest: str, refs: Iterable[str], referrers: Iterable[Descriptor] = ()) -> None:
        """Copy manifest DIGEST with its children, store it under every tag (or digest) in REFS, then copy
        REFERRERS (Descriptors, subjects before their own referrers) so the destination lists them."""
        try:
            data, _digest, media_type = self.source.get_manifest(self.source_repo, digest)
            self.copy_children(digest, data)
            self._manifests_done.add(digest)
            for ref in refs:
                self.destination.put_manifest(self.destination_repo, ref, data, media_type)
                self.counts["manifests_copied"] += 1
            self._present[digest] = True
            for descriptor in referrers:
                self.copy_manifest(descriptor.digest, force=True)
        finally:
            self.close()

    def _scratch_dir(self):
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="sciops-oras-copy-", dir=self.temp_dir)
        return self._scratch

    def close(self) -> None:
        """Remove the temporary directory (and any partial download in it)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def plan_copy(copier: ArtifactCopy, digest: str, tags: Sequence[str],
              recursive: bool) -> Tuple[Dict[str, str | None], List[Tuple[str, Descriptor]], List[Tuple[str, Descriptor]]]:
    """What copying DIGEST to TAGS (with its referrers when RECURSIVE) would change, without changing anything.

    Returns ``(before, missing, referrers)``: before maps each destination tag (or, with no tags, the digest)
    to the digest it points to now (None when absent); missing lists the referrers ``(subject, Descriptor)``
    the destination does not list yet; referrers is the whole referrer graph of DIGEST at the source.
    """
    if tags:
        before = {tag: current_digest(copier.destination, copier.destination_repo, tag) for tag in tags}
    else:
        before = {digest: digest if copier.destination_has(digest) else None}
    referrers, missing = [], []
    if recursive:
        referrers = referrer_graph(copier.source, copier.source_repo, digest)
        listed = {}
        for subject, descriptor in referrers:
            if subject not in listed:
                listed[subject] = {found.digest for found in
                                   copier.destination.referrers(copier.destination_repo, subject)}
            if descriptor.digest not in listed[subject]:
                missing.append((subject, descriptor))
    return before, missing, referrers


def copy_artifact(copier: ArtifactCopy, source_ref: str, tags: Sequence[str], recursive: bool = False,
                  check_mode: bool = False, expected_digest: str | None = None) -> Dict[str, Any]:
    """Copy what SOURCE_REF (a tag or digest in the copier's source) points to, to TAGS at the destination.

    With no TAGS the manifest is stored by digest only. RECURSIVE also copies its referrers (and theirs).
    EXPECTED_DIGEST, when given, must be what SOURCE_REF resolves to. Returns a dict: digest, media_type, size,
    changed, before (tag -> digest or None), moved (the tags that were or would be moved), referrers
    (dicts: digest, artifact_type, subject, copied) and counts (see COUNT_KEYS).
    """
    resolved = copier.source.resolve(copier.source_repo, source_ref)
    digest = resolved.digest
    if expected_digest and expected_digest != digest:
        raise OciError(f"the source resolves to {digest}, not to the digest {expected_digest} the destination names")
    before, missing, referrers = plan_copy(copier, digest, tags, recursive)
    moved = [ref for ref, value in before.items() if value != digest]
    changed = bool(moved or missing)
    if changed and not check_mode:
        copier.copy_root(digest, moved, [descriptor for _subject, descriptor in missing])
    missing_digests = {descriptor.digest for _subject, descriptor in missing}
    return {
        "digest": digest,
        "media_type": resolved.media_type,
        "size": resolved.size,
        "changed": changed,
        "before": before,
        "moved": moved,
        "referrers": [{"digest": d.digest, "artifact_type": d.artifact_type, "subject": subject,
                       "copied": d.digest in missing_digests} for subject, d in referrers],
        "counts": dict(copier.counts),
    }
