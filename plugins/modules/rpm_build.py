#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rpm_build
short_description: Build RPMs from a staged tree with rpmbuild, reproducibly, split into application and dependency packages
version_added: 0.2.0
description:
  - Builds one or more binary RPMs from a staged tree (files laid out as they are installed, C(opt/qserv/bin/qserv)
    for C(/opt/qserv/bin/qserv)) and a small package spec, with the real C(rpmbuild). Runs on the build host.
  - Splitting. The spec's C(packages) take the tree's files by path patterns (C(*) within a name, C(**) across
    directories, a pattern naming a directory takes all below it), minus their C(exclude) patterns. A file in two
    packages, or in none, is an error naming the file. Directories below the spec's C(prefix), and any directory that is not
    one of the system's (C(/usr), C(/etc), C(/opt), ...), are owned by exactly one package, the one holding all the
    files below them, or else the package with C(owns_shared_dirs).
  - A bare sibling name in C(requires) is pinned to that sibling's exact C(epoch:version-release), so the application
    package names the dependency package it was built with.
  - Made for prebuilt binaries. No debuginfo, no dwz, no stripping, no byte-compiling (unless O(strip) or
    O(debuginfo)); a zstd payload by default; the tree is hard-linked into the build root rather than copied.
  - Reproducible. Each package is built by its own C(rpmbuild) run from its own files and fields only, so a new
    application build leaves the dependency package's bytes alone. C(SOURCE_DATE_EPOCH) (O(source_date_epoch), else
    the package's newest changelog date, else its newest file) sets the build time and clamps every file time; the
    build host is recorded as C(reproducible). The same tree and spec give the same bytes, and a package whose bytes
    did not change is left in place (no change reported).
  - Atomic. The build runs in a scratch directory inside O(dest); the packages are renamed into place only once all
    are built (and signed), so a failed build leaves nothing behind in O(dest).
  - Systemd units the package ships (under C(usr/lib/systemd/system/)) get scriptlets that reload systemd, preset
    the units on first install, stop and disable them on removal, and try-restart them on upgrade.
  - See C(docs/rpm.md) in the collection for the spec, the version scheme and a worked example.
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Builds in the scratch directory and compares with O(dest); moves nothing into O(dest) and signs nothing.
  diff_mode:
    support: partial
    details: Returns the rendered rpm spec file as RV(spec_text); no before/after diff.
  idempotent:
    support: full
    details: The same tree and spec rebuild to the same bytes; a signed package counts as unchanged when its header
      and payload are the same and it is signed by O(sign_key).
