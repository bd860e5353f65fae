# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Interoperability with clients this project did not write: oras-py, skopeo, and what the oras CLI writes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import EMPTY_JSON

pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is installed by make system-deps")]


def _sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_artifact_pushed_by_oras_py_pulls_identically(registry, tmp_path, run_module, monkeypatch):
    import oras.client  # pylint: disable=import-outside-toplevel

    source = tmp_path / "src"
    (source / "conf").mkdir(parents=True)
    (source / "conf" / "site.yaml").write_text("site: a\n", encoding="utf-8")
    (source / "table.csv").write_bytes(os.urandom(100_000))
    monkeypatch.chdir(source)
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(files=["conf/site.yaml", "table.csv"], target=f"{registry.host}/peers/oraspy:1")

    pulled = run_module("oras_pull", reference=f"{registry.host}/peers/oraspy:1", dest=str(tmp_path / "out"),
                        plain_http=True)
    assert pulled["changed"] is True, pulled
    # oras-py titles each file with its base name, and that title is the name a pull writes.
    for name in ("conf/site.yaml", "table.csv"):
        assert (tmp_path / "out" / os.path.basename(name)).read_bytes() == (source / name).read_bytes()
    manifest = client.get_manifest(f"{registry.host}/peers/oraspy:1")
    assert sorted(f["digest"] for f in pulled["files"]) == sorted(layer["digest"] for layer in manifest["layers"])


def _write_layout_by_hand(root, files):
    """An OCI image layout written with plain json and hashlib: layers titled with their file names."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data):
        digest = _sha(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layers = [{"mediaType": "application/octet-stream", "digest": put(data), "size": len(data),
               "annotations": {"org.opencontainers.image.title": name}} for name, data in files.items()]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": layers}).encode()
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}', encoding="utf-8")
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "1"}}]}), encoding="utf-8")
    return _sha(manifest)


def test_an_image_copied_in_by_skopeo_pulls_correctly(registry, tmp_path, run_module):
    files = {"bin/tool": os.urandom(70_000), "README": b"copied by skopeo\n"}
    digest = _write_layout_by_hand(tmp_path / "layout", files)
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:1",
                    f"docker://{registry.host}/peers/skopeo:1"], check=True, capture_output=True)
    pulled = run_module("oras_pull", reference=f"{registry.host}/peers/skopeo:1", dest=str(tmp_path / "out"),
                        plain_http=True)
    assert pulled["changed"] is True, pulled
    assert pulled["digest"] == digest  # skopeo kept the manifest as written
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_what_oras_push_writes_is_valid_for_skopeo(registry, tmp_path, run_module):
    source = tmp_path / "src"
    source.mkdir()
    (source / "env.sqfs").write_bytes(os.urandom(200_000))
    pushed = run_module("oras_push", target=f"{registry.host}/peers/ours:1", directory=str(source), plain_http=True,
                        artifact_type="application/vnd.sciops.env.v1")
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/peers/ours:1"],
                         check=True, capture_output=True).stdout
    assert _sha(raw) == pushed["digest"]
    assert json.loads(raw)["artifactType"] == "application/vnd.sciops.env.v1"
    # skopeo copies it out, checking every digest on the way, into a layout of its own.
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{registry.host}/peers/ours:1",
                    f"oci:{tmp_path / 'copy'}:1"], check=True, capture_output=True)
    index = json.loads((tmp_path / "copy" / "index.json").read_text(encoding="utf-8"))
    assert [m["digest"] for m in index["manifests"]] == [pushed["digest"]]
    layer = pushed["layers"][0]["digest"].split(":")[1]
    assert (tmp_path / "copy" / "blobs" / "sha256" / layer).read_bytes() == (source / "env.sqfs").read_bytes()


UNKNOWN_TYPE = "application/vnd.unknown.artifact.v1"


def _raw_manifest(registry, reference):
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{reference}"],
                          check=True, capture_output=True).stdout


def test_a_push_without_artifact_type_carries_the_type_the_oras_cli_writes_and_stays_idempotent(registry, tmp_path, run_module):
    source = tmp_path / "src"
    source.mkdir()
    (source / "notes.txt").write_text("no type given\n", encoding="utf-8")
    args = {"target": f"{registry.host}/peers/untyped:1", "directory": str(source), "plain_http": True}
    pushed = run_module("oras_push", **args)
    assert pushed["changed"] is True, pushed
    manifest = json.loads(_raw_manifest(registry, "peers/untyped:1"))
    # OCI image spec 1.1: artifactType MUST be set when the config is the empty one.
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert manifest["artifactType"] == UNKNOWN_TYPE
    again = run_module("oras_push", **args)
    assert again["changed"] is False and again["digest"] == pushed["digest"], again
    pulled = run_module("oras_pull", reference=f"{registry.host}/peers/untyped:1", dest=str(tmp_path / "out"), plain_http=True)
    assert pulled["artifact_type"] == UNKNOWN_TYPE


def _oras_cli_directory_layer(directory, members=None):
    """The gzip tar the oras CLI pushes for a directory: every member named <dir name>/..., and its annotations."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if members is None:
            tar.add(str(directory), arcname=directory.name, recursive=True)
        else:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    plain = buffer.getvalue()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as handle:
        handle.write(plain)
    annotations = {"org.opencontainers.image.title": directory.name, "io.deis.oras.content.unpack": "true",
                   "io.deis.oras.content.digest": _sha(plain)}
    return compressed.getvalue(), annotations


