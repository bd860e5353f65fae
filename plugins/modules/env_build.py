#!/usr/bin/python
# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: env_build
short_description: Build a software environment from a recipe into a reproducible squashfs, tar.zst or directory image
version_added: 0.1.0
description:
  - Runs on a build host. Reads a recipe (YAML, schema in C(docs/environments.md)), validates it (every wrong field
    is named, with what to write instead), builds the environment's tree with one of three backends, writes its
    metadata into C(meta/), and makes an image of it.
  - Backend C(tree) takes a staged directory. With C(tree.closure), the shared libraries its ELF programs need
    (found from the programs themselves with C(ldd)), except the C library, are copied into C(lib/) of the image and
    every program gets the run path C($ORIGIN/../lib) (C(patchelf)), so the image runs on a node that lacks them.
  - Backend C(venv) makes a Python virtual environment with pip from C(venv.requirements), relocated to the recipe's
    C(mount) (scripts, C(pyvenv.cfg) and activate files name the mount point, never the build directory).
  - Backend C(spack) writes a C(spack.yaml) (specs, compilers as requirements, packages, views under the mount point)
    and runs C(spack concretize) and C(spack install); without C(spack) on the build host it fails and says so.
  - Inside the image, C(meta/env.json) holds what the uenv tool reads (name, version, description, mount, views with
    their environment variables); C(meta/manifest.json) lists every file with its size, mode and sha256;
    C(meta/provenance.json) holds the recipe digest, the inputs digest, the tool versions and the build's time.
  - Reproducible. Every file gets one fixed time (O(source_date_epoch), else the recipe's C(source_date_epoch),
    else C(SOURCE_DATE_EPOCH), else 0), owners are root, entries are sorted, no extended attributes, and nothing
    names the build host, so the same recipe and inputs give a byte-identical image.
  - Idempotent. A digest of the recipe, the options and every input file is kept beside the image
    (C(DEST.build.json)); when it matches and the image is intact, nothing is built.
  - The image is built in a scratch directory beside O(dest) and renamed into place; a failed build leaves
    O(dest) as it was.
author: sciops.fleet maintainers (@sciops)
extends_documentation_fragment:
  - sciops.fleet.attributes
attributes:
  check_mode:
    support: full
    details: Validates the recipe and digests the inputs; says whether a build would happen; builds nothing.
  diff_mode:
    support: full
    details: Shows the image digest before and after (after is unknown in check mode).
  idempotent:
    support: full
    details: Builds only when the recipe, the options or an input file changed, or the image is damaged or gone.
options:
  recipe:
    description:
      - The recipe file (YAML or JSON) on the build host. Paths in it are relative to its directory.
    type: path
    required: true
  dest:
    description:
      - The image to write, a file for C(squashfs) and C(tar.zst), a directory for C(directory). Its directory must exist.
    type: path
    required: true
  format:
    description:
      - The image format. C(squashfs) needs C(mksquashfs) (squashfs-tools), C(tar.zst) needs C(zstd).
    type: str
    default: squashfs
    choices: [squashfs, tar.zst, directory]
  compression:
    description:
      - The squashfs compressor. C(zstd) is fast to read and compresses well; C(xz) is smaller and slower.
    type: str
    default: zstd
    choices: [zstd, gzip, xz, lz4, lzo]
  compression_level:
    description:
      - The compressor's level (squashfs C(-Xcompression-level); the C(zstd) level of C(tar.zst), default 19).
      - Unset, mksquashfs uses its own default.
    type: int
  block_size:
    description:
      - The squashfs block size, a power of two from 4K to 1M, as bytes or with K or M.
    type: str
    default: 1M
  source_date_epoch:
    description:
      - The time of every file and of the provenance, in seconds since 1970. Overrides the recipe's.
    type: int
  processors:
    description:
      - How many processors mksquashfs uses (default all). The image is the same whatever this is.
    type: int
  force:
    description:
      - Build even when the image is up to date.
    type: bool
    default: false
  export_meta:
    description:
      - A directory on the build host to copy the image's C(env.json), C(manifest.json) and C(provenance.json) into,
        for attaching them to the pushed image. Created when missing. Not done in check mode.
    type: path
requirements:
  - mksquashfs (squashfs-tools) for C(squashfs); zstd for C(tar.zst); ldd and patchelf for C(tree.closure); the
    recipe's Python for C(venv); spack for C(spack).
notes:
  - A C(venv) image uses the build host's interpreter (C(venv.python), default C(/usr/bin/python3)) through a link;
    a node needs the same Python at the same path.
  - Pin requirements (C(name==version)); the inputs digest covers the recipe and local files, not what an index serves.
seealso:
  - module: sciops.fleet.oras_push
  - module: sciops.fleet.oras_attach
  - module: sciops.fleet.release_install
