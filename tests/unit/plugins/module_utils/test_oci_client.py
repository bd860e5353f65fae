# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""RegistryClient against an in-process fake registry: transfers, faults, retries, authentication."""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient, docker_credentials, open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache, RetryPolicy
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    OciError,
    TlsError,
    TransferError,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import referrers_tag
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    build_manifest,
)
from ansible_collections.sciops.fleet.tests.unit.plugins.module_utils.oci_fake_registry import FakeRegistry

BLOB = bytes(range(256)) * 4096  # 1 MiB, not a repeating pattern at chunk boundaries of the test
BLOB_DIGEST = digest_bytes(BLOB)


def client_for(reg, **kwargs):
    kwargs.setdefault("plain_http", True)
    kwargs.setdefault("retries", 3)
    kwargs.setdefault("backoff", 0.001)
    kwargs.setdefault("timeout", 10)
    return RegistryClient(reg.host, **kwargs)


def blob_descriptor(data=BLOB, title="data.bin"):
    return Descriptor("application/octet-stream", digest_bytes(data), len(data), {"org.opencontainers.image.title": title})


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


@pytest.fixture(name="reg")
def fixture_reg():
    with FakeRegistry() as reg:
        yield reg


# -- transfers ---------------------------------------------------------------------------------


def test_push_and_pull_round_trip_counts_what_moved(reg, tmp_path):
    client = client_for(reg)
    source = tmp_path / "data.bin"
    source.write_bytes(BLOB)
    assert client.push_blob("build/app", str(source), BLOB_DIGEST, len(BLOB)) is True
    assert client.push_blob("build/app", str(source), BLOB_DIGEST, len(BLOB)) is False
    manifest = build_manifest([blob_descriptor()])
    digest = client.put_manifest("build/app", "1.0", manifest, OCI_MANIFEST)

    resolved = client.resolve("build/app", "1.0")
    assert (resolved.digest, resolved.media_type, resolved.size) == (digest, OCI_MANIFEST, len(manifest))
    assert client.get_manifest("build/app", digest) == (manifest, digest, OCI_MANIFEST)

    dest = tmp_path / "out"
    path = client.fetch_blob_to("build/app", blob_descriptor(), str(dest), "data.bin")
    assert path == str(dest / "data.bin")
    assert digest_file(path) == (BLOB_DIGEST, len(BLOB))
    assert leftovers(dest) == []
    stats = client.stats
    assert (stats["blobs_uploaded"], stats["blobs_skipped"], stats["blobs_downloaded"]) == (1, 1, 1)
    assert stats["bytes_uploaded"] == stats["bytes_downloaded"] == len(BLOB)
    assert stats["manifests_uploaded"] == 1


def test_large_blob_goes_up_in_chunks_and_keeps_the_upload_state(reg):
    client = client_for(reg, chunk_size=300 * 1024)
    assert client.push_blob("build/app", BLOB, BLOB_DIGEST, len(BLOB)) is True
    assert reg.blobs[BLOB_DIGEST] == BLOB
    assert len(reg.seen("PATCH", "/blobs/uploads/")) == 4


def test_failed_chunk_is_resumed_from_what_the_registry_holds(reg):
    client = client_for(reg, chunk_size=300 * 1024)
    reg.fault("PATCH", "/blobs/uploads/", after=1, status=503)
    assert client.push_blob("build/app", BLOB, BLOB_DIGEST, len(BLOB)) is True
    assert reg.blobs[BLOB_DIGEST] == BLOB
    assert len(reg.seen("POST", "/blobs/uploads/")) == 1  # the same session went on
    assert len(reg.seen("GET", "/blobs/uploads/")) == 1 and len(reg.seen("PATCH", "/blobs/uploads/")) == 5
    assert client.stats["retries"] == 1 and client.stats["bytes_uploaded"] == len(BLOB)


def test_upload_of_wrong_content_is_refused_by_size_before_any_request(reg):
    client = client_for(reg)
    with pytest.raises(OciError, match="1 bytes but its descriptor says 2"):
        client.push_blob("build/app", b"x", digest_bytes(b"xy"), 2)
    assert reg.requests == []


