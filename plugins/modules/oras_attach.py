#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_attach
short_description: Attach files to an OCI artifact or image as a referrer (build metadata, test results, SBOMs)
version_added: 0.1.0
description:
  - Pushes files as an artifact of type O(artifact_type) whose C(subject) is the manifest O(subject) points to,
    as C(oras attach) does. The result is a referrer of that digest, found again with M(sciops.fleet.oras_discover)
    and carried along by M(sciops.fleet.oras_copy) with O(sciops.fleet.oras_copy#module:recursive=true).
  - A tag in O(subject) is resolved to its digest first; the attachment belongs to the digest, not to the tag.
  - The referrer is stored by digest only (it gets no tag). Registries with the OCI 1.1 referrers API index it
    themselves; on registries without it (such as CNCF distribution 2.8, Debian's C(docker-registry)) the module
    keeps the referrers tag schema index (the C(sha256-<hex>) tag) up to date. In an OCI image layout the
    referrer is listed in C(index.json).
  - The manifest is built deterministically (canonical JSON, no creation time), so attaching the same files with
    the same type and annotations twice gives one referrer, and the second run reports no change. Put anything
    that distinguishes two runs (a pipeline id, a date) into O(annotations) or the files themselves.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Resolves the subject, hashes the files and checks whether the subject already lists that referrer; writes nothing.
  diff_mode:
    support: full
    details: Shows the subject digest and the referrer digest before (absent) and after.
  idempotent:
    support: full
options:
  subject:
    description:
      - The artifact or image to attach to, as C(registry[:port]/repository:tag) or C(registry[:port]/repository@digest),
        or C(oci-layout:/path/to/dir:tag).
      - The referrer is stored in the same repository as the subject.
    type: str
    required: true
  artifact_type:
    description:
      - The type of what is attached (the manifest's C(artifactType)), for example
        C(application/vnd.sciops.test-result.v1+json). M(sciops.fleet.oras_discover) filters on it.
    type: str
    required: true
  files:
    description:
      - The files to attach, in this order. Each becomes a layer titled with its name.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: The file on the host the module runs on.
        type: path
        required: true
      name:
        description:
          - The name the file gets in the artifact, and on pull. Defaults to the base name of O(files[].path).
        type: str
      media_type:
        description: The layer media type, for example C(application/json). Defaults to O(layer_media_type).
        type: str
      annotations:
        description: Annotations of this layer.
        type: dict
  layer_media_type:
    description: The media type of layers whose file has none of its own.
    type: str
    default: application/vnd.oci.image.layer.v1.tar
  annotations:
    description:
      - Annotations of the referrer manifest. Values are stored as strings (YAML C(true) becomes C("true")).
      - M(sciops.fleet.oras_discover) can filter on them.
    type: dict
  record_modes:
    description:
      - Record each file's permission bits in an annotation, as M(sciops.fleet.oras_push) does.
      - Off by default so that the referrer's digest does not depend on the umask of the host that wrote the files.
    type: bool
    default: false
seealso:
  - module: sciops.fleet.oras_discover
  - module: sciops.fleet.oras_copy
  - module: sciops.fleet.oras_push
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Attach the build metadata to the build
  sciops.fleet.oras_attach:
    subject: registry.example.org/build/env:2024.1
    artifact_type: application/vnd.sciops.build-meta.v1+json
    files:
      - path: out/meta/env.json
        media_type: application/json

- name: Attach the test result, marked with the pipeline that produced it
  sciops.fleet.oras_attach:
    subject: registry.example.org/build/env:2024.1
    artifact_type: application/vnd.sciops.test-result.v1+json
    files:
      - path: out/reframe-report.json
        name: result.json
        media_type: application/json
    annotations:
      io.sciops.pipeline: "{{ lookup('ansible.builtin.env', 'CI_PIPELINE_ID') }}"
    username: ci-bot
    password: "{{ vault_registry_password }}"
  register: attached

- name: Show what the result is attached to
  ansible.builtin.debug:
    msg: "{{ attached.reference }} -> {{ attached.subject_digest }}"
"""

RETURN = r"""
digest:
  description: Digest of the referrer manifest.
  returned: success
  type: str
  sample: sha256:1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014
reference:
  description: The referrer, pinned by digest.
  returned: success
  type: str
  sample: registry.example.org/build/env@sha256:1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014
subject_digest:
  description: Digest of the subject the referrer is attached to (what O(subject) resolved to).
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
subject_reference:
  description: The subject, pinned by digest.
  returned: success
  type: str
  sample: registry.example.org/build/env@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
artifact_type:
  description: The artifact type of the referrer.
  returned: success
  type: str
  sample: application/vnd.sciops.test-result.v1+json
media_type:
  description: Media type of the referrer manifest.
  returned: success
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
size:
  description: Size of the referrer manifest in bytes.
  returned: success
  type: int
  sample: 689
layers:
  description: The attached files, in order.
  returned: success
  type: list
  elements: dict
  sample: [{name: result.json, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", size: 212,
            media_type: application/json}]
uploaded:
  description: Digests of the blobs that were sent; empty when the store had them all.
  returned: success
  type: list
  elements: str
  sample: []
referrers_mechanism:
  description:
    - How the store lists referrers, as seen when checking whether this one was listed already. C(api) (OCI 1.1
      referrers API), C(tag_schema) (C(sha256-<hex>) index tag) or C(layout_index) (an OCI layout's index.json).
  returned: success
  type: str
  sample: tag_schema
transfer:
  description: Counters of what crossed the network (requests, blobs_uploaded, blobs_skipped, bytes_uploaded, ...).
  returned: success
  type: dict
  sample: {requests: 7, blobs_uploaded: 1, blobs_skipped: 1, bytes_uploaded: 212, manifests_uploaded: 2}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import Descriptor
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import describe_file
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import open_reference, registry_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._oras.referrers import (
    annotation_strings,
    attach,
    referrers_mechanism,
    resolve_subject,
)


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            subject={"type": "str", "required": True},
            artifact_type={"type": "str", "required": True},
            files={"type": "list", "elements": "dict", "required": True, "options": {
                "path": {"type": "path", "required": True},
                "name": {"type": "str"},
                "media_type": {"type": "str"},
                "annotations": {"type": "dict"},
            }},
            layer_media_type={"type": "str", "default": "application/vnd.oci.image.layer.v1.tar"},
            annotations={"type": "dict"},
            record_modes={"type": "bool", "default": False},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if not params["files"]:
            raise OciError("files is empty; attach at least one file")
        reference, store = open_reference(params, params["subject"], "subject")
        subject = resolve_subject(store, reference.repository, reference.ref)
        files = [describe_file(f["path"], f["name"], f["media_type"] or params["layer_media_type"],
                               annotation_strings(f["annotations"]), params["record_modes"]) for f in params["files"]]
        outcome = attach(store, reference.repository, Descriptor(subject.media_type, subject.digest, subject.size), files,
                         params["artifact_type"], annotations=annotation_strings(params["annotations"]),
                         check_mode=module.check_mode)
    except FleetError as exc:
        fail_from(module, exc)
    result = {
        "changed": outcome["changed"],
        "digest": outcome["digest"],
        "reference": f"{reference.name}@{outcome['digest']}",
        "subject_digest": subject.digest,
        "subject_reference": f"{reference.name}@{subject.digest}",
        "artifact_type": params["artifact_type"],
        "media_type": outcome["media_type"],
        "size": outcome["size"],
        "layers": [{"name": f.descriptor.title, "digest": f.descriptor.digest, "size": f.descriptor.size,
                    "media_type": f.descriptor.media_type} for f in files],
        "uploaded": outcome["uploaded"],
        "referrers_mechanism": referrers_mechanism(store),
        "transfer": dict(store.stats),
    }
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {
            "before": {"subject": subject.digest, "referrer": outcome["digest"] if outcome["listed_before"] else "(absent)"},
            "after": {"subject": subject.digest, "referrer": outcome["digest"]},
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
