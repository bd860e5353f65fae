# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Interoperability with clients this project did not write: oras-py and skopeo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

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