def test_manifest_with_wrong_digest_is_rejected(reg):
    client = client_for(reg)
    good = build_manifest([blob_descriptor()])
    reg.manifests[("build/app", digest_bytes(good))] = (b'{"schemaVersion": 2, "tampered": true}', OCI_MANIFEST)
    with pytest.raises(DigestMismatchError):
        client.get_manifest("build/app", digest_bytes(good))


def test_missing_manifest_names_the_reference(reg):
    with pytest.raises(NotFoundError, match=rf"{reg.host}/build/app:nope"):
        client_for(reg).resolve("build/app", "nope")


# -- download faults ---------------------------------------------------------------------------


def test_connection_dropped_mid_blob_is_resumed_with_range(reg, tmp_path):
    reg.add_blob(BLOB)
    reg.fault("GET", "/blobs/", drop_after=300_000)
    client = client_for(reg)
    path = client.fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    assert digest_file(path) == (BLOB_DIGEST, len(BLOB))
    ranges = [headers.get("Range") for _m, _p, headers in reg.seen("GET", "/blobs/")]
    assert ranges == [None, "bytes=300000-"]
    assert client.stats["resumed"] == 1 and client.stats["retries"] == 1
    assert client.stats["bytes_downloaded"] == len(BLOB)
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(reg, tmp_path):
    reg.add_blob(BLOB)
    reg.ignore_range = True
    reg.fault("GET", "/blobs/", drop_after=300_000)
    client = client_for(reg)
    path = client.fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    assert digest_file(path) == (BLOB_DIGEST, len(BLOB))
    assert client.stats["resumed"] == 0
    assert client.stats["bytes_downloaded"] == 300_000 + len(BLOB)


def test_wrong_bytes_leave_no_file_and_raise(reg, tmp_path):
    reg.add_blob(BLOB)
    reg.fault("GET", "/blobs/", corrupt=True)
    with pytest.raises(DigestMismatchError, match=BLOB_DIGEST):
        client_for(reg).fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    assert os.listdir(tmp_path) == []


def test_interrupted_download_is_resumed_by_a_later_run(reg, tmp_path):
    reg.add_blob(BLOB)
    reg.fault("GET", "/blobs/", times=2, drop_after=100_000)
    with pytest.raises(TransferError, match="next attempt resumes"):
        client_for(reg, retries=1).fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    partial = tmp_path / f".{BLOB_DIGEST.split(':')[1]}.partial"
    # Two attempts, each cut after 100 000 bytes, the second resuming the first.
    assert partial.stat().st_size == 200_000 and not (tmp_path / "data.bin").exists()

    later = client_for(reg)
    later.fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    assert digest_file(str(tmp_path / "data.bin"))[0] == BLOB_DIGEST
    assert later.stats["bytes_downloaded"] == len(BLOB) - 200_000
    assert leftovers(tmp_path) == []


def test_missing_blob_leaves_nothing_behind(reg, tmp_path):
    with pytest.raises(NotFoundError, match=rf"blob {reg.host}/build/app@{BLOB_DIGEST} not found"):
        client_for(reg).fetch_blob_to("build/app", blob_descriptor(), str(tmp_path), "data.bin")
    assert os.listdir(tmp_path) == []


def test_redirected_blob_download_does_not_carry_credentials(tmp_path):
    with FakeRegistry(auth=("basic", "alice", "s3cret")) as reg:
        reg.add_blob(BLOB)
        reg.redirect_blobs = True
        client_for(reg, username="alice", password="s3cret").fetch_blob_to("r/app", blob_descriptor(), str(tmp_path), "f")
        storage = reg.seen("GET", "/storage/")
        assert len(storage) == 1 and "Authorization" not in storage[0][2]