"""

EXAMPLES = r"""
---
- name: Build the greeter environment with its libraries
  sciops.fleet.env_build:
    recipe: envs/greeter/recipe.yaml
    dest: /srv/build/greeter-1.0.0.squashfs

- name: Build a Python tool, xz-compressed with 256K blocks
  sciops.fleet.env_build:
    recipe: envs/cowsay/recipe.yaml
    dest: /srv/build/cowsay.squashfs
    compression: xz
    block_size: 256K
    source_date_epoch: 1700000000
  register: built

- name: Show the digest
  ansible.builtin.debug:
    msg: "{{ built.sha256 }}"
"""

RETURN = r"""
path:
  description: The image.
  returned: always
  type: str
  sample: /srv/build/greeter-1.0.0.squashfs
format:
  description: The image format.
  returned: always
  type: str
  sample: squashfs
sha256:
  description:
    - C(sha256:...) of the image file (of C(meta/manifest.json) for a directory image). None in check mode when a build
      would happen.
  returned: always
  type: str
  sample: sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
size:
  description: Bytes of the image (of its files for a directory image).
  returned: always
  type: int
  sample: 4096000
name:
  description: The environment's name.
  returned: always
  type: str
  sample: greeter
version:
  description: The environment's version.
  returned: always
  type: str
  sample: 1.0.0
mount:
  description: The environment's mount point.
  returned: always
  type: str
  sample: /opt/envs/greeter
meta:
  description: The content of C(meta/env.json).
  returned: always
  type: dict
  sample: {"name": "greeter", "version": "1.0.0", "mount": "/opt/envs/greeter", "description": "", "views": {}}
recipe_digest:
  description: C(sha256:...) of the recipe's canonical form.
  returned: always
  type: str
  sample: sha256:0d2b5d8c6c1e4f1e2a0c4b7d8e9f00112233445566778899aabbccddeeff0011
inputs_digest:
  description: C(sha256:...) of everything the image depends on; equal digests give equal images.
  returned: always
  type: str
  sample: sha256:9a0364b9e99bb480dd25e1f0284c8555c2e2f5d7e8c9c0a1b2c3d4e5f6a7b8c9
files:
  description: How many entries the image's manifest lists.
  returned: when the image exists
  type: int
  sample: 12
libraries:
  description: The shared libraries copied in by the C(tree) backend's closure.
  returned: when the image exists
  type: list
  elements: str
  sample: [libgreet.so.1]
tools:
  description: The versions of the tools the build used, as recorded in C(meta/provenance.json).
  returned: when the image exists
  type: dict
  sample: {"mksquashfs": "mksquashfs version 4.5.1 (2022/03/17)", "patchelf": "patchelf 0.14.3"}
exported:
  description: The files written by O(export_meta), by kind (C(env), C(manifest), C(provenance)).
  returned: when O(export_meta) is given, outside check mode
  type: dict
  sample: {"env": "/srv/build/meta/env.json", "manifest": "/srv/build/meta/manifest.json"}
seconds:
  description: How long the module took.
  returned: when the image exists
  type: float
  sample: 2.5
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError
from ansible_collections.sciops.fleet.plugins.module_utils._common.module import fail_from
from ansible_collections.sciops.fleet.plugins.module_utils._env.build import build
from ansible_collections.sciops.fleet.plugins.module_utils._env.metadata import export_meta

ARGUMENT_SPEC = {
    "recipe": {"type": "path", "required": True},
    "dest": {"type": "path", "required": True},
    "format": {"type": "str", "default": "squashfs", "choices": ["squashfs", "tar.zst", "directory"]},
    "compression": {"type": "str", "default": "zstd", "choices": ["zstd", "gzip", "xz", "lz4", "lzo"]},
    "compression_level": {"type": "int"},
    "block_size": {"type": "str", "default": "1M"},
    "source_date_epoch": {"type": "int"},
    "processors": {"type": "int"},
    "force": {"type": "bool", "default": False},
    "export_meta": {"type": "path"},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        result = build(params["recipe"], params["dest"], image_format=params["format"], compression=params["compression"],
                       level=params["compression_level"], block_size=params["block_size"],
                       source_date_epoch=params["source_date_epoch"], processors=params["processors"],
                       force=params["force"], check_mode=module.check_mode)
        if params["export_meta"] and not module.check_mode:
            result["exported"] = export_meta(result["path"], result["format"], params["export_meta"])
    except FleetError as exc:
        fail_from(module, exc, recipe=params["recipe"], dest=params["dest"])
    before = result.pop("before_sha256", None)
    if module._diff:  # pylint: disable=protected-access
        result["diff"] = {"before": {"sha256": before if result["changed"] else result["sha256"]},
                          "after": {"sha256": result["sha256"]}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
