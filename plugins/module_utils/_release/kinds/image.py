# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What the two environment image kinds (``mount``, ``unpack``) share: one image per artifact (squashfs or tar, from
sciops.fleet.env_build), kept under ``.images/`` in the release or unpacked into ``<artifact>/``; its
``mount_point`` (``takes_mount_point``) is linked by the table's ``activate``, for every kind alike."""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.command import check_output
from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import CommandError
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.base import Artifact, InstallKind, Placement
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.machine_image import detect_format, extract_image
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.errors import UnitError

IMAGES_DIR = ".images"


def _run(argv: List[str], what: str) -> str:
    try:
        return check_output(argv, what)
    except CommandError as exc:
        raise NodeError(str(exc)) from None


class ImageKind(InstallKind):
    """An environment image: placed once, mounted or unpacked as the subclass says."""

    takes_mount_point = True

    def mounts(self, image_format: str) -> bool:
        """Whether an image of IMAGE_FORMAT is mounted (else it is unpacked)."""
        return False

    def mount_entry(self, job: Placement, artifact: Artifact, kept: str) -> Dict[str, str]:
        """The mounts record entry of an image kept at KEPT (subclasses that mount)."""
        raise NotImplementedError

    def place(self, job: Placement, artifact: Artifact, pulled: List[Dict[str, Any]], where: str) -> None:
        images = [f for f in pulled if not f["name"].endswith((".json", ".txt"))]
        if len(images) != 1:
            raise NodeError(f"artifact {artifact['name']} ({where}) must hold exactly one environment image "
                            f"(squashfs or tar archive); it holds {', '.join(f['name'] for f in pulled) or 'nothing'}")
        image = images[0]["path"]
        try:
            image_format = detect_format(image)
        except UnitError as exc:
            raise NodeError(f"artifact {artifact['name']} ({where}): {exc}") from None
        dest = job.dest(artifact)
        holding = os.path.join(job.staging, IMAGES_DIR)
        os.makedirs(holding, exist_ok=True)
        kept = os.path.join(holding, f"{artifact['name']}.{'squashfs' if image_format == 'squashfs' else 'tar'}")
        os.rename(image, kept)
        for item in pulled:  # metadata pulled beside the image stays out of the mount point
            if item is not images[0] and os.path.exists(item["path"]):
                os.rename(item["path"], os.path.join(holding, f"{artifact['name']}.{item['name'].replace('/', '_')}"))
        if self.mounts(image_format):
            job.mounts.append(self.mount_entry(job, artifact, kept))
            return
        try:
            extract_image(kept, image_format, dest, _run, shutil.which, job.staging)
        except UnitError as exc:
            raise NodeError(f"artifact {artifact['name']} ({where}): {exc}") from None
        if not os.path.isdir(dest):
            os.makedirs(dest)
        os.unlink(kept)
