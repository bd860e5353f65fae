# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a release may ask of a node, on the real registry and real nodes: mount points never in system directories
and never over a path the node did not make, text fields that YAML did not turn into numbers, a release.json that
nodes can read."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

pytestmark = [pytest.mark.registry]

APP = "trustenv"
PLACE = "/opt/trust-tests"


def _image(tmp_path, version):
    """An environment image as a tar archive (install: unpack) holding VERSION."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        data = f"{APP} {version}\n".encode()
        info = tarfile.TarInfo("VERSION")
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / f"env-{version}.tar.gz"
    path.write_bytes(buffer.getvalue())
    return path


def _push_image(registry, run_module, tmp_path, version):
    pushed = run_module("oras_push", target=f"{registry.host}/build/{APP}:{version}",
                        files=[{"path": str(_image(tmp_path, version))}], plain_http=True)
    assert not pushed.get("failed"), pushed
    return f"{registry.host}/build/{APP}@{pushed['digest']}"


def _release(reference, version, mount_point, name="env"):
    return {"schema_version": 1, "application": APP, "version": version, "protocol": "1",
            "artifacts": [{"name": name, "reference": reference, "install": "unpack", "mount_point": mount_point}]}


def _publish(registry, run_module, release, **options):
    return run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{APP}", plain_http=True,
                      **options)


def _pushed_releases(registry):
    return [line for line in registry.access_log() if f"/v2/releases/{APP}/manifests/" in line and '"PUT ' in line]


def _on_nodes(ansible, fleet, module, args, hosts="all"):
    return ansible(fleet.inventory_path, hosts=hosts, module=f"sciops.fleet.{module}", module_args=json.dumps(args))


@pytest.fixture
def clean_nodes(fleet):
    """Each test leaves the nodes without the application, its links and what the test put in their way."""
    def clean():
        for name in fleet.names:
            fleet.ssh(name, f"rm -rf /var/lib/sciops-fleet/{APP} /etc/ansible/facts.d/sciops_fleet_{APP}.fact {PLACE}",
                      check=False)
    clean()
    yield fleet
    clean()


@pytest.mark.parametrize("mount_point", ["/lib64", "/usr/local/x", "/etc/foo", "/var/lib/sciops-fleet/x"])
def test_a_mount_point_in_a_system_directory_is_refused_at_publish(registry, run_module, tmp_path, mount_point):
    reference = _push_image(registry, run_module, tmp_path, "1.0")
    before = len(_pushed_releases(registry))
    result = _publish(registry, run_module, _release(reference, "1.0", mount_point))
    assert result.get("failed"), result
    assert f"artifacts[0].mount_point: '{mount_point}' is " in result["msg"], result["msg"]
    assert len(_pushed_releases(registry)) == before


def test_a_site_prefix_lets_a_mount_point_below_usr_local_be_published_and_a_system_prefix_is_refused(
        registry, run_module, tmp_path):
    reference = _push_image(registry, run_module, tmp_path, "1.0")
    allowed = _publish(registry, run_module, _release(reference, "1.0", "/usr/local/envs/trust"),
                       mount_point_prefixes=["/usr/local/envs"])
    assert not allowed.get("failed"), allowed
    refused = _publish(registry, run_module, _release(reference, "1.0", "/usr/lib/trust"), mount_point_prefixes=["/usr"])
    assert refused.get("failed") and "mount_point_prefixes: '/usr' is the system directory /usr" in refused["msg"], refused


@pytest.mark.fleet
def test_a_release_pushed_by_hand_with_mount_point_lib64_is_refused_on_the_node_and_lib64_stays(
        registry, clean_nodes, ansible, run_module, tmp_path):
    fleet = clean_nodes
    reference = _push_image(registry, run_module, tmp_path, "6.6")
    # Written by hand and pushed as an artifact, past release_publish: what a node reads is all it can trust.
    hostile = _release(reference, "6.6", "/lib64")
    hostile["artifacts"][0]["digest"] = reference.split("@", 1)[1]
    hostile.update(role="default", configs=[], services=[], health=[],
                   requires={"arch": [], "os_family": [], "disk_mb": 0, "memory_mb": 0, "commands": [], "kernel": []})
    document = tmp_path / "release.json"
    document.write_text(json.dumps(hostile, sort_keys=True, separators=(",", ":")))
    pushed = run_module("oras_push", target=f"{registry.host}/releases/{APP}:6.6",
                        files=[{"path": str(document), "media_type": "application/json"}],
                        artifact_type="application/vnd.sciops.fleet.release.v1+json", plain_http=True)
    assert not pushed.get("failed"), pushed
    originals = {name: fleet.ssh(name, "readlink /lib64").stdout for name in fleet.names}
    assert all(target.strip() == "usr/lib64" for target in originals.values()), originals

    run = _on_nodes(ansible, fleet, "release_install", {"release": f"{registry.host}/releases/{APP}@{pushed['digest']}",
                                                        "plain_http": True})
    assert sorted(run.failed) == fleet.names, run
    for name in fleet.names:
        message = run.failed[name][0]["msg"]
        assert "artifacts[0].mount_point: '/lib64' is the system directory /lib64" in message, message
        assert fleet.ssh(name, "readlink /lib64").stdout == originals[name]
        assert fleet.ssh(name, "/bin/true", check=False).returncode == 0
        assert fleet.ssh(name, f"ls /var/lib/sciops-fleet/{APP}/releases 2>/dev/null || true").stdout.strip() == ""


@pytest.mark.fleet
def test_a_node_refuses_a_mount_point_it_did_not_create_and_leaves_it_as_it_was(
        registry, clean_nodes, ansible, run_module, tmp_path):
    fleet = clean_nodes
    mount_point = f"{PLACE}/env"
    published = _publish(registry, run_module, _release(_push_image(registry, run_module, tmp_path, "1.0"), "1.0", mount_point))
    assert not published.get("failed"), published
    # On each node something the node did not make is already there: a link, a file, a directory.
    placed = ([f"ln -s /etc {mount_point}", "link"], [f"echo mine > {mount_point}", "file"],
              [f"mkdir {mount_point} && echo mine > {mount_point}/keep", "directory"])
    kinds = {}
    for index, name in enumerate(fleet.names):
        command, kinds[name] = placed[index % len(placed)]
        fleet.ssh(name, f"mkdir -p {PLACE} && {command}")
    before = {name: fleet.ssh(name, f"stat -c '%F %N' {mount_point}; cat {mount_point} {mount_point}/keep 2>/dev/null || true").stdout
              for name in fleet.names}

    run = _on_nodes(ansible, fleet, "release_install", {"release": published["reference"], "plain_http": True})
    assert sorted(run.failed) == fleet.names, run
    for name in fleet.names:
        message = run.failed[name][0]["msg"]
        assert f"mount_point {mount_point} of artifact env exists as a {kinds[name]}" in message, message
        assert "this node did not create it" in message and "left as it is" in message, message
        after = fleet.ssh(name, f"stat -c '%F %N' {mount_point}; cat {mount_point} {mount_point}/keep 2>/dev/null || true").stdout
        assert after == before[name]
        # Refused before anything was placed: no release directory, no staging tree is left to be adopted later.
        left = fleet.ssh(name, f"ls -A /var/lib/sciops-fleet/{APP}/releases 2>/dev/null || true").stdout.split()
        assert left == [], left


@pytest.mark.fleet
def test_a_mount_point_link_the_node_made_is_retargeted_on_upgrade(registry, clean_nodes, ansible, run_module, tmp_path):
    fleet = clean_nodes
    mount_point = f"{PLACE}/env"
    v1 = _publish(registry, run_module, _release(_push_image(registry, run_module, tmp_path, "1.0"), "1.0", mount_point))
    v2 = _publish(registry, run_module, _release(_push_image(registry, run_module, tmp_path, "2.0"), "2.0", mount_point,
                                                 name="stack"))
    for release, artifact in ((v1, "env"), (v2, "stack")):
        assert not release.get("failed"), release
        install = _on_nodes(ansible, fleet, "release_install", {"release": release["reference"], "plain_http": True})
        assert install.rc == 0 and sorted(install.ok) == fleet.names, install
        switch = _on_nodes(ansible, fleet, "release_switch", {"application": APP, "release": release["release_id"]})
        assert switch.rc == 0, switch
        for name in fleet.names:
            assert fleet.ssh(name, f"readlink {mount_point}").stdout.strip() == f"/var/lib/sciops-fleet/{APP}/current/{artifact}"
            assert fleet.ssh(name, f"cat {mount_point}/VERSION").stdout == f"{APP} {release['release']['version']}\n"
            made = json.loads(fleet.ssh(name, f"cat /var/lib/sciops-fleet/{APP}/.mount-links.json").stdout)
            assert made == {mount_point: f"/var/lib/sciops-fleet/{APP}/current/{artifact}"}


def test_yaml_numbers_in_text_fields_are_refused_at_publish(registry, run_module, tmp_path):
    reference = _push_image(registry, run_module, tmp_path, "1.10")
    manifest = tmp_path / "release.yaml"
    manifest.write_text(f"schema_version: 1\napplication: {APP}\nversion: 1.10\nprotocol: 010\n"
                        f"artifacts:\n  - name: env\n    reference: {reference}\n    install: unpack\n")
    before = len(_pushed_releases(registry))
    result = run_module("release_publish", manifest=str(manifest), repository=f"{registry.host}/releases/{APP}",
                        plain_http=True)
    assert result.get("failed"), result
    assert "version: must be a string, not the float 1.1 that YAML read; quote it" in result["msg"], result["msg"]
    assert "protocol: must be a string, not the int 8 that YAML read; quote it" in result["msg"], result["msg"]
    assert len(_pushed_releases(registry)) == before
    manifest.write_text(manifest.read_text().replace("1.10", '"1.10"').replace("010", '"010"'))
    quoted = run_module("release_publish", manifest=str(manifest), repository=f"{registry.host}/releases/{APP}",
                        plain_http=True)
    assert not quoted.get("failed"), quoted
    assert quoted["release"]["version"] == "1.10" and quoted["release"]["protocol"] == "010"
    assert quoted["tags"] == ["1.10"]


def test_a_release_larger_than_nodes_read_is_refused_at_publish(registry, run_module, tmp_path):
    reference = _push_image(registry, run_module, tmp_path, "1.0")
    release = dict(_release(reference, "1.0", f"{PLACE}/env"), description="x" * (5 * 1024 * 1024))
    before = len(_pushed_releases(registry))
    result = _publish(registry, run_module, release)
    assert result.get("failed"), result
    assert "release.json would be 5243" in result["msg"] and "more than the 4194304 bytes (4 MiB) a node reads" in result["msg"], result["msg"]
    assert len(_pushed_releases(registry)) == before
