#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: oras_pull
short_description: Pull the files of an OCI artifact into a directory, verified and resumable
version_added: 0.1.0
description:
  - Pulls the files of an OCI artifact (the layers with a file name, as M(sciops.fleet.oras_push) or C(oras push)
    write them) from a registry or an OCI image layout into a directory on the managed node.
  - Runs on managed nodes with the Python standard library only.
  - Every file is streamed into a temporary file in the destination while it is hashed; its size and digest are
    checked, it is flushed to disk, renamed into place and the directory is flushed too. A file that does not
    match its digest never appears under its name. An interrupted download leaves a partial file that the next
    run resumes with an HTTP range request.
  - Files already in the destination with the right digest are not transferred again, and with O(cache_dir) a
    digest the node already holds is never transferred again, whatever the destination.
  - File names come from the artifact and are checked before anything is written; absolute paths, C(..)
    components and names that lead through a symbolic link out of the destination are refused.
  - Permission bits recorded by M(sciops.fleet.oras_push) are restored.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Resolves the reference and compares the destination files with their digests; writes nothing.
  diff_mode:
    support: full
    details: Lists the files that would be fetched or whose mode would change.
  idempotent:
    support: full
options:
  reference:
    description:
      - What to pull, by tag (C(registry/repository:tag)) or by digest (C(registry/repository@sha256:...)).
      - C(oci-layout:/path/to/dir:tag) pulls from an OCI image layout on the managed node.
    type: str
    required: true
  dest:
    description: The directory to place the files in; created when missing.
    type: path
    required: true
  expected_digest:
    description:
      - Fail, and write nothing, unless the reference resolves to this manifest digest. Pins a tag to the
        release that was tested.
    type: str
  cache_dir:
    description:
      - A content-addressed cache directory on the node (C(<cache_dir>/blobs/sha256/<hex>)). Blobs are
        downloaded into it and copied to O(dest); a digest already in it is not downloaded again.
    type: path
  unpack:
    description:
      - Unpack a directory layer as the C(oras) CLI pushes it (a gzip tar archive with the annotation
        C(io.deis.oras.content.unpack=true), titled with the directory's name) into O(dest)/<title>/, as C(oras pull)
        does. The layer's digest is verified before anything is extracted.
      - Extraction follows no symbolic link, refuses absolute names, C(..), devices, fifos, links that lead
        outside the directory and hard links to anything but a file of the same layer, and drops set-id and
        group/other write bits. A refused layer fails the task naming the member; the directory in O(dest) is
        replaced only once the whole layer is extracted.
      - What each directory was unpacked from is recorded in O(dest)/.sciops-unpacked.json, so a second run with
        the same layer and an unchanged tree transfers and writes nothing.
      - With V(false), the layer is saved as a file named after its title.
    type: bool
    default: true
seealso:
  - module: sciops.fleet.oras_push
  - module: sciops.fleet.oras_info
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Pull release 1.4.0, pinned to the digest that passed the tests
  sciops.fleet.oras_pull:
    reference: registry.example.org/deploy/qserv:1.4.0
    expected_digest: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    dest: /var/lib/sciops-fleet/qserv/staging
    cache_dir: /var/cache/sciops-fleet

- name: Pull from a registry that runs with a private CA
  sciops.fleet.oras_pull:
    reference: registry.site.example:5000/deploy/env@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    dest: /opt/env
    ca_path: /etc/pki/site-ca.pem

- name: Pull a directory pushed with "oras push registry.example.org/build/configs:1 site-a/"; it lands in /etc/qserv/site-a/
  sciops.fleet.oras_pull:
    reference: registry.example.org/build/configs:1
    dest: /etc/qserv

- name: Pull from an OCI layout shipped to an air-gapped node
  sciops.fleet.oras_pull:
    reference: oci-layout:/srv/oci/configs:site-a
    dest: /etc/qserv
"""

RETURN = r"""
digest:
  description: Digest of the manifest that was pulled.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
media_type:
  description: Media type of the manifest.
  returned: success
  type: str
  sample: application/vnd.oci.image.manifest.v1+json
artifact_type:
  description: The artifact type (or the config media type when the manifest has none).
  returned: success
  type: str
  sample: application/vnd.sciops.bundle.v1
annotations:
  description: Annotations of the manifest.
  returned: success
  type: dict
  sample: {org.opencontainers.image.version: 1.4.0}
files:
  description:
    - One entry per file. C(state) says what was found before the pull; C(present) (nothing done), C(mode)
      (permission bits fixed) or C(fetch) (content placed).
    - C(unpacked) is true for a directory layer unpacked into C(path), a directory (see O(unpack)).
  returned: success
  type: list
  elements: dict
  sample: [{name: qserv-1.4.0.tar.gz, path: /var/lib/sciops-fleet/qserv/staging/qserv-1.4.0.tar.gz,
            digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", size: 1048576, state: present,
            unpacked: false}]
skipped:
  description: Digests of layers without a file name; they are not written.
  returned: success
  type: list
  elements: str
  sample: []
transfer:
  description: Counters of what crossed the network (requests, retries, blobs_downloaded, bytes_downloaded, resumed, ...).
  returned: success
  type: dict
  sample: {requests: 2, blobs_downloaded: 0, bytes_downloaded: 0, resumed: 0}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import split_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import pull_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import open_reference, registry_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            reference={"type": "str", "required": True},
            dest={"type": "path", "required": True},
            expected_digest={"type": "str"},
            cache_dir={"type": "path"},
            unpack={"type": "bool", "default": True},
        ),
        supports_check_mode=True,
    )
    params = module.params
    store = None
    try:
        if params["expected_digest"]:
            try:
                split_digest(params["expected_digest"])
            except FleetError as exc:
                raise OciError(f"expected_digest: {exc}") from None
        reference, store = open_reference(params, params["reference"], "reference")
        if not reference.ref:
            raise OciError(f"reference {params['reference']!r} names neither a tag nor a digest")
        cache = BlobCache(params["cache_dir"]) if params["cache_dir"] else None
        outcome = pull_artifact(store, reference.repository, reference.ref, params["dest"], str(reference),
                                cache=cache, expected_digest=params["expected_digest"], check_mode=module.check_mode,
                                unpack=params["unpack"])
    except FleetError as exc:
        fail_from(module, exc, transfer=dict(store.stats) if store else {})
    except OSError as exc:
        module.fail_json(msg=f"cannot write to {params['dest']}: {exc}", error_type="OSError")
    outcome["transfer"] = dict(store.stats)
    if module._diff:  # pylint: disable=protected-access
        todo = [f for f in outcome["files"] if f["state"] != "present"]
        outcome["diff"] = {
            "before": "".join(f"{f['name']}: {'absent or different' if f['state'] == 'fetch' else 'other mode'}\n" for f in todo),
            "after": "".join(f"{f['name']}: {f['digest']}\n" for f in todo),
        }
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
