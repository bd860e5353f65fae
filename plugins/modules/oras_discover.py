#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_discover
short_description: List the referrers of an OCI artifact or image, and read what they say
version_added: 0.1.0
description:
  - Lists the artifacts attached to the manifest O(subject) points to (its referrers, such as build metadata, test
    results, SBOMs, signatures), as C(oras discover) does, optionally only those of one O(artifact_type) and
    carrying given O(annotations).
  - With O(fetch_content=true) it also reads the files of each referrer that are at most O(max_content_size) bytes
    and returns them decoded (parsed JSON when the file is JSON, else text), so that a play can act on an attached
    test result, for example promote a build only when its test result says C(pass).
  - Uses the OCI 1.1 referrers API where the registry has it, else the referrers tag schema (C(sha256-<hex>) index
    tag); in an OCI image layout, the manifests listed in C(index.json).
  - Reads only; it never changes anything.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
  - sciops.fleet.attributes.READ_ONLY
options:
  subject:
    description:
      - The artifact or image whose referrers to list, as C(registry[:port]/repository:tag),
        C(registry[:port]/repository@digest) or C(oci-layout:/path/to/dir:tag). A tag is resolved to its digest.
    type: str
    required: true
  artifact_type:
    description: Only referrers of this artifact type, for example C(application/vnd.sciops.test-result.v1+json).
    type: str
  annotations:
    description:
      - Only referrers whose manifest carries every one of these annotations with exactly this value.
        Values are compared as strings (YAML C(true) matches C("true")).
    type: dict
  fetch_content:
    description:
      - Also return each referrer's files (its titled layers) and the content of those that are UTF-8 text of at
        most O(max_content_size) bytes.
    type: bool
    default: false
  max_content_size:
    description:
      - With O(fetch_content=true), the largest file, in bytes, whose content is read. Larger files are listed
        with C(fetched=false) and no content.
    type: int
    default: 1048576
seealso:
  - module: sciops.fleet.oras_attach
  - module: sciops.fleet.oras_copy
  - module: sciops.fleet.oras_info
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Read the test results attached to the build
  sciops.fleet.oras_discover:
    subject: registry.example.org/build/env:2024.1
    artifact_type: application/vnd.sciops.test-result.v1+json
    fetch_content: true
  register: results

- name: Promote only when the latest test result says pass
  sciops.fleet.oras_copy:
    source: "{{ results.subject_reference }}"
    destination: registry.example.org/deploy/env:2024.1,stable
    recursive: true
  vars:
    latest_result: "{{ (results.referrers | last).content['result.json'] }}"
  when: results.count > 0 and latest_result.result == 'pass'

- name: List everything attached by one pipeline
  sciops.fleet.oras_discover:
    subject: registry.example.org/build/env:2024.1
    annotations:
      io.sciops.pipeline: "4711"
  register: attached

- name: Show the digests
  ansible.builtin.debug:
    msg: "{{ attached.referrers | map(attribute='digest') | list }}"
"""

RETURN = r"""
subject_digest:
  description: Digest of the subject (what O(subject) resolved to).
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
subject_reference:
  description: The subject, pinned by digest.
  returned: success
  type: str
  sample: registry.example.org/build/env@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
referrers:
  description:
    - The referrers that match the filters, in the order the store lists them. The referrers tag schema and
      OCI layouts list them in the order they were attached; the referrers API promises no order.
  returned: success
  type: list
  elements: dict
  contains:
    digest:
      description: Digest of the referrer manifest.
      type: str
      sample: sha256:1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014
    artifact_type:
      description: Its artifact type.
      type: str
      sample: application/vnd.sciops.test-result.v1+json
    media_type:
      description: Media type of the referrer manifest.
      type: str
      sample: application/vnd.oci.image.manifest.v1+json
    size:
      description: Size of the referrer manifest in bytes.
      type: int
      sample: 689
    annotations:
      description: Annotations of the referrer manifest.
      type: dict
      sample: {io.sciops.pipeline: "4711"}
    files:
      description:
        - Its files (titled layers); C(fetched) says whether the content was read. Untitled layers are listed by digest.
      returned: when O(fetch_content=true)
      type: list
      elements: dict
      sample: [{name: result.json, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                size: 212, media_type: application/json, annotations: {}, fetched: true}]
    content:
      description:
        - File name to content, for the files that were read; JSON files are parsed, other text is a string.
      returned: when O(fetch_content=true)
      type: dict
      sample: {result.json: {result: pass, passed: 118, failed: 0}}
  sample: [{digest: "sha256:1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014",
            artifact_type: application/vnd.sciops.test-result.v1+json,
            media_type: application/vnd.oci.image.manifest.v1+json, size: 689, annotations: {}}]
count:
  description: How many referrers matched.
  returned: success
  type: int
  sample: 1
mechanism:
  description:
    - How the store answered. C(api) (OCI 1.1 referrers API), C(tag_schema) (the C(sha256-<hex>) index tag of
      registries without the API) or C(layout_index) (the manifests in an OCI layout's C(index.json)).
  returned: success
  type: str
  sample: tag_schema
transfer:
  description: Counters of what crossed the network (requests, bytes_downloaded, ...).
  returned: success
  type: dict
  sample: {requests: 4, bytes_downloaded: 212}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import open_reference, registry_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._oras.referrers import (
    DEFAULT_MAX_CONTENT_SIZE,
    discover,
    referrers_mechanism,
    resolve_subject,
)


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            subject={"type": "str", "required": True},
            artifact_type={"type": "str"},
            annotations={"type": "dict"},
            fetch_content={"type": "bool", "default": False},
            max_content_size={"type": "int", "default": DEFAULT_MAX_CONTENT_SIZE},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["max_content_size"] < 0:
            raise OciError("max_content_size must not be negative")
        reference, store = open_reference(params, params["subject"], "subject")
        subject = resolve_subject(store, reference.repository, reference.ref)
        referrers = discover(store, reference.repository, subject.digest, artifact_type=params["artifact_type"],
                             annotations=params["annotations"], fetch_content=params["fetch_content"],
                             max_content_size=params["max_content_size"])
    except FleetError as exc:
        fail_from(module, exc)
    module.exit_json(
        changed=False,
        subject_digest=subject.digest,
        subject_reference=f"{reference.name}@{subject.digest}",
        referrers=referrers,
        count=len(referrers),
        mechanism=referrers_mechanism(store),
        transfer=dict(store.stats),
    )


if __name__ == "__main__":
    main()
