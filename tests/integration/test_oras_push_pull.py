# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""oras_push and oras_pull against the real registry, plain and authenticated, and on the test fleet."""

from __future__ import annotations

import glob
import hashlib
import os
import socket
import stat
import threading
import time

import pytest

import testbed

pytestmark = pytest.mark.registry


def sha256(path):
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.sha256(handle.read()).hexdigest()


def blob_requests(registry, since=0, methods=("GET", "HEAD", "PUT", "POST", "PATCH")):
    """Access-log lines after the first SINCE that touched blobs (uploads included) with one of METHODS."""
    return [line for line in registry.access_log()[since:]
            if "/blobs/" in line and any(f'"{method} ' in line for method in methods)]


def blob_transfers(registry, since=0):
    """Lines that moved blob bytes: GET of a blob, or any upload step."""
    return [line for line in registry.access_log()[since:]
            if ('"GET ' in line and "/blobs/sha256:" in line) or "/blobs/uploads" in line]


@pytest.fixture
def payload(tmp_path):
    """Three files: a 3 MiB binary, a small config, and an executable script."""
    root = tmp_path / "payload"
    (root / "etc").mkdir(parents=True)
    (root / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (root / "etc" / "app.conf").write_text("port = 7000\n", encoding="utf-8")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho running\n", encoding="utf-8")
    script.chmod(0o750)
    return root


def test_round_trip_is_byte_identical_and_second_runs_transfer_nothing(registry, payload, tmp_path, ansible):
    target = f"{registry.host}/build/roundtrip:1.0"
    inventory = str(tmp_path / "inventory.yml")
    with open(inventory, "w", encoding="utf-8") as handle:
        handle.write("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    push_args = f"target={target} directory={payload} plain_http=true"
    run = ansible(inventory, hosts="localhost", module="sciops.fleet.oras_push", module_args=push_args,
                  extravars={"ansible_python_interpreter": "{{ ansible_playbook_python }}"})
    assert run.rc == 0, run
    pushed = run.ok["localhost"][0]
    assert pushed["changed"] is True
    assert sorted(layer["name"] for layer in pushed["layers"]) == ["data.bin", "etc/app.conf", "run.sh"]
    assert pushed["transfer"]["blobs_uploaded"] == 4  # three files and the empty config

    dest = tmp_path / "pulled"
    pull_args = f"reference={target} dest={dest} plain_http=true"
    run = ansible(inventory, hosts="localhost", module="sciops.fleet.oras_pull", module_args=pull_args,
                  extravars={"ansible_python_interpreter": "{{ ansible_playbook_python }}"})
    assert run.rc == 0, run
    pulled = run.ok["localhost"][0]
    assert pulled["changed"] is True and pulled["digest"] == pushed["digest"]
    for name in ("data.bin", "etc/app.conf", "run.sh"):
        assert (dest / name).read_bytes() == (payload / name).read_bytes()
        layer = next(layer for layer in pushed["layers"] if layer["name"] == name)
        assert sha256(dest / name) == layer["digest"]
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o750

    # Second push and second pull: no change, and the registry saw no blob transferred.
    mark = len(registry.access_log())
    run = ansible(inventory, hosts="localhost", module="sciops.fleet.oras_push", module_args=push_args,
                  extravars={"ansible_python_interpreter": "{{ ansible_playbook_python }}"})
    again = run.ok["localhost"][0]
    assert again["changed"] is False and again["digest"] == pushed["digest"]
    assert again["uploaded"] == [] and again["transfer"]["blobs_uploaded"] == 0
    run = ansible(inventory, hosts="localhost", module="sciops.fleet.oras_pull", module_args=pull_args,
                  extravars={"ansible_python_interpreter": "{{ ansible_playbook_python }}"})
    again = run.ok["localhost"][0]
    assert again["changed"] is False
    assert again["transfer"]["blobs_downloaded"] == 0 and again["transfer"]["bytes_downloaded"] == 0
    assert blob_requests(registry, since=mark) == [], "a second push or pull touched blobs"


def test_check_mode_predicts_then_applies_then_settles(registry, payload, tmp_path, run_module):
    push = {"target": f"{registry.host}/build/checkmode:1.0,candidate", "directory": str(payload), "plain_http": True}
    mark = len(registry.access_log())
    first = run_module("oras_push", check=True, diff=True, **push)
    assert first["changed"] is True and first["uploaded"] == []
    assert first["diff"]["before"] == {"1.0": "(absent)", "candidate": "(absent)"}
    assert blob_transfers(registry, since=mark) == []
    applied = run_module("oras_push", **push)
    assert applied["changed"] is True and applied["digest"] == first["digest"]
    assert run_module("oras_push", check=True, **push)["changed"] is False
    assert run_module("oras_push", **push)["changed"] is False

    pull = {"reference": f"{registry.host}/build/checkmode:candidate", "dest": str(tmp_path / "out"), "plain_http": True}
    predicted = run_module("oras_pull", check=True, diff=True, **pull)
    assert predicted["changed"] is True and not (tmp_path / "out").exists()
    assert "data.bin" in predicted["diff"]["after"]
    assert run_module("oras_pull", **pull)["changed"] is True
    assert run_module("oras_pull", check=True, **pull)["changed"] is False
    assert run_module("oras_pull", **pull)["changed"] is False

    # A file changed on disk is put back; a mode changed is fixed without a download.
    (tmp_path / "out" / "etc" / "app.conf").write_text("port = 1\n", encoding="utf-8")
    (tmp_path / "out" / "run.sh").chmod(0o644)
    repaired = run_module("oras_pull", **pull)
    states = {f["name"]: f["state"] for f in repaired["files"]}
    assert states == {"data.bin": "present", "etc/app.conf": "fetch", "run.sh": "mode"}
    assert repaired["transfer"]["blobs_downloaded"] == 1
    assert (tmp_path / "out" / "etc" / "app.conf").read_text(encoding="utf-8") == "port = 7000\n"
    assert stat.S_IMODE((tmp_path / "out" / "run.sh").stat().st_mode) == 0o750


def test_a_pinned_digest_that_does_not_match_writes_nothing(registry, payload, tmp_path, run_module):
    pushed = run_module("oras_push", target=f"{registry.host}/build/pinned:1.0", directory=str(payload), plain_http=True)
    wrong = "sha256:" + "1" * 64
    result = run_module("oras_pull", reference=f"{registry.host}/build/pinned:1.0", dest=str(tmp_path / "out"),
                        expected_digest=wrong, plain_http=True)
    assert result["failed"] and pushed["digest"] in result["msg"] and wrong in result["msg"]
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_the_cache_means_a_digest_is_fetched_once_per_node(registry, payload, tmp_path, run_module):
    run_module("oras_push", target=f"{registry.host}/build/cached:1.0", directory=str(payload), plain_http=True)
    cache = str(tmp_path / "cache")
    common = {"reference": f"{registry.host}/build/cached:1.0", "cache_dir": cache, "plain_http": True}
    first = run_module("oras_pull", dest=str(tmp_path / "a"), **common)
    assert first["transfer"]["blobs_downloaded"] == 3
    mark = len(registry.access_log())
    second = run_module("oras_pull", dest=str(tmp_path / "b"), **common)
    assert second["changed"] is True and second["transfer"]["blobs_downloaded"] == 0
    assert blob_transfers(registry, since=mark) == []
    assert (tmp_path / "b" / "data.bin").read_bytes() == (payload / "data.bin").read_bytes()
    # The destination is a copy: editing it leaves the cache intact for the next pull.
    (tmp_path / "b" / "data.bin").write_bytes(b"edited")
    third = run_module("oras_pull", dest=str(tmp_path / "c"), **common)
    assert (tmp_path / "c" / "data.bin").read_bytes() == (payload / "data.bin").read_bytes()
    assert third["transfer"]["blobs_downloaded"] == 0


def test_authenticated_round_trip_and_a_clear_error_for_a_wrong_password(auth_registry, payload, tmp_path, run_module):
    target = f"{auth_registry.host}/build/secure:1.0"
    creds = {"username": auth_registry.username, "password": auth_registry.password, "plain_http": True}
    pushed = run_module("oras_push", target=target, directory=str(payload), **creds)
    assert pushed["changed"] is True, pushed
    assert auth_registry.password not in str(pushed)
    pulled = run_module("oras_pull", reference=target, dest=str(tmp_path / "out"), **creds)
    assert pulled["digest"] == pushed["digest"]
    assert (tmp_path / "out" / "data.bin").read_bytes() == (payload / "data.bin").read_bytes()

    wrong = run_module("oras_pull", reference=target, dest=str(tmp_path / "other"), plain_http=True,
                       username=auth_registry.username, password="not-the-password")
    assert wrong["failed"] and wrong["error_type"] == "AuthError"
    assert auth_registry.host in wrong["msg"] and "refused the credentials" in wrong["msg"]
    assert "not-the-password" not in str(wrong)
    anonymous = run_module("oras_pull", reference=target, dest=str(tmp_path / "other"), plain_http=True,
                           docker_config=str(tmp_path / "no-such-config.json"))
    assert anonymous["failed"] and "requires authentication" in anonymous["msg"]


def test_a_blob_corrupted_on_the_registry_disk_is_refused(registry, tmp_path, run_module):
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.dat").write_bytes(os.urandom(256 * 1024))
    pushed = run_module("oras_push", target=f"{registry.host}/build/corrupt:1.0", directory=str(source), plain_http=True)
    digest = pushed["layers"][0]["digest"]
    hexdigest = digest.split(":", 1)[1]
    data_file = os.path.join(registry.storage_dir, "docker/registry/v2/blobs/sha256", hexdigest[:2], hexdigest, "data")
    with open(data_file, "r+b") as handle:  # same size, different bytes
        handle.seek(1000)
        handle.write(b"\x00corrupted\x00")
    dest = tmp_path / "out"
    result = run_module("oras_pull", reference=f"{registry.host}/build/corrupt:1.0", dest=str(dest), plain_http=True,
                        retries=0)
    assert result["failed"] and result["error_type"] == "DigestMismatchError", result
    assert digest in result["msg"]
    assert not (dest / "model.dat").exists()
    assert [p for p in os.listdir(dest) if not p.startswith(".")] == []


def test_a_registry_stopped_mid_download_fails_clearly_and_the_next_run_resumes(registry, tmp_path, run_module):
    source = tmp_path / "src"
    source.mkdir()
    size = 48 * 1024 * 1024
    (source / "image.sqfs").write_bytes(os.urandom(size))
    pushed = run_module("oras_push", target=f"{registry.host}/build/resume:1.0", directory=str(source), plain_http=True)
    dest = tmp_path / "out"
    dest.mkdir()
    with testbed.ThrottledProxy(registry.port, rate=16 * 1024 * 1024) as proxy:
        def stop_when_partial():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                partial = glob.glob(str(dest / ".*partial*"))
                if partial and os.path.getsize(partial[0]) > 8 * 1024 * 1024:
                    registry.stop()
                    return
                time.sleep(0.05)
        stopper = threading.Thread(target=stop_when_partial)
        stopper.start()
        try:
            failed = run_module("oras_pull", reference=f"{proxy.host}/build/resume:1.0", dest=str(dest), plain_http=True,
                                retries=1, timeout=5)
        finally:
            stopper.join()
            registry.start()
    assert failed["failed"], failed
    assert failed["error_type"] == "TransferError" and "resume" in failed["msg"], failed["msg"]
    assert not (dest / "image.sqfs").exists()
    partial = glob.glob(str(dest / ".*partial*"))
    assert partial and 0 < os.path.getsize(partial[0]) < size

    mark = len(registry.access_log())
    resumed = run_module("oras_pull", reference=f"{registry.host}/build/resume:1.0", dest=str(dest), plain_http=True)
    assert resumed["changed"] is True and resumed["transfer"]["resumed"] == 1
    assert resumed["transfer"]["bytes_downloaded"] < size
    assert sha256(dest / "image.sqfs") == pushed["layers"][0]["digest"]
    assert any('" 206 ' in line for line in registry.access_log()[mark:]), "no range request reached the registry"
    assert glob.glob(str(dest / ".*partial*")) == []


def test_an_unresponsive_registry_fails_within_the_timeout(tmp_path, run_module):
    # A socket that accepts connections (the kernel does) but never answers: a hung registry.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        result = run_module("oras_pull", reference=f"127.0.0.1:{port}/any/thing:1", dest=str(tmp_path / "out"),
                            plain_http=True, timeout=2, retries=1)
    assert result["failed"] and result["error_type"] == "TransferError", result
    assert f"127.0.0.1:{port}" in result["msg"]
    # Two attempts of 2 s each, a backoff of about 1 s, and the interpreter's start-up.
    assert result["elapsed"] < 10, result["elapsed"]


def test_a_refused_connection_says_which_registry(tmp_path, run_module):
    port = testbed.free_port()
    result = run_module("oras_pull", reference=f"127.0.0.1:{port}/any/thing:1", dest=str(tmp_path / "out"),
                        plain_http=True, retries=0)
    assert result["failed"] and f"127.0.0.1:{port}" in result["msg"]


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "link/escape.txt"])
def test_malicious_file_names_are_refused(registry, tmp_path, run_module, name):
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (  # pylint: disable=import-outside-toplevel
        Descriptor, build_manifest, OCI_MANIFEST, TITLE_ANNOTATION)

    # An attacker's artifact, written with a plain client: the module that reads it must refuse it.
    client = RegistryClient(registry.host, plain_http=True)
    body = b"owned\n"
    client.push_blob("evil/names", body, digest_bytes(body), len(body))
    client.push_blob("evil/names", b"{}", digest_bytes(b"{}"), 2)
    layer = Descriptor("application/octet-stream", digest_bytes(body), len(body), annotations={TITLE_ANNOTATION: name})
    client.put_manifest("evil/names", "bad", build_manifest([layer]), OCI_MANIFEST)

    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link")
    result = run_module("oras_pull", reference=f"{registry.host}/evil/names:bad", dest=str(dest), plain_http=True)
    assert result["failed"] and result["error_type"] == "UnsafePathError", result
    assert name in result["msg"]
    assert os.listdir(outside) == []
    assert not (tmp_path / "escape.txt").exists()
    assert sorted(os.listdir(dest)) == ["link"]


