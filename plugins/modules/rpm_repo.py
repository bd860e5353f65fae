#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rpm_repo
short_description: Create or update RPM repository metadata for a directory of RPMs with createrepo_c
version_added: 0.2.0
description:
  - Writes C(repodata/) for the RPMs in O(path) (and its subdirectories) with C(createrepo_c), incrementally
    (C(--update) reuses the metadata of packages already listed), so the directory can be served by any web server
    as a dnf/yum repository, or pushed as one OCI artifact with M(sciops.fleet.oras_push).
  - Nothing is run, and no change is reported, when the metadata already lists exactly the RPMs in the directory
    and none of them is newer than the metadata.
  - With O(revision), the repository's revision and every time stamp in its metadata are that number, so the same
    packages give the same metadata bytes.
  - Runs on the build host (or wherever the packages are); needs C(createrepo_c).
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Compares the directory with the metadata; writes nothing.
  diff_mode:
    support: partial
    details: Returns the packages added and removed (RV(added), RV(removed)); no before/after text.
  idempotent:
    support: full
options:
  path:
    description: The directory holding the RPMs; C(repodata/) is written in it.
    type: path
    required: true
  revision:
    description: The repository revision (an integer such as a build number or a C(SOURCE_DATE_EPOCH)); also used
      as every time stamp in the metadata. Default the time of the run, as C(createrepo_c) does.
    type: int
  compression:
    description: Compression of the metadata files.
    type: str
    choices: [gz, zstd, xz]
    default: gz
  workers:
    description: Number of C(createrepo_c) workers reading packages; default its own.
    type: int
seealso:
  - module: sciops.fleet.rpm_build
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Index the packages for dnf on the nodes
  sciops.fleet.rpm_repo:
    path: /srv/repos/qserv
    revision: "{{ ci_build_number }}"
  register: qserv_repo

- name: Publish the whole repository as one OCI artifact
  sciops.fleet.oras_push:
    target: registry.example.org/repos/qserv:{{ ci_build_number }}
    directory: /srv/repos/qserv
  when: qserv_repo is changed
"""

RETURN = r"""
packages:
  description: The RPMs the metadata lists afterwards (relative locations).
  returned: success
  type: list
  elements: str
  sample: [qserv-1.4.0~rc1-3.x86_64.rpm, qserv-deps-2024.1-3.x86_64.rpm]
added:
  description: RPMs new to the metadata, or changed since it was written.
  returned: success
  type: list
  elements: str
  sample: [qserv-1.4.0~rc1-3.x86_64.rpm]
removed:
  description: RPMs the metadata listed that are no longer in the directory.
  returned: success
  type: list
  elements: str
  sample: []
repomd_digest:
  description: The digest of C(repodata/repomd.xml) afterwards (null in check mode when there is none yet).
  returned: success
  type: str
  sample: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.build import RpmBuildError
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.repo import list_packages, primary_packages, repo_state


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "revision": {"type": "int"},
            "compression": {"type": "str", "choices": ["gz", "zstd", "xz"], "default": "gz"},
            "workers": {"type": "int"},
        },
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    if not os.path.isdir(path):
        module.fail_json(msg=f"path: {path} is not a directory; build the RPMs into it first (sciops.fleet.rpm_build)")
    createrepo = module.get_bin_path("createrepo_c")
    if not createrepo:
        module.fail_json(msg="createrepo_c is not installed here; install it (Debian: createrepo-c, Red Hat: createrepo_c)")

    def run(argv, env=None):
        return module.run_command(argv, environ_update=env or {}, check_rc=False)

    try:
        on_disk = list_packages(path)
        listed = primary_packages(run, path) if repo_state(path) else []
        repomd = os.path.join(path, "repodata", "repomd.xml")
        written = os.stat(repomd).st_mtime if os.path.exists(repomd) else 0
        added = sorted(p for p, (_size, mtime) in on_disk.items() if p not in listed or mtime > written)
        removed = sorted(p for p in listed if p not in on_disk)
        changed = bool(added or removed) or not listed and not os.path.exists(repomd)
        if changed and not module.check_mode:
            argv = [createrepo, "--update", "--general-compress-type", params["compression"]]
            if params["revision"] is not None:
                argv += ["--revision", str(params["revision"]), "--set-timestamp-to-revision"]
            if params["workers"]:
                argv += ["--workers", str(params["workers"])]
            argv.append(path)
            rc, out, err = run(argv, env={"LC_ALL": "C"})
            if rc != 0:
                raise RpmBuildError(f"createrepo_c failed (exit {rc}) on {path}: {(err or out).strip()[-2000:]}")
            listed = primary_packages(run, path)
            missing = sorted(set(on_disk) - set(listed))
            if missing:
                raise RpmBuildError(f"createrepo_c left out {', '.join(missing)}; are they valid RPMs? (rpm -K FILE)")
        else:
            listed = sorted(set(listed) - set(removed) | set(added))
    except FleetError as exc:
        fail_from(module, exc)
    except OSError as exc:
        module.fail_json(msg=f"indexing {path} failed: {exc}", error_type="OSError")
    module.exit_json(changed=changed, packages=listed, added=added, removed=removed, repomd_digest=repo_state(path))


if __name__ == "__main__":
    main()