def _push_as_the_oras_cli(registry, repo, tag, blob, annotations):
    """Push BLOB as the single layer of an artifact the way the oras CLI 1.x writes it (empty config, unknown type)."""
    client = RegistryClient(registry.host, plain_http=True, timeout=30)
    client.push_blob(repo, blob, _sha(blob), len(blob))
    client.push_blob(repo, EMPTY_JSON, _sha(EMPTY_JSON), len(EMPTY_JSON))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": UNKNOWN_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": _sha(EMPTY_JSON), "size": len(EMPTY_JSON),
                   "data": "e30="},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _sha(blob), "size": len(blob),
                    "annotations": annotations}],
        "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"},
    }, indent=3).encode()
    client.put_manifest(repo, tag, manifest, "application/vnd.oci.image.manifest.v1+json")
    return _sha(manifest)


def _listing(root):
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            mode = os.lstat(path).st_mode
            content = os.readlink(path) if os.path.islink(path) else None if os.path.isdir(path) else open(path, "rb").read()
            found[os.path.relpath(path, root)] = (stat.S_IFMT(mode), stat.S_IMODE(mode), content)
    return found


@pytest.fixture
def site_dir(tmp_path):
    site = tmp_path / "build" / "site-a"
    (site / "conf.d").mkdir(parents=True)
    (site / "conf.d" / "db.yaml").write_text("port: 4040\n", encoding="utf-8")
    (site / "run.sh").write_text("#!/bin/sh\necho site\n", encoding="utf-8")
    (site / "run.sh").chmod(0o755)
    os.symlink("conf.d/db.yaml", site / "db.yaml")
    return site


def test_a_directory_pushed_by_the_oras_cli_is_unpacked_into_dest_and_a_rerun_changes_nothing(
        registry, tmp_path, run_module, site_dir):
    blob, annotations = _oras_cli_directory_layer(site_dir)
    _push_as_the_oras_cli(registry, "peers/oras-dir", "1", blob, annotations)
    dest = tmp_path / "out"
    args = {"reference": f"{registry.host}/peers/oras-dir:1", "dest": str(dest), "plain_http": True}
    first = run_module("oras_pull", **args)
    assert first["changed"] is True and first["files"][0]["unpacked"] is True, first
    assert first["files"][0]["path"] == str(dest / "site-a")
    assert _listing(dest / "site-a") == _listing(site_dir)
    assert sorted(os.listdir(dest)) == [".sciops-unpacked.json", "site-a"]  # no archive or staging left
    again = run_module("oras_pull", **args)
    assert again["changed"] is False and again["transfer"]["blobs_downloaded"] == 0, again
    # A tree changed on the node is unpacked again.
    (dest / "site-a" / "run.sh").write_text("#!/bin/sh\necho tampered\n", encoding="utf-8")
    repaired = run_module("oras_pull", **args)
    assert repaired["changed"] is True and _listing(dest / "site-a") == _listing(site_dir), repaired
    # unpack: false keeps the archive as the file the layer is.
    raw = run_module("oras_pull", **dict(args, dest=str(tmp_path / "raw"), unpack=False))
    assert raw["changed"] is True and (tmp_path / "raw" / "site-a").read_bytes() == blob, raw


def test_a_hostile_directory_layer_is_refused_naming_the_member_and_the_old_tree_stays(
        registry, tmp_path, run_module, site_dir):
    good, annotations = _oras_cli_directory_layer(site_dir)
    _push_as_the_oras_cli(registry, "peers/oras-hostile", "good", good, annotations)
    dest = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    assert run_module("oras_pull", reference=f"{registry.host}/peers/oras-hostile:good", dest=str(dest),
                      plain_http=True)["changed"] is True
    members = []
    for name, kind, target in [("site-a", tarfile.DIRTYPE, "")] + [
            (f"site-a/l{n}", tarfile.SYMTYPE, "." if n == 0 else f"l{n - 1}/..") for n in range(10)]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = kind, target, 0o755
        members.append((info, None))
    escape = tarfile.TarInfo(f"site-a/l9/{'../' * 20}{str(outside).lstrip('/')}/x")
    escape.size = 5
    members.append((escape, b"pwned"))
    hostile, annotations = _oras_cli_directory_layer(site_dir, members)
    _push_as_the_oras_cli(registry, "peers/oras-hostile", "bad", hostile, annotations)
    refused = run_module("oras_pull", reference=f"{registry.host}/peers/oras-hostile:bad", dest=str(dest), plain_http=True)
    assert refused["failed"] and "member 'site-a/l2'" in refused["msg"] and "site-a" in refused["msg"], refused
    assert os.listdir(outside) == []
    assert _listing(dest / "site-a") == _listing(site_dir)
    assert sorted(os.listdir(dest)) == [".sciops-unpacked.json", "site-a"]
