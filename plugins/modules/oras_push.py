#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_push
short_description: Push files as an OCI artifact to a registry or an OCI image layout
version_added: 0.1.0
description:
  - Pushes files, or every regular file below a directory, as one OCI artifact (an image manifest whose
    layers are the files) and points one or more tags at it, as C(oras push) does.
  - Each file becomes a layer titled with its name (C(org.opencontainers.image.title)); its permission bits are
    recorded (C(io.sciops.fleet.file.mode)) so that M(sciops.fleet.oras_pull) restores them.
  - The manifest is built deterministically (canonical JSON, no timestamps), so the same files give the same
    digest. Blobs the registry already has are not sent again, and when every tag already points to that
    manifest nothing is sent and the module reports no change.
  - Works with a registry, or with an OCI image layout directory on the host it runs on (C(oci-layout:PATH:TAG)).
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Hashes the files and compares the manifest digest with what the tags point to; uploads nothing.
  diff_mode:
    support: full
    details: Shows, per tag, the digest before and after.
  idempotent:
    support: full
options:
  target:
    description:
      - Where to push, as C(registry[:port]/repository:tag); several tags as C(registry/repository:tag1,tag2).
      - C(oci-layout:/path/to/dir:tag) pushes into an OCI image layout directory, created when missing.
    type: str
    required: true
  tags:
    description:
      - More tags to point at the artifact, in addition to the one in O(target).
    type: list
    elements: str
    default: []
  files:
    description:
      - The files to push, in this order. Mutually exclusive with O(directory).
    type: list
    elements: dict
    suboptions:
      path:
        description: The file on the host the module runs on.
        type: path
        required: true
      name:
        description:
          - The name the file gets in the artifact, and on pull. A relative path with C(/) is allowed.
          - Defaults to the base name of O(files[].path).
        type: str
      media_type:
        description: The layer media type. Defaults to O(layer_media_type).
        type: str
      annotations:
        description: Annotations of this layer.
        type: dict
  directory:
    description:
      - Push every regular file below this directory, each titled with its path relative to it, in sorted
        order. Symbolic links and special files are refused. Mutually exclusive with O(files).
    type: path
  layer_media_type:
    description: The media type of layers whose file has none of its own.
    type: str
    default: application/vnd.oci.image.layer.v1.tar
  record_modes:
    description: Record each file's permission bits in an annotation, so that a pull restores them.
    type: bool
    default: true
  artifact_type:
    description:
      - The artifact type of the manifest (C(artifactType)), for example C(application/vnd.sciops.release.v1).
      - Without it, a manifest with the empty config gets C(application/vnd.unknown.artifact.v1), as the ORAS CLI
        writes it, since the OCI image spec 1.1 requires an artifact type when the config is empty. With O(config),
        the config's media type tells the type and none is set.
    type: str
  annotations:
    description:
      - Annotations of the manifest. Keep them free of build times if the push is to be idempotent.
    type: dict
  config:
    description: A file to use as the manifest's config blob instead of the empty JSON config.
    type: path
  config_media_type:
    description: The media type of O(config). Required with O(config).
    type: str
seealso:
  - module: sciops.fleet.oras_pull
  - module: sciops.fleet.oras_copy
  - module: sciops.fleet.oras_attach
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Push a tarball and its checksum file as release 1.4.0 and as candidate
  sciops.fleet.oras_push:
    target: registry.example.org/build/qserv:1.4.0,candidate
    files:
      - path: dist/qserv-1.4.0.tar.gz
        media_type: application/vnd.sciops.tarball.v1.tar+gzip
      - path: dist/SHA256SUMS
    artifact_type: application/vnd.sciops.bundle.v1
    annotations:
      org.opencontainers.image.version: 1.4.0
  register: pushed

- name: Show the digest every node will be pinned to
  ansible.builtin.debug:
    msg: "{{ pushed.digest }}"

- name: Push a configuration tree into a local OCI layout, no registry needed
  sciops.fleet.oras_push:
    target: oci-layout:/srv/oci/configs:site-a
    directory: configs/site-a

