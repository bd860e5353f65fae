#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_info
short_description: Resolve an OCI reference to its digest and describe its manifest, config and tags
version_added: 0.1.0
description:
  - Resolves a tag (or checks a digest) in a registry or an OCI image layout and returns the digest, the manifest
    (parsed), its media type, size, artifact type and annotations, its files (layers) or, for an image index, its
    child manifests, and the config (parsed when it is JSON of at most 1 MiB), as C(oras manifest fetch) and
    C(oras resolve) do.
  - With O(ignore_missing=true) (the default) a tag or digest that does not exist is not an error; the module
    returns C(exists=false), so a play can check where a channel tag points, or that it does not exist, without
    C(ignore_errors).
  - With O(list_tags=true) it also lists every tag of the repository (following the registry's pagination).
    O(reference) may then leave out the tag to list the tags only.
  - Reads only; it never changes anything.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
  - sciops.fleet.attributes.READ_ONLY
options:
  reference:
    description:
      - What to describe, as C(registry[:port]/repository:tag), C(registry[:port]/repository@digest) or
        C(oci-layout:/path/to/dir:tag).
      - With O(list_tags=true), C(registry[:port]/repository) without tag lists the tags only.
    type: str
    required: true
  list_tags:
    description: Also list all tags of the repository (of the layout).
    type: bool
    default: false
  ignore_missing:
    description:
      - When the tag or digest does not exist, return C(exists=false) instead of failing.
      - A missing repository counts as missing; a missing OCI layout directory, a refused login or an unreachable
        registry always fail.
    type: bool
    default: true
seealso:
  - module: sciops.fleet.oras_discover
  - module: sciops.fleet.oras_copy
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Where does the stable channel point?
  sciops.fleet.oras_info:
    reference: registry.example.org/deploy/qserv:stable
  register: stable

- name: Show the digest and the file names
  ansible.builtin.debug:
    msg: "{{ stable.digest }}: {{ stable.layers | map(attribute='name') | list }}"
  when: stable.exists

- name: List every tag of the release repository
  sciops.fleet.oras_info:
    reference: registry.example.org/deploy/qserv
    list_tags: true
  register: release_repository

- name: Fail unless the release is in the local mirror
  sciops.fleet.oras_info:
    reference: oci-layout:/srv/mirror/qserv:1.4.0
    ignore_missing: false
"""

RETURN = r"""
exists:
  description: Whether the tag or digest exists. Always true when O(reference) names neither (tags only).
  returned: success
  type: bool
  sample: true
digest:
  description: Digest of the manifest.
  returned: when it exists
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
reference:
  description: The reference pinned by digest.
  returned: when it exists
  type: str
  sample: registry.example.org/deploy/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
media_type:
  description: Media type of the manifest.
  returned: when it exists
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
size:
  description: Size of the manifest in bytes.
  returned: when it exists
  type: int
  sample: 712
manifest:
  description: The manifest (or image index), parsed.
  returned: when it exists
  type: dict
  sample: {schemaVersion: 2, mediaType: application/vnd.oci.image.manifest.v1+json, artifactType: application/vnd.sciops.bundle.v1,
           config: {}, layers: []}
artifact_type:
  description: The manifest's C(artifactType), else its config media type; null for an index without one.
  returned: when it exists
  type: str
  sample: application/vnd.sciops.bundle.v1
annotations:
  description: Annotations of the manifest.
  returned: when it exists
  type: dict
  sample: {org.opencontainers.image.version: 1.4.0}
subject:
  description: Digest of the manifest's subject when it is itself a referrer, else null.
  returned: when it exists
  type: str
  sample: null
layers:
  description: The files (layers) of a manifest, in order; C(name) is the title annotation, null for an untitled layer.
  returned: when it exists
  type: list
  elements: dict
  sample: [{name: qserv-1.4.0.tar.gz, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            size: 1048576, media_type: application/vnd.sciops.tarball.v1.tar+gzip, annotations: {}}]
manifests:
  description: The child manifests of an image index (digest, media_type, size, artifact_type, platform, annotations).
  returned: when it exists
  type: list
  elements: dict
  sample: []
config:
  description:
    - The config blob, parsed when it is JSON, as text when it is other UTF-8 text; null when larger than 1 MiB,
      binary, or for an index. ORAS artifacts carry the empty config C({}).
  returned: when it exists
  type: raw
  sample: {}
config_descriptor:
  description: The config's descriptor (mediaType, digest, size); null for an index.
  returned: when it exists
  type: dict
  sample: {mediaType: application/vnd.oci.empty.v1+json, digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", size: 2}
tags:
  description: All tags of the repository, as the store lists them (including C(sha256-<hex>) referrers tags).
  returned: when O(list_tags=true)
  type: list
  elements: str
  sample: [1.3.2, 1.4.0, oldstable, stable]
transfer:
  description: Counters of what crossed the network (requests, bytes_downloaded, ...).
  returned: success
  type: dict
  sample: {requests: 3, bytes_downloaded: 714}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import NotFoundError, OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.info import describe_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import open_reference, registry_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            reference={"type": "str", "required": True},
            list_tags={"type": "bool", "default": False},
            ignore_missing={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    params = module.params
    result = {"changed": False, "exists": True}
    try:
        reference, store = open_reference(params, params["reference"], "reference")
        if not reference.ref and not params["list_tags"]:
            raise OciError(f"reference {params['reference']!r} names no tag or digest; add one, or set list_tags")
        if reference.ref:
            try:
                digest = store.resolve(reference.repository, reference.ref).digest
            except NotFoundError:
                if not params["ignore_missing"]:
                    raise
                result["exists"] = False
            else:
                result.update(describe_reference(store, reference.repository, digest),
                              reference=f"{reference.name}@{digest}")
        if params["list_tags"]:
            result["tags"] = store.list_tags(reference.repository)
    except FleetError as exc:
        fail_from(module, exc)
    result["transfer"] = dict(store.stats)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