def test_cache_hit_transfers_nothing(reg, tmp_path):
    reg.add_blob(BLOB)
    cache = BlobCache(str(tmp_path / "cache"))
    first = client_for(reg)
    first.fetch_blob_to("build/app", blob_descriptor(), str(tmp_path / "a"), "data.bin", cache=cache)
    second = client_for(reg)
    path = second.fetch_blob_to("build/app", blob_descriptor(), str(tmp_path / "b"), "data.bin", cache=cache)
    assert digest_file(path)[0] == BLOB_DIGEST
    assert second.stats["requests"] == 0 and second.stats["blobs_skipped"] == 1
    assert len(reg.seen("GET", "/blobs/")) == 1


# -- retries -----------------------------------------------------------------------------------


def test_503_then_success_is_retried_with_backoff(reg):
    manifest = build_manifest([blob_descriptor()])
    reg.manifests[("build/app", "1.0")] = (manifest, OCI_MANIFEST)
    reg.fault("GET", "/manifests/", times=2, status=503)
    client = client_for(reg)
    delays = []
    client.retry = RetryPolicy(3, backoff=1.0, sleep=delays.append)
    assert client.get_manifest("build/app", "1.0")[0] == manifest
    assert client.stats["retries"] == 2
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0


def test_429_retry_after_is_honoured(reg):
    reg.fault("HEAD", "/blobs/", status=429, headers={"Retry-After": "7"})
    client = client_for(reg)
    delays = []
    client.retry = RetryPolicy(3, backoff=0.01, max_delay=30, sleep=delays.append)
    assert client.blob_exists("build/app", BLOB_DIGEST) is False
    assert delays == [7.0]


def test_persistent_5xx_gives_up_after_the_retries(reg):
    reg.fault("GET", "/manifests/", times=10, status=502)
    client = client_for(reg, retries=2)
    with pytest.raises(TransferError, match="HTTP 502") as info:
        client.get_manifest("build/app", "1.0")
    assert info.value.transient and client.stats["requests"] == 3


def test_refused_connection_is_a_transfer_error(tmp_path):
    with FakeRegistry() as reg:
        host = reg.host
    client = RegistryClient(host, plain_http=True, retries=1, backoff=0.001)
    with pytest.raises(TransferError, match="connection refused"):
        client.list_tags("build/app")


# -- authentication ----------------------------------------------------------------------------


def test_bearer_challenge_gets_a_token_once_per_scope():
    with FakeRegistry(auth=("bearer", "alice", "s3cret")) as reg:
        client = client_for(reg, username="alice", password="s3cret")
        client.push_blob("build/app", BLOB, BLOB_DIGEST, len(BLOB))
        assert client.blob_exists("build/app", BLOB_DIGEST)
        assert client.blob_exists("build/app", BLOB_DIGEST)
        token_requests = reg.seen("GET", "/token")
        assert 1 <= reg.tokens_issued <= 2  # one for pull, one for pull,push
        assert all("scope=repository%3Abuild%2Fapp" in path for _m, path, _h in token_requests)
        # Only the first request is challenged; later ones carry the cached token.
        heads = reg.seen("HEAD", "/blobs/")
        assert [("Authorization" in headers) for _m, _p, headers in heads] == [False, True, True, True]


def test_wrong_password_is_refused_without_leaking_it():
    with FakeRegistry(auth=("bearer", "alice", "s3cret")) as reg:
        client = client_for(reg, username="alice", password="wrong-horse")
        with pytest.raises(AuthError) as info:
            client.list_tags("build/app")
        message = str(info.value)
        assert reg.host in message and "refused the credentials" in message and "'alice'" in message
        assert "wrong-horse" not in message and "wrong-horse" not in repr(client)


def test_forbidden_says_the_credentials_lack_permission(reg):
    reg.fault("PUT", "/manifests/", status=403)
    with pytest.raises(AuthError, match="denied access.*lack permission"):
        client_for(reg, username="bob", password="pw").put_manifest("deploy/app", "1.0", build_manifest([]), OCI_MANIFEST)


def test_missing_credentials_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # empty: no config.json
    with FakeRegistry(auth=("basic", "alice", "s3cret")) as reg:
        with pytest.raises(AuthError, match="no credentials were found"):
            client_for(reg).list_tags("build/app")


