#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_copy
short_description: Copy or promote an OCI artifact or image, with its referrers, between repositories, registries and layouts
version_added: 0.1.0
description:
  - Copies what O(source) points to (an artifact, an image or an image index with all its child manifests) to
    O(destination) and points one or more tags there at it, as C(oras cp) does. This is how a build is promoted,
    for example from C(build/app:1.0) to C(deploy/app:1.0) and C(deploy/app:stable).
  - The manifest bytes are copied unchanged, so the artifact has the same digest at the destination and every
    referrer attached to it (metadata, test results, signatures) still names it as its subject.
  - Within one repository of one registry or layout the copy is a pure re-tag; no blob is read or written.
    Between repositories of the same registry, blobs are mounted across repositories rather than uploaded.
    Between different registries or layouts, each blob the destination lacks is downloaded, verified, into a
    temporary directory (one blob at a time, see O(temp_dir)) and uploaded from there.
  - Blobs and manifests the destination already has are never sent again. When every destination tag already
    points to the source digest (and, with O(recursive), every referrer is already listed at the destination),
    nothing is sent and the module reports no change.
  - Source and destination may be registries or OCI image layout directories (C(oci-layout:PATH:TAG)) in any
    combination. The registry options (credentials, TLS, timeouts) apply to both. When the two are different
    registries that need different credentials, leave O(username) and O(password) unset and let the docker
    configuration (O(docker_config)) supply each registry's credentials.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Resolves the source, reads where the destination tags point and which referrers the destination lists;
        transfers and writes nothing. A missing destination layout is reported as empty and not created.
  diff_mode:
    support: full
    details: Shows, per destination tag, the digest before and after, and with O(recursive) the referrers listed.
  idempotent:
    support: full
options:
  source:
    description:
      - What to copy, as C(registry[:port]/repository:tag) or C(registry[:port]/repository@digest).
      - C(oci-layout:/path/to/dir:tag) copies out of an OCI image layout directory.
      - A tag is resolved to its digest once, at the start; the copy is of that digest even if the tag moves meanwhile.
    type: str
    required: true
  destination:
    description:
      - Where to copy to, as C(registry[:port]/repository:tag); several tags as C(registry/repository:tag1,tag2).
      - C(oci-layout:/path/to/dir:tag) copies into an OCI image layout directory, created when missing.
      - Without a tag (and without O(tags)) the source's tag is used; when the source is named by digest, the
        manifest is stored by digest only.
      - A digest (C(registry/repository@sha256:...)) is allowed when it is the source's digest; it makes the copy
        fail rather than copy something else when the source tag has moved.
    type: str
    required: true
  tags:
    description:
      - More destination tags to point at the artifact, in addition to the ones in O(destination).
    type: list
    elements: str
    default: []
  recursive:
    description:
      - Also copy the referrers of the source digest (artifacts attached to it with M(sciops.fleet.oras_attach)
        or C(oras attach)), and their own referrers, so that metadata and test results travel with a promotion.
      - The destination lists them as referrers of the same digest, through the referrers API or, on registries
        without it, the referrers tag schema (C(sha256-<hex>) index tag).
    type: bool
    default: false
  temp_dir:
    description:
      - Directory where each blob waits between download from the source registry and upload to the destination.
        It must have room for the largest blob. Defaults to the system's temporary directory (C(TMPDIR)).
      - Not used within one registry or when the source is an OCI layout.
    type: path
notes:
  - Non-distributable (foreign) layers that a registry does not hold are not copied; a copy of such an image fails.
seealso:
  - module: sciops.fleet.oras_push
  - module: sciops.fleet.oras_attach
  - module: sciops.fleet.oras_discover
  - module: sciops.fleet.oras_info
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Promote a tested build to the deploy namespace as 1.4.0 and stable, with its attached test results
  sciops.fleet.oras_copy:
    source: registry.example.org/build/qserv:1.4.0
    destination: registry.example.org/deploy/qserv:1.4.0,stable
    recursive: true
  register: promoted

- name: Show the digest the nodes will be pinned to
  ansible.builtin.debug:
    msg: "{{ promoted.reference }}"

- name: Move the candidate tag to a build by digest (a re-tag, nothing is transferred)
  sciops.fleet.oras_copy:
    source: registry.example.org/deploy/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    destination: registry.example.org/deploy/qserv:candidate

- name: Mirror a release into an OCI layout directory for an air-gapped site
  sciops.fleet.oras_copy:
    source: registry.example.org/deploy/qserv:1.4.0
    destination: oci-layout:/srv/mirror/qserv:1.4.0
    recursive: true

- name: Load the mirrored release into the site registry
  sciops.fleet.oras_copy:
    source: oci-layout:/srv/mirror/qserv:1.4.0
    destination: registry.site-b.example.org/deploy/qserv:1.4.0
    tags: [stable]
    recursive: true
    temp_dir: /var/tmp
"""

RETURN = r"""
digest:
  description: Digest of the copied manifest, the same at source and destination.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
reference:
  description: The copy at the destination, pinned by digest.
  returned: success
  type: str
  sample: registry.example.org/deploy/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
source_reference:
  description: The source, pinned by the digest its tag resolved to.
  returned: success
  type: str
  sample: registry.example.org/build/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
tags:
  description: The destination tags that point (or, in check mode, would point) to the digest; empty for a copy by digest.
  returned: success
  type: list
  elements: str
  sample: [1.4.0, stable]
tags_moved:
  description: The destination tags that were (or would be) created or moved by this run.
  returned: success
  type: list
  elements: str
  sample: [stable]
media_type:
  description: Media type of the copied manifest.
  returned: success
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
size:
  description: Size of the copied manifest in bytes.
  returned: success
  type: int
  sample: 712
