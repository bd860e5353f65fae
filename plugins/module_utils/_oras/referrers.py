# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Referrers: attach an artifact to a subject, discover what is attached, read what it says.

A referrer is an artifact whose manifest names a ``subject`` digest. The stores index it as they can:
the OCI 1.1 referrers API, the referrers tag schema (``sha256-<hex>`` index tag) on registries without
the API, or a scan of index.json in an OCI image layout. Used by oras_attach, oras_discover and oras_copy.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    OCI_MANIFEST,
    Descriptor,
    OciStore,
    manifest_children,
    parse_manifest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import LocalFile, push_artifact

DEFAULT_MAX_CONTENT_SIZE = 1024 * 1024
# Referrers of referrers (a signature of an SBOM of an image) are followed this deep, no deeper.
MAX_REFERRER_DEPTH = 8


def annotation_text(value: Any) -> str:
    """An annotation value as the string OCI requires: YAML's true/false/42 become "true"/"false"/"42"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def annotation_strings(annotations: Mapping[Any, Any] | None) -> Dict[str, str]:
    """ANNOTATIONS (a dict or None) with every value a string."""
    return {str(key): annotation_text(value) for key, value in (annotations or {}).items()}


def referrers_mechanism(store: OciStore) -> str | None:
    """How STORE found referrers: ``api``, ``tag_schema``, ``layout_index``, or None when it cannot tell."""
    if isinstance(store, LayoutStore):
        return "layout_index"
    return getattr(store, "referrers_mechanism", None)


def resolve_subject(store: OciStore, repo: str | None, ref: str | None, option: str = "subject") -> Descriptor:
    """The Descriptor of the manifest REF (a tag or digest) points to; a missing REF is an error naming OPTION."""
    if not ref:
        raise OciError(f"{option} names no tag or digest; write it as REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@DIGEST")
    return store.resolve(repo, ref)


def is_listed(store: OciStore, repo: str | None, subject_digest: str, digest: str) -> bool:
    """True when DIGEST is among the referrers STORE lists for SUBJECT_DIGEST."""
    return any(found.digest == digest for found in store.referrers(repo, subject_digest))


def attach(store: OciStore, repo: str | None, subject: Descriptor, files: Sequence[LocalFile],
           artifact_type: str | None, annotations: Mapping[str, str] | None = None,
           check_mode: bool = False) -> Dict[str, Any]:
    """Attach FILES (LocalFiles) to SUBJECT (a Descriptor) as a referrer of ARTIFACT_TYPE.

    The referrer is stored by digest only. It is idempotent by content: the same files, type and annotations
    give the same manifest, and when the store already lists it as a referrer of SUBJECT nothing is written.
    A manifest that exists but is not listed (an index lost or edited by hand) is stored again, which lists it.
    Returns push_artifact's dict plus ``listed_before``.
    """
    outcome = push_artifact(store, repo, [], files, artifact_type=artifact_type, annotations=annotations,
                            subject=subject, check_mode=True)
    listed = is_listed(store, repo, subject.digest, outcome["digest"])
    outcome["listed_before"] = listed
    outcome["changed"] = not listed
    if listed or check_mode:
        return outcome
    pushed = push_artifact(store, repo, [], files, artifact_type=artifact_type, annotations=annotations, subject=subject)
    if not pushed["changed"]:
        store.put_manifest(repo, outcome["digest"], outcome["manifest"], OCI_MANIFEST)
    outcome["uploaded"] = pushed["uploaded"]
    return outcome


def _matches(annotations, wanted):
    return all(annotations.get(key) == value for key, value in wanted.items())


def decode_content(data: bytes) -> Any:
    """File content for a play: parsed JSON when it parses, else text; None when it is not UTF-8 text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_files(store, repo, manifest, where, max_content_size):
    """The named layers of MANIFEST as dicts; files of at most MAX_CONTENT_SIZE bytes are read and decoded."""
    files, content = [], {}
    if "manifests" in manifest:
        return files, content
    layers = manifest_children({"layers": manifest.get("layers") or manifest.get("blobs") or []}, where)
    for layer in layers:
        name = layer.title or layer.digest
        entry = {"name": name, "digest": layer.digest, "size": layer.size, "media_type": layer.media_type,
                 "annotations": layer.annotations, "fetched": False}
        if layer.size <= max_content_size:
            value = decode_content(store.read_blob(repo, layer.digest, max_size=max_content_size))
            if value is not None:
                content[name] = value
                entry["fetched"] = True
        files.append(entry)
    return files, content


def discover(store: OciStore, repo: str | None, subject_digest: str, artifact_type: str | None = None,
             annotations: Mapping[str, Any] | None = None, fetch_content: bool = False,
             max_content_size: int = DEFAULT_MAX_CONTENT_SIZE) -> List[Dict[str, Any]]:
    """The referrers of SUBJECT_DIGEST as dicts (digest, artifact_type, media_type, size, annotations), in the
    order the store lists them, filtered by ARTIFACT_TYPE and by ANNOTATIONS (every key/value must match).

    The manifest of each candidate is read when annotations are filtered or content is fetched, so the filter
    sees the manifest's own annotations even where the index does not copy them. With FETCH_CONTENT each
    referrer also gets ``files`` (its named layers) and ``content`` (file name -> decoded content) for the files
    of at most MAX_CONTENT_SIZE bytes that are UTF-8 text.
    """
    wanted = annotation_strings(annotations)
    found = []
    for descriptor in store.referrers(repo, subject_digest, artifact_type):
        item = {"digest": descriptor.digest, "artifact_type": descriptor.artifact_type,
                "media_type": descriptor.media_type, "size": descriptor.size, "annotations": descriptor.annotations}
        if wanted or fetch_content:
            where = f"referrer {descriptor.digest} of {subject_digest}"
            data, _digest, media_type = store.get_manifest(repo, descriptor.digest)
            manifest = parse_manifest(data, where)
            item["annotations"] = manifest.get("annotations") or {}
            item["media_type"] = media_type or item["media_type"]
            if not _matches(item["annotations"], wanted):
                continue
            if fetch_content:
                item["files"], item["content"] = _read_files(store, repo, manifest, where, max_content_size)
        elif not _matches(item["annotations"], wanted):
            continue
        found.append(item)
    return found


def referrer_graph(store: OciStore, repo: str | None, digest: str,
                   max_depth: int = MAX_REFERRER_DEPTH) -> List[Tuple[str, Descriptor]]:
    """The referrers of DIGEST and, recursively, theirs: ``[(subject digest, Descriptor)]``, subjects first."""
    graph, seen, level = [], {digest}, [digest]
    for _depth in range(max_depth):
        following = []
        for subject in level:
            for descriptor in store.referrers(repo, subject):
                if descriptor.digest in seen or not is_digest(descriptor.digest):
                    continue
                seen.add(descriptor.digest)
                graph.append((subject, descriptor))
                following.append(descriptor.digest)
        if not following:
            break
        level = following
    return graph
