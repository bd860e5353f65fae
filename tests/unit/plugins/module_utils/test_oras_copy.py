# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy, attach, discover and describe between OCI image layouts (the registry cases are integration tests)."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    encode_json,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import describe_file, push_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._oras.copy import ArtifactCopy, copy_artifact
from ansible_collections.sciops.fleet.plugins.module_utils._oras.info import describe_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oras.referrers import (
    annotation_strings,
    attach,
    decode_content,
    discover,
    referrer_graph,
    referrers_mechanism,
)
from ansible_collections.sciops.fleet.tests.unit.plugins.module_utils.oci_fake_registry import FakeRegistry

META_TYPE = "application/vnd.sciops.build-meta.v1+json"
RESULT_TYPE = "application/vnd.sciops.test-result.v1+json"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def build(tmp_path):
    """A layout holding an artifact tagged 1.0 with a metadata and a test-result referrer."""
    store = LayoutStore(str(tmp_path / "build"), create=True)
    image = describe_file(write(tmp_path / "in" / "env.sqfs", "squashfs bytes\n" * 500))
    pushed = push_artifact(store, None, ["1.0"], [image], artifact_type="application/vnd.sciops.env.v1")
    subject = Descriptor(OCI_MANIFEST, pushed["digest"], pushed["size"])
    meta = attach(store, None, subject, [describe_file(write(tmp_path / "in" / "env.json", '{"name": "env"}'),
                                                       record_mode=False)], META_TYPE)
    result = attach(store, None, subject, [describe_file(write(tmp_path / "in" / "result.json", '{"result": "pass"}'),
                                                         record_mode=False)], RESULT_TYPE, annotations={"io.sciops.run": "7"})
    return store, pushed["digest"], meta["digest"], result["digest"]


def copier_to(tmp_path, store, name="deploy"):
    return ArtifactCopy(store, None, LayoutStore(str(tmp_path / name), create=True), None)


def test_recursive_copy_carries_the_referrers_and_repeats_as_no_change(tmp_path, build):
    store, digest, meta, result = build
    copier = copier_to(tmp_path, store)
    outcome = copy_artifact(copier, "1.0", ["1.0", "stable"], recursive=True)
    assert outcome["changed"] and outcome["digest"] == digest and outcome["moved"] == ["1.0", "stable"]
    assert {r["digest"] for r in outcome["referrers"] if r["copied"]} == {meta, result}
    assert outcome["counts"]["blobs_copied"] == 4  # the image, the empty config, two referrer files
    deploy = copier.destination
    assert deploy.resolve(None, "stable").digest == digest
    assert {d.digest for d in deploy.referrers(None, digest)} == {meta, result}

    again = copy_artifact(copier_to(tmp_path, store), "1.0", ["1.0", "stable"], recursive=True)
    assert not again["changed"] and again["moved"] == [] and again["counts"]["blobs_copied"] == 0
    assert again["counts"]["manifests_copied"] == 0


def test_check_mode_predicts_and_writes_nothing(tmp_path, build):
    store, _digest, _meta, _result = build
    copier = copier_to(tmp_path, store)
    outcome = copy_artifact(copier, "1.0", ["stable"], recursive=True, check_mode=True)
    assert outcome["changed"] and outcome["before"] == {"stable": None}
    assert sum(r["copied"] for r in outcome["referrers"]) == 2
    assert copier.destination.list_tags(None) == [] and not os.path.isdir(tmp_path / "deploy" / "blobs")
    assert copier.destination.stats["blobs_uploaded"] == copier.destination.stats["manifests_uploaded"] == 0


def test_a_missing_referrer_alone_makes_a_change(tmp_path, build):
    store, digest, _meta, _result = build
    copy_artifact(copier_to(tmp_path, store), "1.0", ["1.0"])
    outcome = copy_artifact(copier_to(tmp_path, store), "1.0", ["1.0"], recursive=True)
    assert outcome["changed"] and outcome["moved"] == []
    assert outcome["counts"]["blobs_copied"] == 2  # only the two referrer files: the image was there
    assert len(LayoutStore(str(tmp_path / "deploy")).referrers(None, digest)) == 2