def test_basic_auth_from_docker_config(tmp_path):
    with FakeRegistry(auth=("basic", "alice", "s3cret")) as reg:
        auth = base64.b64encode(b"alice:s3cret").decode()
        (tmp_path / "config.json").write_text(json.dumps({"auths": {f"https://{reg.host}/v1/": {"auth": auth}}}))
        client = client_for(reg, docker_config=str(tmp_path))
        assert client.list_tags("build/app") == []
        assert client.username == "alice" and client.credentials_source == str(tmp_path / "config.json")


def test_identity_token_from_docker_config_uses_the_oauth2_refresh_flow(tmp_path):
    with FakeRegistry(auth=("bearer", "alice", "s3cret"), identity_token="refresh-123") as reg:
        (tmp_path / "config.json").write_text(json.dumps({"auths": {reg.host: {"identitytoken": "refresh-123"}}}))
        client = client_for(reg, docker_config=str(tmp_path / "config.json"))
        assert client.list_tags("build/app") == []
        assert len(reg.seen("POST", "/token")) == 1


def write_helper(directory, answer, status=0):
    """A docker-credential-test helper that records the server it was asked about."""
    script = directory / "docker-credential-test"
    script.write_text(
        "#!/bin/sh\n"
        f'test "$1" = get || exit 3\nread server\necho "$server" > "{directory}/asked"\n'
        f"cat <<'EOF'\n{answer}\nEOF\nexit {status}\n"
    )
    script.chmod(0o755)


@pytest.mark.parametrize("section", ["credHelpers", "credsStore"])
def test_credential_helper_supplies_the_password(tmp_path, monkeypatch, section):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_helper(bindir, json.dumps({"ServerURL": "x", "Username": "alice", "Secret": "s3cret"}))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    with FakeRegistry(auth=("bearer", "alice", "s3cret")) as reg:
        config = {"credHelpers": {reg.host: "test"}} if section == "credHelpers" else {"credsStore": "test"}
        (tmp_path / "config.json").write_text(json.dumps(config))
        client = client_for(reg, docker_config=str(tmp_path))
        assert client.list_tags("build/app") == []
        assert (bindir / "asked").read_text().strip() == reg.host
        assert client.credentials_source == "docker-credential-test"


def test_credential_helper_without_an_entry_means_no_credentials(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_helper(bindir, "credentials not found in native keychain", status=1)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "test"}))
    assert docker_credentials("127.0.0.1:5000", str(tmp_path)) is None


def test_missing_credential_helper_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"reg.example.org": "absent-helper"}}))
    with pytest.raises(OciError, match="docker-credential-absent-helper.*not installed"):
        docker_credentials("reg.example.org", str(tmp_path))


# -- tags, mounts, referrers -------------------------------------------------------------------


def test_tag_list_follows_pagination():
    with FakeRegistry(tag_page=2) as reg:
        for tag in ("a", "b", "c", "d", "e"):
            reg.manifests[("build/app", tag)] = (b"{}", OCI_MANIFEST)
        client = client_for(reg)
        assert client.list_tags("build/app") == ["a", "b", "c", "d", "e"]
        assert len(reg.seen("GET", "/tags/list")) == 3
        assert client.list_tags("build/other") == []


def test_tag_moves_without_copying_blobs(reg):
    client = client_for(reg)
    manifest = build_manifest([blob_descriptor()])
    digest = client.put_manifest("deploy/app", "1.0", manifest, OCI_MANIFEST)
    assert client.tag("deploy/app", "1.0", "stable") is True
    assert client.tag("deploy/app", "1.0", "stable") is False
    assert client.resolve("deploy/app", "stable").digest == digest
    assert reg.seen("POST", "/blobs/uploads/") == []


