# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The OCI client against the real registry (Debian's docker-registry, CNCF distribution 2.8) and oras-py.

Findings these tests pin down: distribution 2.8 has no referrers API (GET /v2/<repo>/referrers/<digest>
answers 404), so referrers live in the ``sha256-<hex>`` tag schema index; a cross-repository mount of a
blob the source repository has answers 201, of one it lacks 202 (an ordinary upload session, which the
client cancels); a Range request on a blob answers 206.
"""

from __future__ import annotations

import base64
import json
import os
import re

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import AuthError, NotFoundError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import referrers_tag
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    build_manifest,
    manifest_children,
    parse_manifest,
)

pytestmark = pytest.mark.registry

PAYLOAD = os.urandom(1024 * 1024 + 17)


def client_for(reg, **kwargs):
    return RegistryClient(reg.host, plain_http=True, retries=2, backoff=0.05, timeout=30, **kwargs)


def log_lines(reg, method, fragment):
    """The access-log lines of METHOD requests whose path contains FRAGMENT, as (path, status)."""
    found = []
    for line in reg.access_log():
        match = re.search(r'"(\w+) (\S+) HTTP/1\.\d" (\d{3})', line)
        if match and match.group(1) == method and fragment in match.group(2):
            found.append((match.group(2), int(match.group(3))))
    return found


def push_artifact(client, repo, tag, payload=PAYLOAD, title="image.sqfs", subject=None, artifact_type=None):
    digest = digest_bytes(payload)
    client.push_blob(repo, payload, digest, len(payload))
    client.push_blob(repo, EMPTY_JSON, digest_bytes(EMPTY_JSON), len(EMPTY_JSON))
    layer = Descriptor("application/octet-stream", digest, len(payload), {"org.opencontainers.image.title": title})
    manifest = build_manifest([layer], subject=subject, artifact_type=artifact_type)
    return client.put_manifest(repo, tag or digest_bytes(manifest), manifest, OCI_MANIFEST), manifest, layer


def test_chunked_push_resolve_tags_and_verified_pull(registry, tmp_path):
    client = client_for(registry, chunk_size=256 * 1024)
    digest, manifest, layer = push_artifact(client, "it/chunked", "1.0")
    assert len(log_lines(registry, "PATCH", "/v2/it/chunked/blobs/uploads/")) == 5
    resolved = client.resolve("it/chunked", "1.0")
    assert (resolved.digest, resolved.media_type, resolved.size) == (digest, OCI_MANIFEST, len(manifest))
    assert client.list_tags("it/chunked") == ["1.0"]
    path = client.fetch_blob_to("it/chunked", layer, str(tmp_path), layer.title)
    assert digest_file(path) == (layer.digest, layer.size)
    assert client.stats["blobs_uploaded"] == 2 and client.stats["blobs_downloaded"] == 1


def test_partial_download_is_resumed_with_a_206(registry, tmp_path):
    client = client_for(registry)
    _digest, _manifest, layer = push_artifact(client, "it/resume", "1.0")
    with open(tmp_path / f".{layer.digest.split(':')[1]}.partial", "wb") as handle:
        handle.write(PAYLOAD[:400_000])
    client.fetch_blob_to("it/resume", layer, str(tmp_path), layer.title)
    assert digest_file(str(tmp_path / layer.title))[0] == layer.digest
    assert client.stats["bytes_downloaded"] == len(PAYLOAD) - 400_000 and client.stats["resumed"] == 1
    assert log_lines(registry, "GET", f"/v2/it/resume/blobs/{layer.digest}")[-1][1] == 206


def test_referrers_use_the_tag_schema_because_the_api_answers_404(registry):
    client = client_for(registry)
    subject_digest, subject, _layer = push_artifact(client, "it/referrers", "1.0")
    subject_descriptor = Descriptor(OCI_MANIFEST, subject_digest, len(subject))
    meta, _m, _l = push_artifact(client, "it/referrers", None, b'{"build": 1}', "meta.json", subject_descriptor,
                                 "application/vnd.sciops.meta")
    push_artifact(client, "it/referrers", None, b'{"build": 1}', "meta.json", subject_descriptor, "application/vnd.sciops.meta")
    found = client.referrers("it/referrers", subject_digest)
    assert [(d.digest, d.artifact_type) for d in found] == [(meta, "application/vnd.sciops.meta")]
    assert log_lines(registry, "GET", f"/v2/it/referrers/referrers/{subject_digest}") == [
        (f"/v2/it/referrers/referrers/{subject_digest}", 404)]
    assert sorted(client.list_tags("it/referrers")) == sorted(["1.0", referrers_tag(subject_digest)])
    _data, _digest, media_type = client.get_manifest("it/referrers", referrers_tag(subject_digest))
    assert media_type == OCI_INDEX


def test_cross_repository_mount_answers_201_or_202(registry):
    client = client_for(registry)
    _digest, _manifest, layer = push_artifact(client, "it/build", "1.0")
    assert client.mount_blob("it/deploy", layer.digest, "it/build") is True
    assert client.blob_exists("it/deploy", layer.digest)
    assert client.mount_blob("it/deploy", digest_bytes(b"never pushed"), "it/build") is False
    statuses = [status for _path, status in log_lines(registry, "POST", "/v2/it/deploy/blobs/uploads/?mount=")]
    assert statuses == [201, 202]
    assert log_lines(registry, "DELETE", "/v2/it/deploy/blobs/uploads/")[-1][1] == 204


def test_promotion_moves_a_tag_and_delete_removes_the_manifest(registry):
    client = client_for(registry)
    digest, _manifest, _layer = push_artifact(client, "it/promote", "1.0")
    uploads_before = len(log_lines(registry, "POST", "/v2/it/promote/blobs/uploads/"))
    assert client.tag("it/promote", "1.0", "stable") is True
    assert client.tag("it/promote", "1.0", "stable") is False
    assert client.resolve("it/promote", "stable").digest == digest
    assert len(log_lines(registry, "POST", "/v2/it/promote/blobs/uploads/")) == uploads_before
    client.delete_manifest("it/promote", digest)
    with pytest.raises(NotFoundError):
        client.resolve("it/promote", "1.0")


def test_basic_auth_with_explicit_and_docker_config_credentials(auth_registry, tmp_path):
    good = client_for(auth_registry, username=auth_registry.username, password=auth_registry.password)
    push_artifact(good, "it/auth", "1.0", payload=b"secret data")
    assert good.list_tags("it/auth") == ["1.0"]

    auth = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": auth}}}))
    assert client_for(auth_registry, docker_config=str(tmp_path)).list_tags("it/auth") == ["1.0"]

    wrong = client_for(auth_registry, username=auth_registry.username, password="not-" + auth_registry.password)
    with pytest.raises(AuthError, match="refused the credentials") as info:
        wrong.list_tags("it/auth")
    assert auth_registry.password not in str(info.value)


def test_we_pull_what_oras_py_pushes(registry, tmp_path, monkeypatch):
    oras_client = pytest.importorskip("oras.client")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello.txt").write_text("hello from oras-py\n")
    oras_client.OrasClient(hostname=registry.host, insecure=True).push(target=f"{registry.host}/it/oras-a:v1", files=["hello.txt"])
    client = client_for(registry)
    data, _digest, _media_type = client.get_manifest("it/oras-a", "v1")
    layers = [d for d in manifest_children(parse_manifest(data)) if d.title]
    assert [d.title for d in layers] == ["hello.txt"]
    path = client.fetch_blob_to("it/oras-a", layers[0], str(tmp_path / "out"), layers[0].title)
    assert open(path, encoding="utf-8").read() == "hello from oras-py\n"


def test_oras_py_pulls_what_we_push(registry, tmp_path):
    oras_client = pytest.importorskip("oras.client")
    push_artifact(client_for(registry), "it/oras-b", "v1", payload=b"hello from sciops.fleet\n", title="sciops.txt")
    files = oras_client.OrasClient(hostname=registry.host, insecure=True).pull(
        target=f"{registry.host}/it/oras-b:v1", outdir=str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["sciops.txt"]
    assert (tmp_path / "sciops.txt").read_bytes() == b"hello from sciops.fleet\n"