def test_retag_within_one_layout_transfers_nothing(build):
    store, digest, _meta, _result = build
    before = dict(store.stats)
    outcome = copy_artifact(ArtifactCopy(store, None, store, None), "1.0", ["stable"], recursive=True)
    assert outcome["changed"] and outcome["moved"] == ["stable"] and not any(r["copied"] for r in outcome["referrers"])
    assert outcome["counts"]["blobs_copied"] == outcome["counts"]["blobs_present"] == 0
    assert store.stats["blobs_uploaded"] == before["blobs_uploaded"]
    assert store.resolve(None, "stable").digest == digest
    assert not copy_artifact(ArtifactCopy(store, None, store, None), "1.0", ["stable"])["changed"]


def test_copy_by_digest_and_a_destination_digest_that_disagrees(tmp_path, build):
    store, digest, _meta, _result = build
    outcome = copy_artifact(copier_to(tmp_path, store), digest, [])
    assert outcome["changed"] and outcome["before"] == {digest: None}
    deploy = LayoutStore(str(tmp_path / "deploy"))
    assert deploy.resolve(None, digest).digest == digest and deploy.list_tags(None) == []
    assert not copy_artifact(copier_to(tmp_path, store), digest, [])["changed"]
    with pytest.raises(OciError, match="not to the digest"):
        copy_artifact(copier_to(tmp_path, store), "1.0", [], expected_digest=digest_bytes(b"other"))


def test_an_index_is_copied_with_its_child_manifests(tmp_path):
    store = LayoutStore(str(tmp_path / "src"), create=True)
    children = []
    for arch in ("amd64", "arm64"):
        pushed = push_artifact(store, None, [], [describe_file(write(tmp_path / arch / "app", arch * 100))])
        children.append({"mediaType": OCI_MANIFEST, "digest": pushed["digest"], "size": pushed["size"],
                         "platform": {"architecture": arch, "os": "linux"}})
    index = encode_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    store.put_manifest(None, "multi", index, OCI_INDEX)
    outcome = copy_artifact(copier_to(tmp_path, store), "multi", ["multi"])
    assert outcome["media_type"] == OCI_INDEX and outcome["counts"]["manifests_copied"] == 3
    deploy = LayoutStore(str(tmp_path / "deploy"))
    info = describe_reference(deploy, None, "multi")
    assert [m["platform"]["architecture"] for m in info["manifests"]] == ["amd64", "arm64"]
    for child in children:
        manifest = describe_reference(deploy, None, child["digest"])
        assert all(deploy.blob_exists(None, layer["digest"]) for layer in manifest["layers"])


def test_attach_is_idempotent_and_relists_a_referrer_that_lost_its_entry(tmp_path, build):
    store, digest, _meta, result = build
    subject = store.resolve(None, "1.0")
    again = attach(store, None, subject, [describe_file(str(tmp_path / "in" / "result.json"), record_mode=False)],
                   RESULT_TYPE, annotations={"io.sciops.run": "7"})
    assert not again["changed"] and again["digest"] == result
    assert len(store.referrers(None, digest, RESULT_TYPE)) == 1
    # index.json loses the referrer's entry (a hand edit): attaching again lists it again
    index_path = tmp_path / "build" / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"] = [m for m in index["manifests"] if m["digest"] != result]
    index_path.write_text(json.dumps(index))
    assert store.referrers(None, digest, RESULT_TYPE) == []
    repaired = attach(store, None, subject, [describe_file(str(tmp_path / "in" / "result.json"), record_mode=False)],
                      RESULT_TYPE, annotations={"io.sciops.run": "7"})
    assert repaired["changed"] and [d.digest for d in store.referrers(None, digest, RESULT_TYPE)] == [result]


def test_discover_filters_and_decodes_content(tmp_path, build):
    store, digest, meta, result = build
    assert {r["digest"] for r in discover(store, None, digest)} == {meta, result}
    assert [r["digest"] for r in discover(store, None, digest, artifact_type=META_TYPE)] == [meta]
    assert [r["digest"] for r in discover(store, None, digest, annotations={"io.sciops.run": 7})] == [result]
    assert discover(store, None, digest, annotations={"io.sciops.run": "8"}) == []
    [found] = discover(store, None, digest, artifact_type=RESULT_TYPE, fetch_content=True)
    assert found["content"] == {"result.json": {"result": "pass"}}
    assert found["files"][0]["fetched"] and found["annotations"] == {"io.sciops.run": "7"}
    [small] = discover(store, None, digest, artifact_type=RESULT_TYPE, fetch_content=True, max_content_size=5)
    assert small["content"] == {} and small["files"][0]["fetched"] is False


