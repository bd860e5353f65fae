# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What every place that holds OCI content offers: media types, descriptors, manifests, the store interface.

``RegistryClient`` (``_oci/client.py``) and ``LayoutStore`` (``_oci/layout.py``) both implement ``OciStore``, so a module
works the same with a registry or an image layout directory as source or target.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Mapping, TYPE_CHECKING, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import NotFoundError, OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest, split_digest
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes

if TYPE_CHECKING:  # only named in annotations
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# The layers of a container image: tar changesets, applied bottom first. Non-distributable (foreign) layers are not
# among them: registries need not serve them.
IMAGE_LAYER_MEDIA_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)

TITLE_ANNOTATION = "org.opencontainers.image.title"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
# The empty JSON config ORAS artifacts use.
EMPTY_JSON = b"{}"
# Registries reject manifests above 4 MiB; reading more would only waste memory.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

STAT_KEYS = (
    "requests", "retries", "blobs_uploaded", "blobs_skipped", "blobs_mounted", "blobs_downloaded",
    "bytes_uploaded", "bytes_downloaded", "resumed", "manifests_uploaded",
)


def new_stats() -> Dict[str, int]:
    """A zeroed transfer counter dict (see STAT_KEYS)."""
    return dict.fromkeys(STAT_KEYS, 0)


