#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: release_install
short_description: Install a release on a node beside the running one, without switching to it
version_added: 0.1.0
description:
  - Fetches a release (published with M(sciops.fleet.release_publish)) and every artifact it names, by digest, through the
    verified and cached download of M(sciops.fleet.oras_pull), and installs them into
    C(<state_root>/<application>/releases/<version>-<short digest>/).
  - C(files) artifacts are placed as they are, C(extract) artifacts have their tar archives unpacked (members that would
    land outside the release, devices and links pointing out are refused), C(squashfs) images are placed for mounting,
    and C(rpm) artifacts (only C(.rpm) files) are placed and their package names and versions recorded;
    M(sciops.fleet.release_switch) installs them with C(rpm) when it switches C(current) to the release.
  - Environment images (M(sciops.fleet.env_build)) are C(mount) artifacts, mounted read-only at
    C(releases/<id>/<name>) by an enabled systemd C(.mount) unit (the kernel's squashfs through a loop device, or
    squashfuse where there are no loop devices), or C(unpack) artifacts, unpacked into it. An artifact's C(mount_point)
    becomes a link to C(<application>/current/<name>). A mount point in a system directory is refused, and so is
    one where a path is that this node did not create (links it created are recorded in
    C(<application>/.mount-links.json)); that path is left as it is. See C(docs/environments.md).
  - C(machine) artifacts are a root file system (a squashfs or tar image, or an OCI image whose layers are applied in
    order with their whiteouts), unpacked into C(releases/<id>/<name>) with the same refusals; device nodes other
    than null, zero, full, random, urandom, tty, console and ptmx are refused. M(sciops.fleet.release_switch) runs it
    as the nspawn machine C(<application>-current) (and C(<application>-oldstable)). See C(docs/services.md).
  - Configuration files are rendered from the release's templates with C($name) / C(${name}) variables (Python's
    C(string.Template)); a variable no one defines is an error naming the config and the variable.
  - The release is built in a staging directory and renamed into place once complete, so a half-installed release
    never looks installed; an interrupted install is started over by the next run, and a failed one removes its
    staging tree. The slots (C(current), C(oldstable)) are never touched; M(sciops.fleet.release_switch) does that.
  - Before installing, the node's record is made to agree with its release directories. A complete release
    directory the record does not know (an install interrupted after its rename, a record that could not be saved on
    a full disk) is adopted when its files record verifies (every file there with its size and digest); an
    incomplete one is removed and installed again. A damaged or missing record is rebuilt from the release
    directories and the slot links, the damaged file kept beside it as C(<fact>.damaged-<UTC time>). Each repair is
    a warning and makes the task C(changed).
  - A full disk (C(ENOSPC), C(EDQUOT)) fails with the directory that filled up (the releases directory, the download
    cache or the facts directory) and what to do.
  - Runs on managed nodes with the Python standard library only.
extends_documentation_fragment:
  - sciops.fleet.registry
  - sciops.fleet.release_node
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Reports whether the release would be installed; fetches only the release manifest.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  release:
    description: The release, by digest (C(registry/repository@sha256:...)) or by tag.
    type: str
    required: true
  cache_dir:
    description: The node's content-addressed download cache; a digest already in it is not downloaded again.
    type: path
    default: /var/cache/sciops-fleet
  config_vars:
    description: Variables for the configuration templates; they override the release's own C(vars).
    type: dict
    default: {}
seealso:
  - module: sciops.fleet.release_switch
  - module: sciops.fleet.release_preflight
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Install the release that passed the tests, beside the running one
  sciops.fleet.release_install:
    release: registry.example.org/releases/qserv@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
    config_vars:
      port: 7000
      peers: qserv-a01,qserv-a02
"""

RETURN = r"""
release_id:
  description: The release's digest.
  returned: success
  type: str
  sample: sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b
application:
  description: The application the release belongs to.
  returned: success
  type: str
  sample: qserv
version:
  description: The release's version.
  returned: success
  type: str
  sample: 1.4.0
name:
  description: The release's directory name, C(<version>-<short digest>).
  returned: success
  type: str
  sample: 1.4.0-6c3c624b58db
path:
  description: Where the release is installed.
  returned: success
  type: str
  sample: /var/lib/sciops-fleet/qserv/releases/1.4.0-6c3c624b58db
artifacts:
  description: Per artifact installed by this run, its name, digest and files.
  returned: success
  type: list
  elements: dict
  sample: [{name: bin, digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", files: [qserv.tar.gz]}]
release:
  description: The release manifest in canonical form (services, health checks, requirements, ...).
  returned: success
  type: dict
  sample: {application: qserv, version: 1.4.0, protocol: "7", services: [qserv@current.service]}
transfer:
  description: Bytes and blobs downloaded by this run (0 when the cache or the installed release already had them).
  returned: success
  type: dict
  sample: {bytes_downloaded: 0, blobs_downloaded: 0}
repairs:
  description: What was repaired so that the record agrees with the release directories (empty when nothing was).
  returned: success
  type: list
  elements: str
  sample: ["release 1.4.0-6c3c624b58db was installed but not recorded: adopted (its files verify)"]
record_rebuilt:
  description:
    - When the record was damaged or missing and rebuilt from the release directories, where the damaged file was
      kept (the record's own path when there was none); else null.
  returned: success
  type: str
  sample: /etc/ansible/facts.d/sciops_fleet_qserv.fact.damaged-20260102T030405Z
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import registry_options
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._release.module import node_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._release.fetch import fetch_release
from ansible_collections.sciops.fleet.plugins.module_utils._release.install import install_release
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import DEFAULT_CACHE_DIR, AppState


def main():
    module = AnsibleModule(
        argument_spec=node_argument_spec(
            registry=True,
            release={"type": "str", "required": True},
            cache_dir={"type": "path", "default": DEFAULT_CACHE_DIR},
            config_vars={"type": "dict", "default": {}},
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        release, digest, _reference = fetch_release(params["release"], registry_options(params))
        state = AppState(release["application"], params["state_root"], params["facts_dir"])
        outcome = install_release(state, release, digest, registry_options(params), cache_dir=params["cache_dir"],
                                  config_vars={k: str(v) for k, v in params["config_vars"].items()},
                                  check_mode=module.check_mode)
    except FleetError as exc:
        fail_from(module, exc)
    except OSError as exc:
        module.fail_json(msg=f"installing {params['release']} failed: {exc}", error_type="OSError")
    for repair in outcome["repairs"]:
        module.warn(repair)
    module.exit_json(changed=outcome["changed"], release_id=digest, application=release["application"],
                     version=release["version"], name=outcome["name"], path=outcome["path"],
                     artifacts=outcome["artifacts"], transfer=outcome["transfer"], release=release,
                     repairs=outcome["repairs"], record_rebuilt=outcome["record_rebuilt"])


if __name__ == "__main__":
    main()
