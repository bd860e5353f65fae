# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install kind ``machine`` on real nodes: a server release runs as an nspawn machine per slot.

The machine's root file system is a statically linked busybox (its httpd serves the release's version on the slot's
port), shipped as a tar image and as an OCI image of two layers with whiteouts.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shlex
import tarfile
import time
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT = os.path.join(REPO, "playbooks", "rollout.yml")
ROLLBACK = os.path.join(REPO, "playbooks", "rollback.yml")
RETIRE = os.path.join(REPO, "playbooks", "retire_oldstable.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")
APP, OCI_APP = "machsrv", "machoci"
PORTS = {"current": 8311, "oldstable": 8312}
STATE = "/var/lib/sciops-fleet"
BUSYBOX = "/bin/busybox"

# The machine: busybox httpd on the node's address (the test nodes share one network) and the slot's port, serving the
# release's rendered www/ directory, bound read-only; the node's data directory at /data.
MACHINE = {
    "command": ["/bin/sh", "-c", ". /etc/server/env && exec /bin/busybox httpd -f -p \"$ADDRESS:${port}\" -h /srv/www"],
    "slots": {slot: {"port": str(port)} for slot, port in PORTS.items()},
    "binds": [{"source": "conf/env", "dest": "/etc/server/env"}, {"source": "www", "dest": "/srv/www"}],
    "data": "/data",
    "limits": {"memory": "64M", "tasks": "64"},
    "health": [{"command": "test -d /data && test -s /srv/www/version", "timeout": 5},
               {"http": "http://${address}:${port}/version", "timeout": 2, "retries": 10, "delay": 0.5}],
}
CONFIGS = [{"source": "rootfs/root/etc/server/env.in", "dest": "conf/env"},
           {"source": "rootfs/root/etc/server/version.in", "dest": "www/version"}]


def _member(tar, name, kind="file", data=b"", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.mode = 0, 0, 0, mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == "link":
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _tar_gz(members):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed, tarfile.open(fileobj=compressed, mode="w") as tar:
        for member in members:
            _member(tar, *member[:2], **(member[2] if len(member) > 2 else {}))
    return buffer.getvalue()


def _base_members():
    """A root file system of one static busybox, with every mount point the machine needs already there (its root
    is read-only) and the release's config templates."""
    with open(BUSYBOX, "rb") as handle:
        busybox = handle.read()
    members = [(d, "dir", {"mode": 0o755}) for d in (
        "usr", "usr/bin", "etc", "etc/server", "proc", "sys", "dev", "run", "tmp", "var", "var/tmp", "data", "srv",
        "srv/www")]
    members += [("usr/bin/busybox", "file", {"data": busybox, "mode": 0o755}),
                ("bin", "link", {"link": "usr/bin"}), ("usr/bin/sh", "link", {"link": "busybox"}),
                ("usr/bin/test", "link", {"link": "busybox"}),
                ("etc/server/env", "file", {"data": b""}), ("etc/resolv.conf", "file", {"data": b""}),
                ("etc/server/env.in", "file", {"data": b"ADDRESS=${address}\n"}),
                ("etc/server/version.in", "file", {"data": b"${application} ${version}\n"})]
    return members


def _publish(registry, run_module, app, version, protocol, artifact_ref, machine=None):
    release = {"schema_version": 1, "application": app, "version": version, "protocol": protocol, "role": "server",
               "artifacts": [{"name": "rootfs", "reference": artifact_ref, "install": "machine",
                              "machine": machine or MACHINE}],
               "configs": CONFIGS}
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{app}",
                           plain_http=True)
    assert not published.get("failed"), published
    return f"{registry.host}/releases/{app}:{version}"


def _push_tar_image(registry, run_module, tmp_path, app):
    image = tmp_path / "rootfs.tar.gz"
    image.write_bytes(_tar_gz(_base_members()))
    pushed = run_module("oras_push", target=f"{registry.host}/build/{app}-rootfs:1", files=[{"path": str(image)}],
                        plain_http=True)
    assert not pushed.get("failed"), pushed
    return f"{registry.host}/build/{app}-rootfs@{pushed['digest']}"


