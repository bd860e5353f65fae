# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) as an OciStore.

Tags are ``org.opencontainers.image.ref.name`` annotations on index.json entries (the bare tag, as ORAS
writes them). Manifests stored without a tag are still listed in index.json, so referrers are found by
scanning its manifests for a ``subject``. index.json is rewritten atomically and durably under an flock
on the layout directory; blobs are content-addressed and written through the verified placement routines.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, locked
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache, place_blob
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import (
    DigestMismatchError,
    NotFoundError,
    OciError,
    SizeMismatchError,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest, split_digest, validate_tag
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    INDEX_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    REF_NAME_ANNOTATION,
    Descriptor,
    OciStore,
    filter_referrers,
    manifest_media_type,
    manifest_subject,
    parse_manifest,
    referrer_descriptor,
)

LAYOUT_VERSION = "1.0.0"


class LayoutStore(OciStore):
    """The image layout at PATH; CREATE makes an empty one when PATH holds none. The ``repo`` argument of
    every operation is accepted for interface compatibility and ignored. Bytes copied out of the layout count
    as downloaded, bytes copied in as uploaded.
    """

    def __init__(self, path: str, create: bool = False) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        marker = os.path.join(self.path, "oci-layout")
        if not os.path.exists(marker):
            if not create:
                raise NotFoundError(self.path, "OCI image layout", "the directory has no oci-layout file")
            os.makedirs(self.path, exist_ok=True)
            with locked(self.path):
                if not os.path.exists(os.path.join(self.path, "index.json")):
                    self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
                atomic_write(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        try:
            with open(marker, encoding="utf-8") as handle:
                version = json.load(handle).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError) as exc:
            raise OciError(f"OCI image layout {self.path}: cannot read its oci-layout file ({exc})") from None
        if not str(version).startswith("1."):
            raise OciError(f"OCI image layout {self.path} has layout version {version!r}; only 1.x is supported")

    def __repr__(self) -> str:
        return f"LayoutStore({self.path!r})"

    def _name(self, ref):
        return f"oci-layout:{self.path}{'@' if is_digest(ref) else ':'}{ref}"

    def _read_index(self):
        path = os.path.join(self.path, "index.json")
        try:
            with open(path, "rb") as handle:
                return parse_manifest(handle.read(MAX_MANIFEST_SIZE * 16), f"index {path}")
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}

    def _write_index(self, index):
        atomic_write(os.path.join(self.path, "index.json"), json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")

    def _entries(self):
        return [m for m in self._read_index().get("manifests") or [] if isinstance(m, dict)]

    def _update_index(self, change):
        """Apply CHANGE(manifests) -> bool (changed) to index.json under the layout lock."""
        with locked(self.path):
            index = self._read_index()
            manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
            if change(manifests):
                index["manifests"] = manifests
                self._write_index(index)

    def blob_path(self, digest: str) -> str:
        """Where blob DIGEST is stored in the layout."""
        algorithm, encoded = split_digest(digest)
        return os.path.join(self.path, "blobs", algorithm, encoded)

    def blob_exists(self, repo: str | None, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def _require_blob(self, digest):
        path = self.blob_path(digest)
        if not os.path.isfile(path):
            raise NotFoundError(self._name(digest), "blob")
        return path

    def push_blob(self, repo: str | None, source: str | bytes, digest: str, size: int) -> bool:
        path = self.blob_path(digest)
        if os.path.isfile(path) and os.path.getsize(path) == int(size):
            self.stats["blobs_skipped"] += 1
            return False
        what = f"blob {self._name(digest)}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) != int(size):
                raise SizeMismatchError(f"content for {what}", size, len(data))
            actual = digest_bytes(data, split_digest(digest)[0])
            if actual != digest:
                raise DigestMismatchError(f"content for {what}", digest, actual)
            atomic_write(path, data)
        else:
            place_blob(source, os.path.dirname(path), os.path.basename(path), digest, size, what=f"file {source} for {what}")
        self.stats["blobs_uploaded"] += 1
        self.stats["bytes_uploaded"] += int(size)
        return True

    def _read_verified(self, digest, max_size, what):
        with open(self._require_blob(digest), "rb") as handle:
            data = handle.read(max_size + 1)
        if len(data) > max_size:
            raise OciError(f"{what} is larger than {max_size} bytes, too large to read into memory")
        actual = digest_bytes(data, split_digest(digest)[0])
        if actual != digest:
            raise DigestMismatchError(what, digest, actual)
        return data

    def read_blob(self, repo: str | None, digest: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        data = self._read_verified(digest, max_size, f"blob {self._name(digest)}")
        self.stats["bytes_downloaded"] += len(data)
        return data

    def fetch_blob_to(self, repo: str | None, descriptor: Descriptor, dest_dir: str, name: str, mode: int | None = None,
                      progress: Callable[[int, int], None] | None = None, cache: BlobCache | None = None,
                      link: bool = False) -> str:
        source = self._require_blob(descriptor.digest)
        what = f"blob {self._name(descriptor.digest)}"
        if cache is not None:
            if cache.has(descriptor.digest, descriptor.size, verify=link):
                self.stats["blobs_skipped"] += 1
            else:
                cache.put_from(source, descriptor.digest, descriptor.size, verify=True)
                self._count_copy(descriptor.size)
            final = cache.place(descriptor.digest, dest_dir, name, descriptor.size, mode=mode, link=link)
        else:
            # A verified copy, never a link: the layout's files must not change when a pulled file does.
            final = place_blob(source, dest_dir, name, descriptor.digest, descriptor.size, mode=mode, what=what)
            self._count_copy(descriptor.size)
        if progress is not None:
            progress(descriptor.size, descriptor.size)
        return final

    def _count_copy(self, size):
        self.stats["blobs_downloaded"] += 1
        self.stats["bytes_downloaded"] += int(size)

    def resolve(self, repo: str | None, ref: str) -> Descriptor:
        if is_digest(ref):
            path = self._require_blob(ref)
            for entry in self._entries():
                if entry.get("digest") == ref:
                    return Descriptor.from_dict(entry, f"index.json entry of {self._name(ref)}")
            with open(path, "rb") as handle:
                data = handle.read(MAX_MANIFEST_SIZE + 1)
            return Descriptor(manifest_media_type(parse_manifest(data, f"manifest {self._name(ref)}")), ref, len(data))
        validate_tag(ref)
        for entry in self._entries():
            if (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION) == ref:
                return Descriptor.from_dict(entry, f"index.json entry of {self._name(ref)}")
        raise NotFoundError(self._name(ref), "manifest", "no index.json entry has that tag")

    def get_manifest(self, repo: str | None, ref: str) -> Tuple[bytes, str, str]:
        descriptor = self.resolve(repo, ref)
        data = self._read_verified(descriptor.digest, MAX_MANIFEST_SIZE, f"manifest {self._name(ref)}")
        return data, descriptor.digest, descriptor.media_type

    def put_manifest(self, repo: str | None, ref: str, data: bytes, media_type: str) -> str:
        algorithm = split_digest(ref)[0] if is_digest(ref) else "sha256"
        digest = digest_bytes(data, algorithm)
        if is_digest(ref) and ref != digest:
            raise DigestMismatchError(f"manifest {self._name(ref)}", ref, digest)
        tag = None if is_digest(ref) else ref
        if tag is not None:
            validate_tag(tag)
        manifest = parse_manifest(data, f"manifest {self._name(ref)}")
        manifest_subject(manifest)  # a malformed subject is refused before anything is written
        path = self.blob_path(digest)
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, bytes(data))
        entry = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if manifest.get("artifactType"):
            entry["artifactType"] = manifest["artifactType"]

        def change(manifests):
            if tag is None:
                if any(m.get("digest") == digest for m in manifests):
                    return False
                manifests.append(entry)
                return True
            current = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME_ANNOTATION) == tag]
            if len(current) == 1 and current[0].get("digest") == digest:
                return False
            manifests[:] = [m for m in manifests if m not in current]
            # The tagged entry replaces an untagged one for the same digest, so it is not listed twice.
            manifests[:] = [m for m in manifests if m.get("digest") != digest or m.get("annotations")]
            manifests.append({**entry, "annotations": {REF_NAME_ANNOTATION: tag}})
            return True

        self._update_index(change)
        self.stats["manifests_uploaded"] += 1
        return digest

    def delete_manifest(self, repo: str | None, ref: str) -> None:
        digest = self.resolve(repo, ref).digest
        removed = []

        def change(manifests):
            removed.extend(m for m in manifests if m.get("digest") == digest)
            manifests[:] = [m for m in manifests if m.get("digest") != digest]
            return bool(removed)

        self._update_index(change)
        if not removed:
            raise NotFoundError(self._name(digest), "manifest", "it is not listed in index.json")
        # The blob stays: other manifests may refer to it. Removing unreferenced blobs is a garbage collection.

    def list_tags(self, repo: str | None) -> List[str]:
        tags = [(m.get("annotations") or {}).get(REF_NAME_ANNOTATION) for m in self._entries()]
        return sorted({tag for tag in tags if tag})

    def referrers(self, repo: str | None, digest: str, artifact_type: str | None = None) -> List[Descriptor]:
        split_digest(digest)
        found = {}
        for entry in self._entries():
            candidate = entry.get("digest")
            if entry.get("mediaType") in INDEX_MEDIA_TYPES or candidate in found or not is_digest(candidate):
                continue
            path = self.blob_path(candidate)
            try:
                with open(path, "rb") as handle:
                    data = handle.read(MAX_MANIFEST_SIZE + 1)
                manifest = parse_manifest(data, f"manifest {self._name(candidate)}")
            except (OSError, OciError):
                continue  # a dangling or foreign entry is not a referrer
            subject = manifest.get("subject")
            if isinstance(subject, dict) and subject.get("digest") == digest:
                found[candidate] = referrer_descriptor(data, candidate, entry.get("mediaType"))
        return filter_referrers(list(found.values()), artifact_type)
