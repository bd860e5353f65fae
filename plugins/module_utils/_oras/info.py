# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What a reference points to: digest, manifest, config, files. Used by oras_info."""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    INDEX_MEDIA_TYPES,
    OciStore,
    manifest_children,
    parse_manifest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oras.referrers import decode_content

# A config larger than this is described, not read.
MAX_CONFIG_SIZE = 1024 * 1024


def describe_reference(store: OciStore, repo: str | None, ref: str,
                       max_config_size: int = MAX_CONFIG_SIZE) -> Dict[str, Any]:
    """A dict describing the manifest REF points to: digest, media_type, size, manifest (parsed), artifact_type,
    annotations, subject (digest or None), layers (named files) or manifests (of an index), config (parsed JSON or
    text when at most MAX_CONFIG_SIZE bytes, else None) and config_descriptor."""
    data, digest, media_type = store.get_manifest(repo, ref)
    where = f"manifest {digest}"
    manifest = parse_manifest(data, where)
    is_index = media_type in INDEX_MEDIA_TYPES or "manifests" in manifest
    config_entry = manifest.get("config") if isinstance(manifest.get("config"), dict) else None
    info = {
        "digest": digest,
        "media_type": media_type,
        "size": len(data),
        "manifest": manifest,
        "artifact_type": manifest.get("artifactType") or (config_entry or {}).get("mediaType"),
        "annotations": manifest.get("annotations") or {},
        "subject": (manifest.get("subject") or {}).get("digest"),
        "layers": [],
        "manifests": [],
        "config": None,
        "config_descriptor": config_entry,
    }
    if is_index:
        info["manifests"] = [{"digest": d.digest, "media_type": d.media_type, "size": d.size,
                              "artifact_type": d.artifact_type, "platform": d.extra.get("platform"),
                              "annotations": d.annotations} for d in manifest_children(manifest, where)]
        return info
    layers = manifest_children({"layers": manifest.get("layers") or manifest.get("blobs") or []}, where)
    info["layers"] = [{"name": d.title, "digest": d.digest, "size": d.size, "media_type": d.media_type,
                       "annotations": d.annotations} for d in layers]
    if config_entry is not None:
        config = manifest_children({"config": config_entry}, where)[0]
        if config.size <= max_config_size:
            info["config"] = decode_content(store.read_blob(repo, config.digest, max_size=max_config_size))
    return info
