#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_publish
short_description: Validate a release manifest and publish it as an OCI artifact; its digest is the release id
version_added: 0.1.0
description:
  - Reads a release manifest (schema version 1, see C(docs/releases.md)), validates every field and reports every problem
    at once, each naming the field and what to write instead.
  - Publishes the release as an OCI artifact holding its canonical JSON (C(release.json), what nodes read with the
    Python standard library) and tags it with its version and the given channels (C(candidate), C(stable), ...).
  - The digest of that artifact is the release id, the same on every node, in every record and report.
  - Publishing the same release again changes nothing; moving a channel to it is a re-tag.
  - Refuses a release whose C(release.json) is larger than nodes read (4 MiB), and a mount point outside
    O(mount_point_prefixes).
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Validates and computes the release id; pushes nothing.
  diff_mode:
    support: full
    details: Shows, per tag, the release id before and after.
  idempotent:
    support: full
options:
  manifest:
    description:
      - Path of the release manifest, YAML or JSON, on the host the module runs on. A YAML file needs PyYAML there,
        as every Ansible controller has. Mutually exclusive with O(manifest_data).
    type: path
  manifest_data:
    description:
      - The release manifest as data, for a release written in the play. Mutually exclusive with O(manifest).
      - (In this collection, an option named C(release) always names a release by reference or id.)
    type: dict
  repository:
    description:
      - Where releases of this application are kept, without tag, for example C(registry.example.org/releases/qserv), or an
        OCI layout C(oci-layout:/srv/oci/releases).
    type: str
    required: true
  channels:
    description: Channel tags to point at this release as well as its version tag.
    type: list
    elements: str
    default: []
  mount_point_prefixes:
    description:
      - Where the artifacts' C(mount_point) may be on the nodes. Each mount point must lie below one of these
        directories (C(/opt/envs/qserv) below C(/opt)), so that no release replaces a path of the system.
      - A prefix may not be C(/), a system directory (C(/bin), C(/boot), C(/dev), C(/etc), C(/home), C(/lib), C(/lib32),
        C(/lib64), C(/libx32), C(/lost+found), C(/media), C(/mnt), C(/proc), C(/root), C(/run), C(/sbin), C(/snap),
        C(/srv), C(/sys), C(/tmp), C(/usr), C(/var)) or lie in one, except below C(/usr/local) and C(/srv), which are
        the site's (for example C(/usr/local/envs)).
      - Nodes refuse a mount point in a system directory whatever this list says, and never replace a path they did
        not create.
    type: list
    elements: str
    default: [/opt, /user-environment, /apps]
  verify_artifacts:
    description:
      - Check that every artifact the release names exists, by digest, before publishing it, so that no node is ever
        sent a release it cannot install.
    type: bool
    default: true
seealso:
  - module: sciops.fleet.release_install
  - module: sciops.fleet.oras_copy
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Publish release 1.4.0 of qserv as candidate
  sciops.fleet.release_publish:
    manifest: releases/qserv-1.4.0.yaml
    repository: registry.example.org/releases/qserv
    channels: [candidate]
  register: published

- name: The release id every node will report
  ansible.builtin.debug:
    msg: "{{ published.release_id }}"

- name: Publish a release written in the play into a local OCI layout
  sciops.fleet.release_publish:
    repository: oci-layout:/srv/oci/releases
    manifest_data:
      schema_version: 1
      application: hello
      version: 1.0.0
      protocol: "1"
      artifacts:
        - name: bin
          reference: oci-layout:/srv/oci/build@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
"""

RETURN = r"""
release_id:
  description: Digest of the release artifact, the release's identity everywhere.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
reference:
  description: The release pinned by digest, to give to a rollout.
  returned: success
  type: str
  sample: registry.example.org/releases/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
tags:
  description: The version tag and the channels now pointing at the release.
  returned: success
  type: list
  elements: str
  sample: [1.4.0, candidate]