def test_referrer_graph_follows_referrers_of_referrers(tmp_path, build):
    store, digest, meta, _result = build
    signature = attach(store, None, store.resolve(None, meta),
                       [describe_file(write(tmp_path / "in" / "sig", "signed"), record_mode=False)], "application/vnd.sig")
    graph = referrer_graph(store, None, digest)
    assert (meta, signature["digest"]) in [(subject, d.digest) for subject, d in graph]
    outcome = copy_artifact(copier_to(tmp_path, store), "1.0", ["1.0"], recursive=True)
    assert sum(r["copied"] for r in outcome["referrers"]) == 3
    assert [d.digest for d in LayoutStore(str(tmp_path / "deploy")).referrers(None, meta)] == [signature["digest"]]


def test_decoding_and_annotation_strings():
    assert decode_content(b'{"a": 1}') == {"a": 1}
    assert decode_content(b"plain text\n") == "plain text\n"
    assert decode_content(b"\xff\xfe\x00") is None
    assert annotation_strings({"a": True, "b": 42, "c": "x", "d": [1]}) == {"a": "true", "b": "42", "c": "x", "d": "[1]"}
    assert annotation_strings(None) == {}


def test_describe_reference_reads_a_json_config(tmp_path):
    store = LayoutStore(str(tmp_path / "l"), create=True)
    config = write(tmp_path / "config.json", '{"version": "1.4.0"}')
    pushed = push_artifact(store, None, ["1.4.0"], [describe_file(write(tmp_path / "f", "x"))], config_path=config,
                           config_media_type="application/vnd.sciops.release.config.v1+json")
    info = describe_reference(store, None, "1.4.0")
    assert info["digest"] == pushed["digest"] and info["config"] == {"version": "1.4.0"}
    assert info["artifact_type"] == "application/vnd.sciops.release.config.v1+json"
    assert [layer["name"] for layer in info["layers"]] == ["f"] and info["subject"] is None


def test_a_registry_with_the_referrers_api(tmp_path, build):
    store, digest, meta, result = build
    with FakeRegistry(referrers_api=True) as reg:
        client = RegistryClient(reg.host, plain_http=True, retries=0)
        outcome = copy_artifact(ArtifactCopy(store, None, client, "build/env"), "1.0", ["1.0"], recursive=True)
        assert outcome["counts"]["blobs_copied"] == 4 and sum(r["copied"] for r in outcome["referrers"]) == 2
        assert not reg.seen("GET", f"/manifests/sha256-{digest.split(':')[1]}")  # no tag schema index was needed
        # The API lists referrers without their annotations: the filter reads each manifest's own.
        found = discover(client, "build/env", digest, annotations={"io.sciops.run": "7"})
        assert [r["digest"] for r in found] == [result] and referrers_mechanism(client) == "api"

        uploads = len(reg.seen("PUT", "/blobs/uploads"))
        promoted = copy_artifact(ArtifactCopy(client, "build/env", client, "deploy/env"), "1.0", ["stable"],
                                 recursive=True)
        # This fake keeps blobs registry-wide, so they count as present; the real registry mounts them (integration).
        assert promoted["counts"]["blobs_copied"] == 0 and len(reg.seen("PUT", "/blobs/uploads")) == uploads
        assert {d.digest for d in client.referrers("deploy/env", digest)} == {meta, result}
        assert not copy_artifact(ArtifactCopy(client, "build/env", client, "deploy/env"), "1.0", ["stable"],
                                 recursive=True)["changed"]


def test_a_layout_missing_a_blob_fails_naming_it(tmp_path, build):
    store, digest, _meta, _result = build
    layer = describe_reference(store, None, digest)["layers"][0]["digest"]
    os.unlink(store.blob_path(layer))
    with pytest.raises(OciError, match=f"blob oci-layout:.*@{layer} not found"):
        copy_artifact(copier_to(tmp_path, store), "1.0", ["1.0"])