options:
  tree:
    description: The staged tree, laid out as the packages install it.
    type: path
    required: true
  dest:
    description: The directory that receives the RPMs (created when missing), named C(NAME-VERSION-RELEASE.ARCH.rpm).
    type: path
    required: true
  spec:
    description:
      - The package spec, validated with one message per wrong field. Top-level fields are C(name), C(version) (an RPM
        version, no C(-), pre-releases with C(~); see the P(sciops.fleet.rpm_version#filter) filter), C(release) (default 1),
        C(epoch), C(arch) (default the build host's, or C(noarch)), C(summary), C(license), C(url), C(vendor),
        C(packager) (default the newest changelog author), C(group), C(description), C(prefix), C(relocatable),
        C(auto_requires), C(changelog), C(attributes)
        and C(packages).
      - C(attributes) is a list of C(path) (pattern), C(owner), C(group), C(mode) (files) and C(dir_mode)
        (directories), applied to the whole tree it matches; later entries win. Files keep the tree's mode and are
        owned by root unless a rule says otherwise.
      - Each of C(packages) has C(name), C(files) and C(exclude) (patterns), C(requires), C(provides), C(conflicts),
        C(obsoletes), C(config) (patterns, C(%config(noreplace))), C(doc) (patterns), C(ghost) and C(dirs) (paths),
        C(scripts) (C(pre), C(post), C(preun), C(postun), C(posttrans) shell text), C(systemd) (default true),
        C(owns_shared_dirs), C(auto_requires), C(changelog) (a package with a version of its own does not take the
        spec's), and may override C(version), C(release), C(epoch), C(summary) and
        C(description). Without C(packages), one package named C(name) holds the whole tree.
      - C(auto_requires) true lets rpm add the shared library requires and provides it finds in ELF files
        (C(libc.so.6()(64bit))); the default false declares only what the spec says.
      - C(relocatable) true declares C(Prefix) as the spec's C(prefix), so C(rpm --relocate) can move the packages; every
        path must then be below the prefix.
      - C(changelog) is a list of C(date) (YYYY-MM-DD), C(author) (C(Name <mail>)) and C(text).
    type: dict
    required: true
  source_date_epoch:
    description:
      - Seconds since 1970 recorded as build time and used to clamp file times.
      - Default, per package, its newest changelog date, else the newest modification time of its files.
    type: int
  compression:
    description: The payload compression.
    type: str
    choices: [zstd, xz, gzip, none]
    default: zstd
  compression_level:
    description: The compression level; default zstd 3 (its own default), xz 6, gzip 6 (zstd 1 to 19, xz 0 to 9, gzip 1 to 9).
    type: int
  strip:
    description: Strip ELF files with rpm's brp-strip (the tree itself is copied, not linked, then).
    type: bool
    default: false
  debuginfo:
    description: Let rpm build debuginfo packages (it needs the tree's ELF files to carry debug information).
    type: bool
    default: false
  sign_key:
    description:
      - A GnuPG key (id, fingerprint or user id) to sign the packages with (C(rpmsign --addsign)). It must be usable
        without a passphrase prompt (no passphrase, or one preset in gpg-agent).
    type: str
  gpg_home:
    description: The GnuPG home holding O(sign_key); default the user's.
    type: path
seealso:
  - module: sciops.fleet.rpm_repo
  - module: sciops.fleet.oras_push
author:
  - sciops.fleet maintainers (@sciops)
"""

EXAMPLES = r"""
---
- name: Build the application and its dependencies as two RPMs from one staged tree
  sciops.fleet.rpm_build:
    tree: /build/qserv/stage
    dest: /build/qserv/rpms
    spec:
      name: qserv
      version: "{{ (qserv_version | sciops.fleet.rpm_version(build=ci_build_number)).version }}"
      release: "{{ (qserv_version | sciops.fleet.rpm_version(build=ci_build_number)).release }}"
      summary: Qserv distributed database
      license: GPL-3.0-or-later
      url: https://qserv.example.org
      prefix: /opt/qserv
      changelog:
        - {date: "2024-05-01", author: "Qserv builders <builders@example.org>", text: "Build of release 1.4.0"}
      attributes:
        - {path: opt/qserv/var, owner: qserv, group: qserv, mode: "0640", dir_mode: "0750"}
      packages:
        - name: qserv
          files: [opt/qserv/bin, opt/qserv/etc, opt/qserv/var, usr/lib/systemd/system/qserv.service]
          requires: [qserv-deps]
          config: [opt/qserv/etc/qserv.conf]
          scripts:
            pre: getent passwd qserv >/dev/null || useradd -r -d /opt/qserv -s /sbin/nologin qserv
        - name: qserv-deps
          version: "2024.1"
          summary: Libraries Qserv runs with
          files: [opt/qserv/lib]
          owns_shared_dirs: true
  register: qserv_rpms

- name: Sign them with the site key
  sciops.fleet.rpm_build:
    tree: /build/qserv/stage
    dest: /build/qserv/rpms
    spec: "{{ qserv_spec }}"
    sign_key: packages@example.org
    gpg_home: /etc/build/gnupg
"""

RETURN = r"""
packages:
  description:
    - One entry per package, in the spec's order, with its file name, path, digest, size, NEVRA, and the
      C(SOURCE_DATE_EPOCH) it was built with.
  returned: success
  type: list
  elements: dict
  sample:
    - name: qserv
      file: qserv-1.4.0~rc1-3.x86_64.rpm
      path: /build/qserv/rpms/qserv-1.4.0~rc1-3.x86_64.rpm
      digest: "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"
      size: 1048576
      nevra: qserv-1.4.0~rc1-3.x86_64
      version: 1.4.0~rc1
      release: "3"
      epoch: null
      changed: true
      source_date_epoch: 1714521600
files:
  description: The paths of the RPMs, for M(sciops.fleet.oras_push) or M(sciops.fleet.rpm_repo).
  returned: success
  type: list
  elements: str
  sample: [/build/qserv/rpms/qserv-1.4.0~rc1-3.x86_64.rpm, /build/qserv/rpms/qserv-deps-2024.1-3.x86_64.rpm]
spec_text:
  description: The rpm spec file rendered from O(spec).
  returned: when diff mode is on
  type: str
  sample: "Name: qserv\nVersion: 1.4.0~rc1\n..."
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.build import build_packages
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.spec import validate_spec


def main():
    module = AnsibleModule(
        argument_spec={
            "tree": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "spec": {"type": "dict", "required": True},
            "source_date_epoch": {"type": "int"},
            "compression": {"type": "str", "choices": ["zstd", "xz", "gzip", "none"], "default": "zstd"},
            "compression_level": {"type": "int"},
            "strip": {"type": "bool", "default": False},
            "debuginfo": {"type": "bool", "default": False},
            "sign_key": {"type": "str", "no_log": False},
            "gpg_home": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    for tool in ["rpmbuild"] + (["rpmsign"] if params["sign_key"] else []):
        if not module.get_bin_path(tool):
            module.fail_json(msg=f"{tool} is not installed on the build host; install the rpm package (Debian: rpm, "
                                 "Red Hat: rpm-build and rpm-sign)")

    def run(argv, env=None):
        return module.run_command(argv, environ_update=env or {}, check_rc=False)

    arch = None
    if params["spec"].get("arch") is None:
        rc, out, _err = run(["rpm", "--eval", "%{_arch}"])
        arch = out.strip() if rc == 0 and out.strip() else os.uname().machine
    try:
        spec = validate_spec(params["spec"], host_arch=arch or "noarch")
        outcome = build_packages(run, spec, params["tree"], params["dest"], params["source_date_epoch"],
                                 params["compression"], params["compression_level"], params["strip"],
                                 params["debuginfo"], params["sign_key"], params["gpg_home"], module.check_mode)
    except FleetError as exc:
        fail_from(module, exc)
    except OSError as exc:
        module.fail_json(msg=f"building RPMs from {params['tree']} into {params['dest']} failed: {exc}", error_type="OSError")
    result = {"changed": outcome["changed"], "packages": outcome["packages"],
              "files": [p["path"] for p in outcome["packages"]]}
    if module._diff:  # pylint: disable=protected-access
        result["spec_text"] = outcome["spec_text"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