def _blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _push_oci_image(registry, run_module, tmp_path, name, layers):
    """An OCI image (config + untitled gzip layers, bottom first) written as an OCI layout, copied to the registry
    with oras_copy; its digest reference."""
    layout = tmp_path / f"layout-{name}"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descriptors = [dict(_blob(layout, _tar_gz(members)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
                   for members in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(_blob(layout, config), mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": descriptors}).encode()
    entry = dict(_blob(layout, manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                 annotations={"org.opencontainers.image.ref.name": "1"})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    copied = run_module("oras_copy", source=f"oci-layout:{layout}:1", destination=f"{registry.host}/build/{name}:1", plain_http=True)
    assert not copied.get("failed"), copied
    return f"{registry.host}/build/{name}@{entry['digest']}"


def _rollout(ansible, fleet, release, hosts, **extra):
    extravars = {"rollout_release": release, "rollout_plain_http": True, "rollout_batches": ["100%"],
                 "rollout_hosts": hosts, "rollout_keep_oldstable": True,
                 "rollout_config_vars": {"address": "{{ ansible_host }}"}}
    extravars.update(extra)
    return ansible(fleet.inventory_path, playbook=ROLLOUT, extravars=extravars)


def _answer(address, slot, timeout=15):
    """What the machine of SLOT serves as its version, waiting a little for a machine that just started; None when
    nothing answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}:{PORTS[slot]}/version", timeout=3) as response:
                return response.read().decode().strip()
        except (urllib.error.URLError, OSError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)


def _inside(fleet, node, machine, command):
    """COMMAND run inside MACHINE on NODE (its namespaces and root), as an operator would with nsenter."""
    return fleet.ssh(node, f"nsenter --target $(machinectl show --property=Leader --value {machine}) --mount --uts "
                           f"--ipc --net --pid --root --wd -- /bin/sh -c {shlex.quote(command)}", timeout=60)


def _machines(fleet, node):
    return sorted(line.split()[0] for line in fleet.ssh(node, "machinectl list --no-legend").stdout.splitlines() if line.strip())


@pytest.fixture
def machine_nodes(fleet):
    nodes = fleet.names[:3]

    def wipe():
        for name in nodes:
            fleet.ssh(name, "; ".join(
                f"systemctl disable --now systemd-nspawn@{app}-{slot}.service 2>/dev/null; "
                f"rm -rf /etc/systemd/nspawn/{app}-{slot}.nspawn /etc/systemd/system/systemd-nspawn@{app}-{slot}.service.d "
                f"{STATE}/_units/systemd-nspawn@{app}-{slot}.service.json"
                for app in (APP, OCI_APP) for slot in PORTS) +
                f"; systemctl daemon-reload; rm -rf {STATE}/{APP} {STATE}/{OCI_APP} {STATE}/_data "
                f"/etc/ansible/facts.d/sciops_fleet_{APP}.fact /etc/ansible/facts.d/sciops_fleet_{OCI_APP}.fact /tmp/outside",
                check=False, timeout=120)
    wipe()
    yield nodes
    wipe()


def test_a_server_release_runs_as_a_machine_per_slot(registry, fleet, ansible, run_module, tmp_path, machine_nodes):
    nodes, hosts = machine_nodes, ",".join(machine_nodes)
    rootfs = _push_tar_image(registry, run_module, tmp_path, APP)
    v1 = _publish(registry, run_module, APP, "1.0", "1", rootfs)
    v2 = _publish(registry, run_module, APP, "2.0", "2", rootfs)
    broken = dict(MACHINE, command=["/usr/bin/sciops-no-such-server"])
    v3 = _publish(registry, run_module, APP, "3.0", "2", rootfs, machine=broken)

    first = _rollout(ansible, fleet, v1, hosts)
    assert first.rc == 0, first.stdout[-4000:]
    for node in nodes:
        assert _answer(fleet.address(node), "current") == f"{APP} 1.0"
        assert _machines(fleet, node) == [f"{APP}-current"]
        # Inside: the machine's own root (busybox only), the release's config bound read-only, the data directory.
        script = ("cat /srv/www/version; ls /usr/bin; echo x > /srv/www/version 2>/dev/null || echo read-only; "
                  "echo kept > /data/note && echo written")
        inside = _inside(fleet, node, f"{APP}-current", script).stdout.split()
        assert inside == [APP, "1.0", "busybox", "sh", "test", "read-only", "written"], inside
    assert fleet.ssh(nodes[0], f"cat {STATE}/_data/{APP}/note").stdout == "kept\n"

    # A rerun changes nothing: the machine is not restarted.
    leader = fleet.ssh(nodes[0], f"machinectl show --property=Leader --value {APP}-current").stdout
    again = _rollout(ansible, fleet, v1, hosts)
    assert again.rc == 0 and sum(again.stats["changed"].values()) == 0, again.stdout[-3000:]
    assert fleet.ssh(nodes[0], f"machinectl show --property=Leader --value {APP}-current").stdout == leader

    # A machine stopped behind the collection's back: that node is not left alone, and the rerun starts it again.
    fleet.ssh(nodes[1], f"systemctl stop systemd-nspawn@{APP}-current.service")
    assert _answer(fleet.address(nodes[1]), "current", timeout=0) is None
    healed = _rollout(ansible, fleet, v1, hosts)
    assert healed.rc == 0, healed.stdout[-3000:]
    assert healed.stats["changed"].get(nodes[0], 0) == 0 and healed.stats["changed"].get(nodes[1], 0) > 0
    assert _answer(fleet.address(nodes[1]), "current") == f"{APP} 1.0"

    # Protocol 2 with oldstable kept: both machines run, each on its slot's port, sharing the data directory.
    second = _rollout(ansible, fleet, v2, hosts)
    assert second.rc == 0, second.stdout[-4000:]
    for node in nodes:
        address = fleet.address(node)
        assert (_answer(address, "current"), _answer(address, "oldstable")) == (f"{APP} 2.0", f"{APP} 1.0")
        assert _machines(fleet, node) == [f"{APP}-current", f"{APP}-oldstable"]
        assert _inside(fleet, node, f"{APP}-current", "cat /data/note").stdout == "kept\n"

    # The status says which machine runs in which slot, and sees a changed setting.
    status = ansible(fleet.inventory_path, hosts=nodes[0], module="sciops.fleet.release_status",
                     module_args=json.dumps({"application": APP})).ok[nodes[0]][0]["status"]
    assert {slot: (m["machine"], m["state"], m["runs_slot_release"], m["settings"])
            for slot, m in status["machines"].items()} == {
        "current": (f"{APP}-current", "active", True, "as installed"),
        "oldstable": (f"{APP}-oldstable", "active", True, "as installed")}
    fleet.ssh(nodes[0], f"echo '# local' >> /etc/systemd/nspawn/{APP}-current.nspawn")
    page = ansible(fleet.inventory_path, playbook=STATUS, extravars={
        "status_application": APP, "status_hosts": hosts, "status_json_path": str(tmp_path / "status.json")})
    assert page.rc == 0, page.stdout[-3000:]
    rows = {row["node"]: row for row in json.loads((tmp_path / "status.json").read_text(encoding="utf-8"))["nodes"]}
    assert rows[nodes[0]]["machines"]["current"]["settings"] == "changed"
    assert rows[nodes[1]]["machines"]["oldstable"]["state"] == "active"
    assert f"machine {APP}-current active, settings changed" in page.stdout

    # A release whose machine does not start fails its health check; every node is put back on the machine it ran.
    failed = _rollout(ansible, fleet, v3, hosts)
    assert failed.rc != 0
    assert f"systemd-nspawn@{APP}-current.service is failed" in failed.stdout, failed.stdout[-4000:]
    for node in nodes:
        address = fleet.address(node)
        assert (_answer(address, "current"), _answer(address, "oldstable")) == (f"{APP} 2.0", f"{APP} 1.0")
        record = json.loads(fleet.ssh(node, f"cat /etc/ansible/facts.d/sciops_fleet_{APP}.fact").stdout)
        assert record["current"]["version"] == "2.0"
        assert [h["result"] for h in record["history"] if h.get("event") == "switch"][-2:] == ["switched", "switched"]
    # The node's own settings file was put back as the release says.
    assert "# local" not in fleet.ssh(nodes[0], f"cat /etc/systemd/nspawn/{APP}-current.nspawn").stdout

    # Every node on protocol 2: the retire gate stops the old machine and removes it.
    retired = ansible(fleet.inventory_path, playbook=RETIRE, extravars={
        "retire_oldstable_application": APP, "retire_oldstable_hosts": hosts})
    assert retired.rc == 0, retired.stdout[-4000:]
    for node in nodes:
        assert _answer(fleet.address(node), "oldstable", timeout=0) is None
        assert _machines(fleet, node) == [f"{APP}-current"]
        assert fleet.ssh(node, f"test -e /etc/systemd/nspawn/{APP}-oldstable.nspawn", check=False).returncode == 1

    # Back to 1.0 by name, then forward keeping one release: the data directory survives rollback and prune.
    back = ansible(fleet.inventory_path, playbook=ROLLBACK, extravars={
        "rollback_application": APP, "rollback_to": "1.0", "rollback_hosts": hosts})
    assert back.rc == 0, back.stdout[-4000:]
    pruned = _rollout(ansible, fleet, v2, hosts, rollout_keep_releases=1, rollout_keep_oldstable=False)
    assert pruned.rc == 0, pruned.stdout[-4000:]
    for node in nodes:
        assert _answer(fleet.address(node), "current") == f"{APP} 2.0"
        assert fleet.ssh(node, f"ls {STATE}/{APP}/releases").stdout.split() == [
            os.path.basename(fleet.ssh(node, f"readlink {STATE}/{APP}/current").stdout.strip())]
        assert _inside(fleet, node, f"{APP}-current", "cat /data/note").stdout == "kept\n"


def test_an_oci_image_becomes_the_machine_and_a_hostile_layer_changes_nothing(
        registry, fleet, ansible, run_module, tmp_path, machine_nodes):
    node = machine_nodes[0]
    lower = _base_members() + [("srv/old.txt", "file", {"data": b"old"}), ("opt", "dir"), ("opt/d", "dir"),
                               ("opt/d/x", "file", {"data": b"x"}), ("opt/d/y", "file", {"data": b"y"})]
    upper = [("srv/.wh.old.txt", "file"), ("opt/d", "dir"), ("opt/d/.wh..wh..opq", "file"),
             ("opt/d/z", "file", {"data": b"z"}), ("srv/new.txt", "file", {"data": b"new"})]
    image = _push_oci_image(registry, run_module, tmp_path, "machoci-rootfs", [lower, upper])
    good = _publish(registry, run_module, OCI_APP, "1.0", "1", image)
    rolled = _rollout(ansible, fleet, good, node)
    assert rolled.rc == 0, rolled.stdout[-4000:]
    tree = f"{STATE}/{OCI_APP}/current/rootfs/root"
    assert fleet.ssh(node, f"cd {tree} && ls srv; ls opt/d").stdout.split() == [
        "new.txt", "www", "z"], "the whiteouts hide old.txt, x and y"
    assert fleet.ssh(node, f"find {tree} -name '.wh.*' | wc -l").stdout.strip() == "0"
    assert _answer(fleet.address(node), "current") == f"{OCI_APP} 1.0"

    # Hostile upper layers: a link of the lower layer leading out, then a file through it; a member climbing out with
    # '..'; a device node. Each install fails naming the member; nothing appears outside; current keeps running.
    fleet.ssh(node, "mkdir -p /tmp/outside")
    hostile = {
        "through-link": ([[("etc/escape", "link", {"link": "/tmp/outside"})], [("etc/escape/planted", "file", {"data": b"!"})]],
                         "etc/escape/planted"),
        "dot-dot": ([[("../../../../tmp/outside/planted", "file", {"data": b"!"})]], "../../../../tmp/outside/planted"),
        "device": ([[("dev/sda", "device")]], "dev/sda is a block device node"),
    }
    for number, (case, (extra, named)) in enumerate(hostile.items(), start=2):
        bad_image = _push_oci_image(registry, run_module, tmp_path, f"machoci-{case}", [lower] + extra)
        bad = _publish(registry, run_module, OCI_APP, f"{number}.0", "1", bad_image)
        refused = _rollout(ansible, fleet, bad, node)
        assert refused.rc != 0 and named in refused.stdout, (case, refused.stdout[-3000:])
        assert fleet.ssh(node, "ls -A /tmp/outside").stdout == "", case
        assert _answer(fleet.address(node), "current") == f"{OCI_APP} 1.0", case
        assert fleet.ssh(node, f"ls -A {STATE}/{OCI_APP}/releases | grep -c staging", check=False).stdout.strip() == "0"
