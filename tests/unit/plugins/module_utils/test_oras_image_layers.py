# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pulling a container image's untitled layers from an OCI image layout, by position and verified."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import OCI_MANIFEST, Descriptor, build_manifest
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import pull_artifact

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'


def gzip_layer(name, data):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def push_image(store, tag, layers):
    """Push an image manifest of LAYERS ((media type, bytes, annotations)) and its config; returns the descriptors."""
    descriptors = []
    for media_type, data, annotations in layers:
        digest = digest_bytes(data)
        store.push_blob(None, data, digest, len(data))
        descriptors.append(Descriptor(media_type, digest, len(data), annotations))
    store.push_blob(None, CONFIG, digest_bytes(CONFIG), len(CONFIG))
    config = Descriptor("application/vnd.oci.image.config.v1+json", digest_bytes(CONFIG), len(CONFIG))
    manifest = build_manifest(descriptors, config=config)
    store.put_manifest(None, tag, manifest, OCI_MANIFEST)
    return descriptors


@pytest.fixture
def image(tmp_path):
    """A layout holding image:1, two untitled gzip layers with a titled file between them."""
    store = LayoutStore(str(tmp_path / "layout"), create=True)
    descriptors = push_image(store, "1", [
        (GZIP_LAYER, gzip_layer("etc/os-release", b"ID=base\n"), None),
        ("text/plain", b"notes\n", {"org.opencontainers.image.title": "NOTES"}),
        (GZIP_LAYER, gzip_layer("etc/motd", b"hello\n"), None),
    ])
    return store, descriptors


def test_layers_are_pulled_by_position_verified_and_in_order(image, tmp_path):
    store, descriptors = image
    dest = str(tmp_path / "dest")
    result = pull_artifact(store, None, "1", dest, "image:1", cache=BlobCache(str(tmp_path / "cache")), layers=True)
    assert [(item["name"], item.get("layer"), item.get("media_type")) for item in result["files"]] == [
        (".layers/0000", 0, GZIP_LAYER), ("NOTES", None, None), (".layers/0002", 2, GZIP_LAYER)]
    assert result["skipped"] == [] and result["changed"] is True
    for item, descriptor in zip(result["files"], descriptors):
        assert item["path"] == os.path.join(dest, item["name"])
        assert digest_file(item["path"]) == (descriptor.digest, descriptor.size) == (item["digest"], item["size"])
    assert sorted(os.listdir(os.path.join(dest, ".layers"))) == ["0000", "0002"]
    again = pull_artifact(store, None, "1", dest, "image:1", layers=True)
    assert again["changed"] is False and {item["state"] for item in again["files"]} == {"present"}


def test_without_layers_untitled_layers_are_still_skipped(image, tmp_path):
    store, descriptors = image
    result = pull_artifact(store, None, "1", str(tmp_path / "dest"), "image:1")
    assert [item["name"] for item in result["files"]] == ["NOTES"] and "layer" not in result["files"][0]
    assert result["skipped"] == [descriptors[0].digest, descriptors[2].digest]
    assert os.listdir(tmp_path / "dest") == ["NOTES"]


@pytest.mark.parametrize("media_type, kind", [
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "a non-distributable"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "a non-distributable"),
    ("application/octet-stream", "not an image layer"),
])
def test_an_untitled_layer_that_is_no_image_layer_is_refused(tmp_path, media_type, kind):
    store = LayoutStore(str(tmp_path / "layout"), create=True)
    descriptors = push_image(store, "1", [(GZIP_LAYER, gzip_layer("a", b"a"), None), (media_type, gzip_layer("b", b"b"), None)])
    with pytest.raises(OciError, match=re.escape(f"image:1, layer 1 ({descriptors[1].digest}) has media type '{media_type}': {kind}")):
        pull_artifact(store, None, "1", str(tmp_path / "dest"), "image:1", layers=True)
    assert not os.path.exists(tmp_path / "dest" / ".layers" / "0000")


def test_a_title_cannot_take_the_name_of_a_layer(tmp_path):
    store = LayoutStore(str(tmp_path / "layout"), create=True)
    push_image(store, "1", [(GZIP_LAYER, gzip_layer("a", b"a"), None),
                            ("text/plain", b"x", {"org.opencontainers.image.title": ".layers/0000"})])
    with pytest.raises(OciError, match="'.layers/0000' twice"):
        pull_artifact(store, None, "1", str(tmp_path / "dest"), "image:1", layers=True)