- name: Push with credentials from the vault
  sciops.fleet.oras_push:
    target: registry.example.org/build/env:2024.1
    files:
      - path: out/env.squashfs
        media_type: application/vnd.sciops.squashfs
    username: ci-bot
    password: "{{ vault_registry_password }}"
"""

RETURN = r"""
digest:
  description: Digest of the manifest, the identity of the artifact.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
reference:
  description: The artifact pinned by digest.
  returned: success
  type: str
  sample: registry.example.org/build/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
tags:
  description: The tags that point (or, in check mode, would point) to the artifact.
  returned: success
  type: list
  elements: str
  sample: [1.4.0, candidate]
media_type:
  description: Media type of the manifest.
  returned: success
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
size:
  description: Size of the manifest in bytes.
  returned: success
  type: int
  sample: 712
layers:
  description: The files in the artifact, in order.
  returned: success
  type: list
  elements: dict
  sample: [{name: qserv-1.4.0.tar.gz, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", size: 1048576,
            media_type: application/vnd.sciops.tarball.v1.tar+gzip}]
uploaded:
  description: Digests of the blobs that were sent; empty when the registry had them all.
  returned: success
  type: list
  elements: str
  sample: []
transfer:
  description: Counters of what crossed the network (requests, blobs_uploaded, blobs_skipped, bytes_uploaded, ...).
  returned: success
  type: dict
  sample: {requests: 4, blobs_uploaded: 0, blobs_skipped: 2, bytes_uploaded: 0}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import (
    describe_directory,
    describe_file,
    push_artifact,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import (
    open_reference,
    registry_argument_spec,
    split_target,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            target={"type": "str", "required": True},
            tags={"type": "list", "elements": "str", "default": []},
            files={"type": "list", "elements": "dict", "options": {
                "path": {"type": "path", "required": True},
                "name": {"type": "str"},
                "media_type": {"type": "str"},
                "annotations": {"type": "dict"},
            }},
            directory={"type": "path"},
            layer_media_type={"type": "str", "default": "application/vnd.oci.image.layer.v1.tar"},
            record_modes={"type": "bool", "default": True},
            artifact_type={"type": "str"},
            annotations={"type": "dict"},
            config={"type": "path"},
            config_media_type={"type": "str"},
        ),
        mutually_exclusive=[("files", "directory")],
        required_one_of=[("files", "directory")],
        required_together=[("config", "config_media_type")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        head, more_tags = split_target(params["target"], params["tags"])
        reference, store = open_reference(params, head, "target", create_layout=not module.check_mode)
        if not reference.tag:
            raise OciError(f"target {params['target']!r} names no tag; write it as REGISTRY/REPOSITORY:TAG")
        if reference.digest:
            raise OciError(f"target {params['target']!r} carries a digest; a push names tags, the digest is the result")
        tags = [reference.tag] + [t for t in more_tags if t != reference.tag]
        for tag in tags:
            reference.with_tag(tag)  # validates
        if params["directory"]:
            files = describe_directory(params["directory"], params["layer_media_type"], params["record_modes"])
        else:
            files = [describe_file(f["path"], f["name"], f["media_type"] or params["layer_media_type"], f["annotations"],
                                   params["record_modes"]) for f in params["files"]]
        outcome = push_artifact(
            store, reference.repository, tags, files, config_path=params["config"],
            config_media_type=params["config_media_type"], artifact_type=params["artifact_type"],
            annotations=params["annotations"], check_mode=module.check_mode,
        )
    except FleetError as exc:
        fail_from(module, exc)
    result = {
        "changed": outcome["changed"],
        "digest": outcome["digest"],
        "reference": f"{reference.name}@{outcome['digest']}",
        "tags": tags,
        "media_type": outcome["media_type"],
        "size": outcome["size"],
        "layers": [{"name": f.descriptor.title, "digest": f.descriptor.digest, "size": f.descriptor.size,
                    "media_type": f.descriptor.media_type} for f in files],
        "uploaded": outcome["uploaded"],
        "transfer": dict(store.stats),
    }
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {
            "before": {tag: outcome["before"][tag] or "(absent)" for tag in tags},
            "after": {tag: outcome["digest"] for tag in tags},
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