blobs:
  description:
    - What happened to the blobs the copied manifests point to. C(copied) were downloaded and uploaded (or copied
      from a layout), C(mounted) were mounted across repositories of one registry, C(present) were already at the
      destination; C(bytes) is the size of the copied blobs. All zero in check mode and for a pure re-tag.
  returned: success
  type: dict
  sample: {copied: 0, mounted: 2, present: 1, bytes: 0}
manifests_copied:
  description: How many manifests (the copied one under each moved tag, child manifests, referrers) were stored.
  returned: success
  type: int
  sample: 3
referrers:
  description:
    - With O(recursive), the referrers of the source digest and their own referrers; C(copied) says whether this
      run copied (or, in check mode, would copy) it. Empty without O(recursive).
  returned: success
  type: list
  elements: dict
  sample: [{digest: "sha256:1b4f0e9851971998e732078544c96b36c3d01cedf7caa332359d6f1d83567014",
            artifact_type: application/vnd.sciops.test-result.v1+json,
            subject: "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b", copied: true}]
referrers_copied:
  description: How many referrers were (or would be) copied.
  returned: success
  type: int
  sample: 2
transfer:
  description:
    - Counters of requests and transfers of the source and destination stores together (requests, blobs_uploaded,
      blobs_mounted, blobs_downloaded, bytes_uploaded, bytes_downloaded, manifests_uploaded, ...).
  returned: success
  type: dict
  sample: {requests: 12, blobs_uploaded: 0, blobs_mounted: 2, bytes_uploaded: 0, manifests_uploaded: 4}
"""

import os
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oras.copy import ArtifactCopy, copy_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import (
    open_reference,
    registry_argument_spec,
    split_target,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from


def destination_store(params, reference, source_reference, source_store, check_mode, scratch):
    """The destination's store: the source's own when both are the same registry or layout (mounts and
    re-tags need one client). In check mode a missing layout is stood in for by an empty one under SCRATCH."""
    if not reference.is_layout and not source_reference.is_layout and reference.registry == source_reference.registry:
        return source_store
    if reference.is_layout and source_reference.is_layout:
        if os.path.realpath(reference.repository) == os.path.realpath(source_store.path):
            return source_store
    if reference.is_layout and check_mode and not os.path.exists(os.path.join(reference.repository, "oci-layout")):
        scratch.append(tempfile.mkdtemp(prefix="sciops-oras-copy-check-"))
        return LayoutStore(scratch[-1], create=True)
    return open_reference(params, str(reference), "destination", create_layout=not check_mode)[1]


def destination_tags(destination, extra_tags, source_reference):
    """``(reference, tags)`` of the destination: its tags, else the source's tag, else none (by digest)."""
    head, more = split_target(destination, extra_tags)
    try:
        reference = parse_reference(head)
    except FleetError as exc:
        raise OciError(f"destination: {exc}") from None
    tags = ([reference.tag] if reference.tag else []) + [t for t in more if t != reference.tag]
    if not tags and not reference.digest and source_reference.tag:
        tags = [source_reference.tag]
    for tag in tags:
        reference.with_tag(tag)  # validates
    return reference, tags


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            source={"type": "str", "required": True},
            destination={"type": "str", "required": True},
            tags={"type": "list", "elements": "str", "default": []},
            recursive={"type": "bool", "default": False},
            temp_dir={"type": "path"},
        ),
        supports_check_mode=True,
    )
    params = module.params
    scratch = []
    try:
        source_reference, source_store = open_reference(params, params["source"], "source")
        if not source_reference.ref:
            raise OciError(f"source {params['source']!r} names no tag or digest; write it as REGISTRY/REPOSITORY:TAG")
        reference, tags = destination_tags(params["destination"], params["tags"], source_reference)
        store = destination_store(params, reference, source_reference, source_store, module.check_mode, scratch)
        copier = ArtifactCopy(source_store, source_reference.repository, store, reference.repository,
                              temp_dir=params["temp_dir"])
        outcome = copy_artifact(copier, source_reference.ref, tags, recursive=params["recursive"],
                                check_mode=module.check_mode, expected_digest=reference.digest)
    except FleetError as exc:
        fail_from(module, exc)
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
    stores = [source_store] if store is source_store else [source_store, store]
    transfer = {key: sum(s.stats.get(key, 0) for s in stores) for key in source_store.stats}
    counts = outcome["counts"]
    result = {
        "changed": outcome["changed"],
        "digest": outcome["digest"],
        "reference": f"{reference.name}@{outcome['digest']}",
        "source_reference": f"{source_reference.name}@{outcome['digest']}",
        "tags": tags,
        "tags_moved": [ref for ref in outcome["moved"] if ref in tags],
        "media_type": outcome["media_type"],
        "size": outcome["size"],
        "blobs": {"copied": counts["blobs_copied"], "mounted": counts["blobs_mounted"],
                  "present": counts["blobs_present"], "bytes": counts["bytes_copied"]},
        "manifests_copied": counts["manifests_copied"],
        "referrers": outcome["referrers"],
        "referrers_copied": sum(1 for item in outcome["referrers"] if item["copied"]),
        "transfer": transfer,
    }
    if module._diff:  # pylint: disable=protected-access
        before = {ref: value or "(absent)" for ref, value in outcome["before"].items()}
        after = {ref: outcome["digest"] for ref in outcome["before"]}
        if params["recursive"]:
            before["referrers"] = sorted(item["digest"] for item in outcome["referrers"] if not item["copied"])
            after["referrers"] = sorted(item["digest"] for item in outcome["referrers"])
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
