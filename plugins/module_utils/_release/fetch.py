# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Reading a release from its registry: the release manifest by tag or digest, and the sizes of its artifacts."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import Reference, parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import Descriptor
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import load_manifest
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import RELEASE_FILE, ReleaseError, validate_release


def fetch_release(reference_text: str, registry_options: Mapping[str, Any]) -> Tuple[Dict[str, Any], str, Reference]:
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


def artifact_sizes(release: Dict[str, Any], registry_options: Mapping[str, Any]) -> Tuple[List[int], List[str]]:
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
