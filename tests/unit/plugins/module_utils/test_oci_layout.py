# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An OCI image layout directory as a store: tags, manifests, blobs, referrers, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import DigestMismatchError, NotFoundError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    EMPTY_JSON,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    build_manifest,
)

PAYLOAD = b"squashfs image bytes\n" * 1000


def push_artifact(store, tag, payload=PAYLOAD, subject=None, artifact_type=None):
    digest = digest_bytes(payload)
    store.push_blob(None, payload, digest, len(payload))
    store.push_blob(None, EMPTY_JSON, digest_bytes(EMPTY_JSON), len(EMPTY_JSON))
    layer = Descriptor("application/octet-stream", digest, len(payload), {"org.opencontainers.image.title": "image.sqfs"})
    manifest = build_manifest([layer], subject=subject, artifact_type=artifact_type)
    return store.put_manifest(None, tag or digest_bytes(manifest), manifest, OCI_MANIFEST), manifest, layer


def test_a_new_layout_follows_the_spec(tmp_path):
    LayoutStore(str(tmp_path / "l"), create=True)
    assert json.loads((tmp_path / "l" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((tmp_path / "l" / "index.json").read_text())["manifests"] == []
    with pytest.raises(NotFoundError, match="oci-layout"):
        LayoutStore(str(tmp_path / "missing"))


def test_push_resolve_pull_and_retag(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    digest, manifest, layer = push_artifact(store, "1.0")
    assert os.path.isfile(tmp_path / "l" / "blobs" / "sha256" / digest.split(":")[1])
    resolved = store.resolve(None, "1.0")
    assert (resolved.digest, resolved.media_type, resolved.size) == (digest, OCI_MANIFEST, len(manifest))
    assert store.get_manifest(None, "1.0") == (manifest, digest, OCI_MANIFEST)
    assert store.resolve(None, digest).digest == digest

    assert store.tag(None, "1.0", "stable") is True
    assert store.tag(None, "1.0", "stable") is False
    assert store.list_tags(None) == ["1.0", "stable"]
    entries = json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]
    assert sorted(e["annotations"][REF_NAME_ANNOTATION] for e in entries) == ["1.0", "stable"]

    path = store.fetch_blob_to(None, layer, str(tmp_path / "out"), "image.sqfs")
    assert digest_file(path) == (layer.digest, layer.size)
    assert store.stats["blobs_downloaded"] == 1 and store.stats["bytes_downloaded"] == layer.size


def test_moving_a_tag_replaces_its_entry(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    push_artifact(store, "stable")
    second, _manifest, _layer = push_artifact(store, "stable", payload=b"other")
    assert store.resolve(None, "stable").digest == second
    assert len(json.loads((tmp_path / "l" / "index.json").read_text())["manifests"]) == 1


def test_referrers_are_found_by_their_subject(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    digest, manifest, _layer = push_artifact(store, "1.0")
    subject = Descriptor(OCI_MANIFEST, digest, len(manifest))
    meta, _m, _l = push_artifact(store, None, payload=b'{"meta": 1}', subject=subject, artifact_type="application/vnd.sciops.meta")
    tests, _m, _l = push_artifact(store, None, payload=b"<junit/>", subject=subject, artifact_type="application/vnd.sciops.tests")
    push_artifact(store, None, payload=b'{"meta": 1}', subject=subject, artifact_type="application/vnd.sciops.meta")
    found = store.referrers(None, digest)
    assert sorted(d.digest for d in found) == sorted([meta, tests])
    assert [d.digest for d in store.referrers(None, digest, "application/vnd.sciops.tests")] == [tests]
    assert store.referrers(None, meta) == []
    assert store.list_tags(None) == ["1.0"]


def test_corrupt_blob_is_never_placed(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    _digest, _manifest, layer = push_artifact(store, "1.0")
    blob = tmp_path / "l" / "blobs" / "sha256" / layer.digest.split(":")[1]
    blob.write_bytes(PAYLOAD[:-1] + b"!")
    with pytest.raises(DigestMismatchError):
        store.fetch_blob_to(None, layer, str(tmp_path / "out"), "image.sqfs")
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(DigestMismatchError):
        store.fetch_blob_to(None, layer, str(tmp_path / "out"), "image.sqfs", cache=BlobCache(str(tmp_path / "cache")))


def test_blob_push_from_a_file_is_verified(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    source = tmp_path / "image.sqfs"
    source.write_bytes(PAYLOAD)
    assert store.push_blob(None, str(source), digest_bytes(PAYLOAD), len(PAYLOAD)) is True
    assert store.push_blob(None, str(source), digest_bytes(PAYLOAD), len(PAYLOAD)) is False
    with pytest.raises(DigestMismatchError):
        store.push_blob(None, str(source), digest_bytes(b"else"), len(PAYLOAD))
    assert not store.blob_exists(None, digest_bytes(b"else"))


def test_delete_removes_the_entry_and_keeps_the_blob(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    digest, _manifest, _layer = push_artifact(store, "1.0")
    store.delete_manifest(None, "1.0")
    assert store.list_tags(None) == []
    assert store.blob_exists(None, digest)
    with pytest.raises(NotFoundError):
        store.resolve(None, "1.0")


def _tag_many(path, prefix):
    store = LayoutStore(path)
    for n in range(15):
        push_artifact(store, f"{prefix}{n}", payload=f"{prefix}{n}".encode())


def test_concurrent_writers_lose_no_tag(tmp_path):
    path = str(tmp_path / "l")
    LayoutStore(path, create=True)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_tag_many, args=(path, prefix)) for prefix in ("a", "b", "c")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(LayoutStore(path).list_tags(None)) == 45
    assert sorted(os.listdir(path)) == ["blobs", "index.json", "oci-layout"]