release:
  description: The validated release in canonical form (defaults filled in).
  returned: success
  type: dict
  sample: {application: qserv, version: 1.4.0, protocol: "7", role: server}
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import DocumentError, read_document
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import NotFoundError, OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import describe_file, push_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import (
    open_reference,
    registry_argument_spec,
    registry_options,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (
    DEFAULT_MOUNT_POINT_PREFIXES,
    RELEASE_ARTIFACT_TYPE,
    RELEASE_FILE,
    ReleaseError,
    check_mount_point_prefixes,
    release_document,
    validate_release,
)


def read_manifest(path):
    """The parsed manifest file at PATH (JSON, or YAML when PyYAML is there)."""
    try:
        return read_document(path)
    except OSError as exc:
        raise OciError(f"manifest: cannot read {path}: {exc.strerror}") from None
    except DocumentError as exc:
        if exc.needs_yaml:
            raise OciError(f"manifest: {path} {exc}; run the task on the controller, or pass "
                           "release: \"{{ lookup('file', path) | from_yaml }}\"") from None
        raise ReleaseError(path, [str(exc)]) from None


def check_artifacts(release, params):
    """Every artifact must exist by digest before the release may point at it."""
    missing = []
    for artifact in release["artifacts"]:
        reference = parse_reference(artifact["reference"])
        store = open_store(reference, **registry_options(params))
        try:
            store.resolve(reference.repository, artifact["digest"])
        except NotFoundError:
            missing.append(f"artifacts: {artifact['name']}: {artifact['reference']} does not exist; push it first")
    if missing:
        raise ReleaseError(params["manifest"] or "(given)", missing)


def main():
    module = AnsibleModule(
        argument_spec=registry_argument_spec(
            manifest={"type": "path"},
            manifest_data={"type": "dict"},
            repository={"type": "str", "required": True},
            channels={"type": "list", "elements": "str", "default": []},
            mount_point_prefixes={"type": "list", "elements": "str", "default": list(DEFAULT_MOUNT_POINT_PREFIXES)},
            verify_artifacts={"type": "bool", "default": True},
        ),
        mutually_exclusive=[("manifest", "manifest_data")],
        required_one_of=[("manifest", "manifest_data")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        data = read_manifest(params["manifest"]) if params["manifest"] else params["manifest_data"]
        source = params["manifest"] or "(given as data)"
        release = validate_release(data, source, check_mount_point_prefixes(params["mount_point_prefixes"]))
        document = release_document(release, source)
        reference, store = open_reference(params, params["repository"], "repository", create_layout=not module.check_mode)
        if reference.tag or reference.digest:
            raise OciError(f"repository {params['repository']!r} must name no tag or digest: the release's version and channels are its tags")
        if params["verify_artifacts"]:
            check_artifacts(release, params)
        tags = [release["version"].replace("~", "-")] + [c for c in params["channels"] if c != release["version"]]
        for tag in tags:
            reference.with_tag(tag)
        with tempfile.TemporaryDirectory(prefix="sciops-release-") as work:
            path = os.path.join(work, RELEASE_FILE)
            with open(path, "wb") as handle:
                handle.write(document)
            files = [describe_file(path, RELEASE_FILE, "application/json", record_mode=False)]
            outcome = push_artifact(store, reference.repository, tags, files, artifact_type=RELEASE_ARTIFACT_TYPE,
                                    annotations={"org.opencontainers.image.version": release["version"],
                                                 "io.sciops.fleet.application": release["application"],
                                                 "io.sciops.fleet.protocol": release["protocol"]},
                                    check_mode=module.check_mode)
    except FleetError as exc:
        fail_from(module, exc)
    result = {"changed": outcome["changed"], "release_id": outcome["digest"],
              "reference": f"{reference.name}@{outcome['digest']}", "tags": tags, "release": release}
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {"before": {t: outcome["before"][t] or "(absent)" for t in tags},
                          "after": {t: outcome["digest"] for t in tags}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