@pytest.mark.fleet
def test_nodes_pull_with_the_standard_library_only(registry, payload, fleet, ansible):
    """oras_pull runs on every node (Debian minimal: python3 and nothing from pip) and lands verified files."""
    pushed_layers = {}
    from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file  # pylint: disable=import-outside-toplevel
    for name in ("data.bin", "etc/app.conf", "run.sh"):
        pushed_layers[name] = digest_file(str(payload / name))[0]
    target = f"{registry.host}/build/fleetpull:1.0"
    from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import (  # pylint: disable=import-outside-toplevel
        describe_directory, push_artifact)
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import RegistryClient  # pylint: disable=import-outside-toplevel
    push_artifact(RegistryClient(registry.host, plain_http=True), "build/fleetpull", ["1.0"], describe_directory(str(payload)))

    args = f"reference={target} dest=/opt/fleetpull cache_dir=/var/cache/sciops-fleet plain_http=true"
    run = ansible(fleet.inventory_path, module="sciops.fleet.oras_pull", module_args=args)
    assert run.rc == 0, run
    assert sorted(run.ok) == fleet.names
    for name in fleet.names:
        sums = fleet.ssh(name, "cd /opt/fleetpull && sha256sum data.bin etc/app.conf run.sh && stat -c %a run.sh").stdout.split("\n")
        got = {line.split()[1]: "sha256:" + line.split()[0] for line in sums[:3]}
        assert got == pushed_layers
        assert sums[3].strip() == "750"
        # No pip package on the node: the module ran on the standard library.
        assert fleet.ssh(name, "python3 -c 'import requests'", check=False).returncode != 0
    again = ansible(fleet.inventory_path, module="sciops.fleet.oras_pull", module_args=args)
    assert all(results[0]["changed"] is False for results in again.ok.values()), again