class Descriptor:
    """An OCI content descriptor."""

    __slots__ = ("media_type", "digest", "size", "annotations", "artifact_type", "extra")

    def __init__(self, media_type: str | None, digest: str, size: int, annotations: Mapping[str, str] | None = None,
                 artifact_type: str | None = None, extra: Mapping[str, Any] | None = None) -> None:
        split_digest(digest)
        self.media_type = media_type
        self.digest = digest
        self.size = int(size)
        self.annotations = dict(annotations or {})
        self.artifact_type = artifact_type
        # Other descriptor fields (platform, urls, data) are carried through unchanged.
        self.extra = dict(extra or {})

    @property
    def title(self) -> str | None:
        """The file name annotation, or None."""
        return self.annotations.get(TITLE_ANNOTATION)

    @classmethod
    def from_dict(cls, data: Any, where: str = "descriptor") -> Descriptor:
        """Build from the JSON form; raise OciError naming WHERE when it is malformed."""
        if not isinstance(data, dict):
            raise OciError(f"{where} is not a JSON object")
        try:
            size = data["size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError("size must be a non-negative integer")
            if not is_digest(data.get("digest")):
                raise ValueError(f"digest {data.get('digest')!r} is not a valid sha256/sha512 digest")
            extra = {k: v for k, v in data.items() if k not in ("mediaType", "digest", "size", "annotations", "artifactType")}
            return cls(data.get("mediaType"), data["digest"], size, data.get("annotations"), data.get("artifactType"), extra)
        except (KeyError, ValueError, TypeError) as exc:
            raise OciError(f"{where} is malformed: {exc}") from None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form."""
        data = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            data["artifactType"] = self.artifact_type
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        data.update(self.extra)
        return data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descriptor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Descriptor({self.media_type!r}, {self.digest!r}, {self.size})"


def encode_json(data: Any) -> bytes:
    """Canonical bytes for a manifest or index we write: compact, sorted keys, so equal content has one digest."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_manifest(data: bytes, where: str = "manifest") -> Dict[str, Any]:
    """Parse manifest or index bytes into a dict; raise OciError naming WHERE when it is not one."""
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OciError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise OciError(f"{where} is not an OCI or docker v2 manifest (schemaVersion 2)")
    return manifest


def manifest_media_type(manifest: Mapping[str, Any], fallback: str | None = None) -> str:
    """The media type a manifest declares, else FALLBACK, else guessed from its shape."""
    if manifest.get("mediaType"):
        return manifest["mediaType"]
    if fallback:
        return fallback
    return OCI_INDEX if "manifests" in manifest else OCI_MANIFEST


def manifest_children(manifest: Mapping[str, Any], where: str = "manifest") -> List[Descriptor]:
    """The descriptors a manifest points to: config and layers, or an index's manifests (subject excluded)."""
    items = []
    if "manifests" in manifest:
        items = list(manifest.get("manifests") or [])
    else:
        if manifest.get("config") is not None:
            items.append(manifest["config"])
        items.extend(manifest.get("layers") or manifest.get("blobs") or [])
    return [Descriptor.from_dict(item, f"{where}, entry {n}") for n, item in enumerate(items)]


def manifest_subject(manifest: Mapping[str, Any], where: str = "manifest") -> Descriptor | None:
    """The manifest's subject descriptor, or None."""
    subject = manifest.get("subject")
    return Descriptor.from_dict(subject, f"{where}, subject") if subject is not None else None


def referrer_descriptor(data: bytes, digest: str | None = None, media_type: str | None = None) -> Descriptor:
    """The descriptor under which manifest bytes DATA is listed as a referrer of its subject."""
    manifest = parse_manifest(data)
    config = manifest.get("config") or {}
    artifact_type = manifest.get("artifactType") or config.get("mediaType")
    return Descriptor(
        manifest_media_type(manifest, media_type), digest or digest_bytes(data), len(data),
        annotations=manifest.get("annotations"), artifact_type=artifact_type,
    )


def build_manifest(layers: Iterable[Descriptor], config: Descriptor | None = None, subject: Descriptor | None = None,
                   artifact_type: str | None = None, annotations: Mapping[str, str] | None = None) -> bytes:
    """Bytes of an OCI image manifest. CONFIG defaults to the empty JSON config (ORAS artifacts)."""
    if config is None:
        config = Descriptor(OCI_EMPTY, digest_bytes(EMPTY_JSON), len(EMPTY_JSON))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if subject is not None:
        manifest["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    if annotations:
        manifest["annotations"] = dict(annotations)
    return encode_json(manifest)


def filter_referrers(descriptors: Iterable[Descriptor], artifact_type: str | None = None) -> List[Descriptor]:
    """DESCRIPTORS whose artifact type is ARTIFACT_TYPE (all when None)."""
    return [d for d in descriptors if artifact_type is None or d.artifact_type == artifact_type]


class OciStore:
    """The interface modules use. ``repo`` is the repository name (ignored by an image layout) and
    ``ref`` a tag or a digest. Counters of what was transferred are kept in ``stats`` (see STAT_KEYS).
    """

    def __init__(self) -> None:
        self.stats = new_stats()

    def resolve(self, repo: str | None, ref: str) -> Descriptor:
        """The Descriptor (digest, media_type, size) REF points to; NotFoundError when it does not exist."""
        raise NotImplementedError

    def get_manifest(self, repo: str | None, ref: str) -> Tuple[bytes, str, str]:
        """``(bytes, digest, media_type)`` of a manifest or index; the digest is verified."""
        raise NotImplementedError

    def put_manifest(self, repo: str | None, ref: str, data: bytes, media_type: str) -> str:
        """Store manifest bytes DATA under REF (a tag, or its digest); return the digest.

        A manifest with a ``subject`` becomes discoverable through ``referrers`` of that subject.
        """
        raise NotImplementedError

    def blob_exists(self, repo: str | None, digest: str) -> bool:
        """True when the blob is present."""
        raise NotImplementedError

    def push_blob(self, repo: str | None, source: str | bytes, digest: str, size: int) -> bool:
        """Store SOURCE (a file path or bytes) as blob DIGEST unless present; True when bytes were transferred."""
        raise NotImplementedError

    def read_blob(self, repo: str | None, digest: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob (config, metadata) as verified bytes."""
        raise NotImplementedError

    def fetch_blob_to(self, repo: str | None, descriptor: Descriptor, dest_dir: str, name: str, mode: int | None = None,
                      progress: Callable[[int, int], None] | None = None, cache: BlobCache | None = None,
                      link: bool = False) -> str:
        """Place blob DESCRIPTOR at DEST_DIR/NAME, verified and atomically (through CACHE, a BlobCache, when given).

        With LINK and a CACHE, the file is a hard link to the cache entry where it can be (see BlobCache.place), for
        trees never written to; an entry already in the cache is re-hashed first, since it is trusted from then on."""
        raise NotImplementedError

    def list_tags(self, repo: str | None) -> List[str]:
        """All tags of the repository ([] when it does not exist)."""
        raise NotImplementedError

    def referrers(self, repo: str | None, digest: str, artifact_type: str | None = None) -> List[Descriptor]:
        """Descriptors of the manifests whose subject is DIGEST, optionally only of ARTIFACT_TYPE."""
        raise NotImplementedError

    def delete_manifest(self, repo: str | None, ref: str) -> None:
        """Delete a manifest (by digest, or by the digest a tag points to) and with it every tag that points to it."""
        raise NotImplementedError

    def tag(self, repo: str | None, ref: str, new_tag: str) -> bool:
        """Point NEW_TAG at what REF points to, without copying any blob; return True when the tag moved."""
        data, digest, media_type = self.get_manifest(repo, ref)
        try:
            if self.resolve(repo, new_tag).digest == digest:
                return False
        except NotFoundError:
            pass
        self.put_manifest(repo, new_tag, data, media_type)
        return True