def test_mount_reports_whether_the_registry_mounted(reg):
    client = client_for(reg)
    reg.add_blob(BLOB)
    reg.manifests[("build/app", "1.0")] = (b"{}", OCI_MANIFEST)
    assert client.mount_blob("deploy/app", BLOB_DIGEST, "build/app") is True
    missing = digest_bytes(b"missing")
    assert client.mount_blob("deploy/app", missing, "build/app") is False
    assert reg.uploads == {}  # the session opened by the 202 was cancelled
    assert client.stats["blobs_mounted"] == 1


def attach(client, repo, subject_digest, subject_size, artifact_type, payload=b'{"ok": true}'):
    client.push_blob(repo, payload, digest_bytes(payload), len(payload))
    layer = Descriptor("application/json", digest_bytes(payload), len(payload), {"org.opencontainers.image.title": "r.json"})
    subject = Descriptor(OCI_MANIFEST, subject_digest, subject_size)
    manifest = build_manifest([layer], subject=subject, artifact_type=artifact_type)
    return client.put_manifest(repo, digest_bytes(manifest), manifest, OCI_MANIFEST)


def test_referrers_fall_back_to_the_tag_schema_and_stay_unique(reg):
    client = client_for(reg)
    subject = build_manifest([blob_descriptor()])
    subject_digest = client.put_manifest("build/app", "1.0", subject, OCI_MANIFEST)
    meta = attach(client, "build/app", subject_digest, len(subject), "application/vnd.sciops.meta")
    tests = attach(client, "build/app", subject_digest, len(subject), "application/vnd.sciops.tests")
    attach(client, "build/app", subject_digest, len(subject), "application/vnd.sciops.meta")  # again: no duplicate

    index = json.loads(reg.manifests[("build/app", referrers_tag(subject_digest))][0])
    assert [m["digest"] for m in index["manifests"]] == [meta, tests]
    assert index["mediaType"] == OCI_INDEX
    found = client.referrers("build/app", subject_digest)
    assert [(d.digest, d.artifact_type) for d in found] == [(meta, "application/vnd.sciops.meta"), (tests, "application/vnd.sciops.tests")]
    assert [d.digest for d in client.referrers("build/app", subject_digest, "application/vnd.sciops.tests")] == [tests]
    assert client.referrers("build/app", digest_bytes(b"other")) == []


def test_referrers_api_is_used_when_the_registry_has_it():
    with FakeRegistry(referrers_api=True) as reg:
        client = client_for(reg)
        subject = build_manifest([blob_descriptor()])
        subject_digest = client.put_manifest("build/app", "1.0", subject, OCI_MANIFEST)
        meta = attach(client, "build/app", subject_digest, len(subject), "application/vnd.sciops.meta")
        assert ("build/app", referrers_tag(subject_digest)) not in reg.manifests
        assert [d.digest for d in client.referrers("build/app", subject_digest)] == [meta]
        assert client.referrers("build/app", subject_digest, "application/x-none") == []


def test_delete_manifest_by_tag(reg):
    client = client_for(reg)
    client.put_manifest("build/app", "1.0", build_manifest([blob_descriptor()]), OCI_MANIFEST)
    client.delete_manifest("build/app", "1.0")
    with pytest.raises(NotFoundError):
        client.resolve("build/app", "1.0")


def test_open_store_picks_layout_or_registry(tmp_path, reg):
    assert isinstance(open_store(f"oci-layout:{tmp_path}/l:1.0", create_layout=True), LayoutStore)
    store = open_store(f"{reg.host}/build/app:1.0", plain_http=True)
    assert isinstance(store, RegistryClient) and store.registry == reg.host


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(name="tls_files")
def fixture_tls_files(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(key), str(cert)


def test_tls_is_verified_by_default_and_a_ca_file_makes_it_pass(tls_files):
    key, cert = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeRegistry(ssl_context=context) as reg:
        with pytest.raises(TlsError, match=reg.host):
            RegistryClient(reg.host, retries=0).list_tags("build/app")
        assert RegistryClient(reg.host, ca_file=cert).list_tags("build/app") == []
        assert RegistryClient(reg.host, validate_certs=False).list_tags("build/app") == []
