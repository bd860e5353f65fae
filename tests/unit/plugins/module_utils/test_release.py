# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release manifests: every wrong field gets its own clear message; node-side install, switch and prune rules."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import ArchiveError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (
    ReleaseError,
    canonical_json,
    release_dir_name,
    validate_release,
)
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.health import run_health_checks
from ansible_collections.sciops.fleet.plugins.module_utils._release.install import render as _render
from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.extract import extract as _extract
from ansible_collections.sciops.fleet.plugins.module_utils._release.preflight import preflight
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import FILES_RECORD, AppState, fact_name
from ansible_collections.sciops.fleet.plugins.module_utils._release.switch import _prune_plan, retire_slot, switch_release

DIGEST = "sha256:" + "ab" * 32
GOOD = {
    "schema_version": 1,
    "application": "hello",
    "version": "1.0.0~rc1",
    "protocol": "3",
    "role": "server",
    "artifacts": [{"name": "bin", "reference": f"127.0.0.1:5000/build/hello@{DIGEST}", "install": "extract"}],
    "configs": [{"source": "bin/hello.conf.in", "dest": "etc/hello.conf", "vars": {"port": "7000"}, "mode": "0640"}],
    "services": ["hello@current.service"],
    "requires": {"arch": ["x86_64"], "os_family": ["Debian"], "disk_mb": 10, "memory_mb": 64, "commands": ["tar"],
                 "kernel": ["squashfs"]},
    "health": [{"tcp": "${address}:7000", "timeout": 2, "retries": 3, "delay": 0.5},
               {"http": "http://127.0.0.1:7000/", "expect_status": 204},
               {"command": "true"}],
}


def test_a_good_manifest_is_canonical_and_stable():
    release = validate_release(copy.deepcopy(GOOD))
    assert release["protocol"] == "3" and release["requires"]["os_family"] == ["debian"]
    assert release["artifacts"][0]["digest"] == DIGEST
    assert release["configs"][0]["vars"] == {"port": "7000"}
    assert canonical_json(release) == canonical_json(validate_release(copy.deepcopy(GOOD)))
    assert release_dir_name(release, DIGEST) == "1.0.0~rc1-abababababab"
    # What nodes read is itself a valid manifest, and validates to itself.
    assert validate_release(json.loads(canonical_json(release))) == release


# Each case breaks one field; the message must name that field.
BAD = [
    ("schema_version", lambda m: m.update(schema_version=2), "schema_version: must be 1"),
    ("unknown top-level field", lambda m: m.update(colour="blue"), "colour: unknown field"),
    ("application missing", lambda m: m.pop("application"), "application: is required"),
    ("application with capitals", lambda m: m.update(application="Hello"), "application: 'Hello' is not valid"),
    ("version not starting with a digit", lambda m: m.update(version="v1"), "version: 'v1' is not valid"),
    ("protocol as a list", lambda m: m.update(protocol=[1]), "protocol: must be a string"),
    ("version as a YAML number", lambda m: m.update(version=1.1), "version: must be a string, not the float 1.1 that YAML read; quote it"),
    ("protocol as a YAML octal", lambda m: m.update(protocol=8), "protocol: must be a string, not the int 8 that YAML read; quote it"),
    ("role as a YAML boolean", lambda m: m.update(role=True), "role: must be a string, not the bool True that YAML read; quote it"),
    ("health name as a number", lambda m: m["health"][0].update(name=7), "health[0].name: must be a string, not the int 7"),
    ("config var as a YAML integer", lambda m: m["configs"][0]["vars"].update(port=8), "configs[0].vars.port: must be a string, not the int 8"),
    ("config over the node's mounts record", lambda m: m["configs"][0].update(dest=".sciops-mounts.json"),
     "configs[0].dest: '.sciops-mounts.json' would overwrite the node's own records"),
    ("config over release.json", lambda m: m["configs"][0].update(dest="release.json"), "configs[0].dest: 'release.json' would overwrite"),
    ("config under .images", lambda m: m["configs"][0].update(dest=".images/x.squashfs"), "configs[0].dest: '.images/x.squashfs' would overwrite"),
    ("config var as a YAML float", lambda m: m["configs"][0]["vars"].update(ratio=1.1), "configs[0].vars.ratio: must be a string, not the float 1.1"),
    ("arch as a number", lambda m: m["requires"].update(arch=[386]), "requires.arch: must be a list of non-empty strings (quote 386"),
    ("mount point in a system directory", lambda m: m["artifacts"][0].update(install="unpack", mount_point="/lib64"),
     "artifacts[0].mount_point: '/lib64' is the system directory /lib64, which a release may never replace"),
    ("mount point under /usr", lambda m: m["artifacts"][0].update(install="unpack", mount_point="/usr/lib/x"),
     "artifacts[0].mount_point: '/usr/lib/x' is in the system directory /usr"),
    ("mount point in the state root", lambda m: m["artifacts"][0].update(install="mount", mount_point="/var/lib/sciops-fleet/x"),
     "artifacts[0].mount_point: '/var/lib/sciops-fleet/x' is in the system directory /var"),
    ("mount point at the root", lambda m: m["artifacts"][0].update(install="mount", mount_point="/"),
     "artifacts[0].mount_point: '/' is the system directory /"),
    ("mount point top-level", lambda m: m["artifacts"][0].update(install="mount", mount_point="/opt"),
     "artifacts[0].mount_point: '/opt' is a top-level directory"),
    ("mount point with a dot", lambda m: m["artifacts"][0].update(install="mount", mount_point="/opt/./x"),
     "artifacts[0].mount_point: '/opt/./x' must be an absolute path of its own"),
    ("role with a space", lambda m: m.update(role="big server"), "role: 'big server' is not valid"),
    ("no artifacts", lambda m: m.update(artifacts=[]), "artifacts: must be a list with at least one entry"),
    ("artifact by tag", lambda m: m["artifacts"][0].update(reference="127.0.0.1:5000/build/hello:1.0"),
     "artifacts[0].reference: '127.0.0.1:5000/build/hello:1.0' names no digest"),
    ("artifact reference without registry", lambda m: m["artifacts"][0].update(reference=f"hello@{DIGEST}"),
     "artifacts[0].reference:"),
    ("artifact install kind", lambda m: m["artifacts"][0].update(install="copy"), "artifacts[0].install: 'copy' is not one of"),
    ("artifact unknown field", lambda m: m["artifacts"][0].update(sha="x"), "artifacts[0].sha: unknown field"),
    ("duplicate artifact", lambda m: m["artifacts"].append(dict(m["artifacts"][0])), "artifacts[1].name: 'bin' is used by another"),
    ("config escaping the release", lambda m: m["configs"][0].update(dest="../etc/passwd"), "configs[0].dest: '../etc/passwd' must be a relative path"),
    ("config from no artifact", lambda m: m["configs"][0].update(source="lib/x.in"), "configs[0].source: 'lib/x.in' must start with the name of an artifact"),
    ("config mode as a number", lambda m: m["configs"][0].update(mode=640), "configs[0].mode: 640 must be an octal mode"),
    ("config vars not a mapping", lambda m: m["configs"][0].update(vars=["port"]), "configs[0].vars: must be a mapping"),
    ("service not a unit", lambda m: m.update(services=["hello"]), "services[0]: 'hello' is not a systemd unit name"),
    ("requires unknown", lambda m: m["requires"].update(gpu=True), "requires.gpu: unknown field"),
    ("negative disk", lambda m: m["requires"].update(disk_mb=-5), "requires.disk_mb: must be a whole number of at least 0"),
    ("health with two kinds", lambda m: m["health"][0].update(http="http://x/"), "health[0]: must have exactly one of"),
    ("tcp without port", lambda m: m["health"][0].update(tcp="localhost"), "health[0].tcp: 'localhost' must be HOST:PORT"),
    ("http without scheme", lambda m: m["health"][1].update(http="127.0.0.1:7000"), "health[1].http: '127.0.0.1:7000' must be an http://"),
    ("zero timeout", lambda m: m["health"][2].update(timeout=0), "health[2].timeout: must be a number of at least 0.1"),
]


@pytest.mark.parametrize("case,breaker,expected", BAD, ids=[case for case, _b, _e in BAD])
def test_each_wrong_field_is_named_with_what_to_do(case, breaker, expected):
    manifest = copy.deepcopy(GOOD)
    breaker(manifest)
    with pytest.raises(ReleaseError) as error:
        validate_release(manifest, "hello.yaml")
    message = str(error.value)
    assert message.startswith("release manifest hello.yaml is not valid: "), case
    assert expected in message, message


def test_every_problem_is_reported_at_once():
    manifest = copy.deepcopy(GOOD)
    manifest.update(version="x", role="A B")
    manifest["artifacts"][0]["install"] = "copy"
    with pytest.raises(ReleaseError) as error:
        validate_release(manifest)
    assert len(error.value.problems) == 3


def test_render_names_the_missing_variable():
    assert _render("port=${port} $$HOME", {"port": "7"}, "cfg") == "port=7 $HOME"
    with pytest.raises(NodeError, match=r"cfg: the template uses \$\{peers\}"):
        _render("peers=${peers}", {}, "cfg")


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("members", [
    [("../escape", b"x", "file")],
    [("/abs", b"x", "file")],
    [("link", "/etc/passwd", "symlink")],
    [("sub/link", "../../outside", "symlink")],
])
def test_archives_cannot_write_outside_the_release(tmp_path, members):
    archive = tmp_path / "a.tar.gz"
    _tar(archive, members)
    dest = tmp_path / "release"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="outside the release"):
        _extract(str(archive), str(dest))
    assert not (tmp_path / "escape").exists()


def test_archives_extract_inside(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _tar(archive, [("bin/tool", b"#!/bin/sh\n", "file"), ("bin/alias", "tool", "symlink")])
    dest = tmp_path / "release"
    dest.mkdir()
    _extract(str(archive), str(dest))
    assert (dest / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert os.readlink(dest / "bin" / "alias") == "tool"


def _installed(state, name, digest, status="installed", last_active="", protocol="1"):
    os.makedirs(state.release_path(name))
    with open(os.path.join(state.release_path(name), FILES_RECORD), "w", encoding="utf-8") as handle:
        handle.write("{}")
    record = state.load()
    record["releases"][name] = {"digest": digest, "version": name, "protocol": protocol, "status": status,
                                "installed_at": last_active, "last_active": last_active}
    state.save(record)


def _digest(n):
    return "sha256:" + f"{n:02d}" * 32


def test_switch_is_recorded_and_prunes_only_what_nothing_holds(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n, status in ((1, "good"), (2, "good"), (3, "failed"), (4, "good"), (5, "installed")):
        _installed(state, f"r{n}", _digest(n), status, f"2026-01-0{n}T00:00:00Z")
    state.set_slot("oldstable", "r1")
    outcome = switch_release(state, _digest(5), keep=3, protect=[_digest(2)], reason="rollout")
    assert outcome["changed"] and outcome["to"]["name"] == "r5"
    # Held: r5 (current), r1 (oldstable), r2 (protected). Failed r3 goes; r4 would be the 4th usable: it goes.
    assert outcome["pruned"] == ["r3", "r4"]
    assert sorted(os.listdir(state.releases_dir)) == ["r1", "r2", "r5"]
    with open(state.fact_path, encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["current"]["digest"] == _digest(5)
    assert record["history"][-1]["event"] == "switch" and record["history"][-1]["to"]["name"] == "r5"
    assert os.readlink(os.path.join(state.app_dir, "current")) == "releases/r5"
    assert fact_name("my-app.v2") == "sciops_fleet_my_app_v2"
    # Switching again to the same release changes nothing, not even the record file.
    before = os.stat(state.fact_path).st_mtime_ns
    again = switch_release(state, _digest(5), keep=3, protect=[_digest(2)])
    assert not again["changed"] and again["pruned"] == []
    assert os.stat(state.fact_path).st_mtime_ns == before


def test_a_new_protocol_keeps_the_release_it_leaves_as_oldstable(tmp_path):
    state = AppState("srv", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n, protocol in ((1, "1"), (2, "2")):
        _installed(state, f"r{n}", _digest(n), "good", f"2026-01-0{n}T00:00:00Z", protocol=protocol)
    switch_release(state, _digest(1), keep_oldstable=True)
    assert state.slot_target("oldstable") is None  # nothing ran before
    predicted = switch_release(state, _digest(2), keep=1, keep_oldstable=True, check_mode=True)
    assert predicted["oldstable"]["name"] == "r1" and "r1" not in predicted["pruned"]
    assert state.slot_target("oldstable") is None and state.slot_target("current") == "r1"
    # Protocol 1 -> 2: r1 becomes oldstable, and keep=1 does not prune it (a slot holds it).
    moved = switch_release(state, _digest(2), keep=1, keep_oldstable=True)
    assert (state.slot_target("current"), state.slot_target("oldstable")) == ("r2", "r1")
    assert moved["oldstable"]["name"] == "r1" and moved["oldstable_from"] is None and "r1" not in moved["pruned"]
    record = state.load()
    assert record["oldstable"]["protocol"] == "1"
    assert [(h["slot"], h["to"]["name"]) for h in record["history"][-2:]] == [("oldstable", "r1"), ("current", "r2")]
    # Same protocol 2 -> 2: oldstable stays on protocol 1.
    _installed(state, "r3", _digest(3), "good", "2026-01-03T00:00:00Z", protocol="2")
    same = switch_release(state, _digest(3), keep=3, keep_oldstable=True)
    assert state.slot_target("oldstable") == "r1" and same["oldstable"]["name"] == "r1" and same["oldstable_from"] is None
    # Without keep_oldstable a new protocol leaves oldstable alone.
    _installed(state, "r4", _digest(4), "good", "2026-01-04T00:00:00Z", protocol="3")
    switch_release(state, _digest(4), keep=3)
    assert state.slot_target("oldstable") == "r1"


def test_retiring_oldstable_empties_the_slot_and_lets_prune_take_it(tmp_path):
    state = AppState("srv", str(tmp_path / "state"), str(tmp_path / "facts"))
    _installed(state, "r1", _digest(1), "good", "2026-01-01T00:00:00Z", protocol="1")
    _installed(state, "r2", _digest(2), "good", "2026-01-02T00:00:00Z", protocol="2")
    switch_release(state, _digest(1))
    switch_release(state, _digest(2), keep=1, keep_oldstable=True)
    assert retire_slot(state, check_mode=True)["changed"] and state.slot_target("oldstable") == "r1"
    with pytest.raises(NodeError, match="current is never emptied"):
        retire_slot(state, "current")
    retired = retire_slot(state, keep=1, reason="retire")
    assert retired["changed"] and retired["from"]["name"] == "r1" and retired["pruned"] == ["r1"]
    assert state.slot_target("oldstable") is None and state.slot_target("current") == "r2"
    record = state.load()
    assert record["oldstable"] is None and record["history"][-1]["event"] == "retire"
    assert not retire_slot(state)["changed"]


def test_check_mode_switch_touches_nothing(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    _installed(state, "r1", _digest(1), "good", "2026-01-01T00:00:00Z")
    predicted = switch_release(state, _digest(1), check_mode=True)
    assert predicted["changed"] and state.slot_target("current") is None


def test_switch_refuses_a_release_that_is_not_installed(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    with pytest.raises(NodeError, match="is not installed on this node"):
        switch_release(state, _digest(9))


def test_prune_keeps_the_newest_usable_releases(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in range(1, 6):
        _installed(state, f"r{n}", _digest(n), "good", f"2026-01-0{n}T00:00:00Z")
    state.set_slot("current", "r5")
    assert _prune_plan(state, state.load(), 2, (), {}) == ["r1", "r2", "r3"]


def test_preflight_gives_every_reason(tmp_path):
    release = validate_release(copy.deepcopy(GOOD))
    release["requires"].update(arch=["sparc64"], os_family=["solaris"], commands=["no-such-command-here"],
                               kernel=["nosuchfs", "/no/such/path"], memory_mb=10 ** 9)
    ok, reasons, facts = preflight(release, str(tmp_path / "nowhere" / "state"), [10 ** 15])
    assert not ok
    joined = " | ".join(reasons)
    for needle in ("architecture", "family solaris", "MiB free", "memory", "no-such-command-here", "nosuchfs", "/no/such/path"):
        assert needle in joined, joined
    assert facts["arch"]


def test_health_checks_retry_then_report(tmp_path):
    release = validate_release(copy.deepcopy(GOOD))
    release["health"] = [
        {"command": f"test -e {tmp_path}/ready", "name": "ready", "timeout": 5, "retries": 2, "delay": 0},
        {"tcp": "${address}:1", "name": "port", "timeout": 1, "retries": 0, "delay": 0},
    ]
    calls = []

    def sleep(_seconds):
        calls.append(1)
        (tmp_path / "ready").write_text("", encoding="utf-8")

    results = run_health_checks(release, {"address": "127.0.0.1"}, sleep=sleep)
    assert results[0]["ok"] and results[0]["attempts"] == 2 and calls == [1]
    assert not results[1]["ok"] and "refused" in results[1]["detail"].lower()


def test_previous_and_versions_name_installed_releases(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.switch import choose_release  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in (1, 2, 3):
        _installed(state, f"r{n}", _digest(n), "good", f"2026-01-0{n}T00:00:00Z")
    with pytest.raises(NodeError, match="no previous release"):
        choose_release(state, state.load(), "previous")
    switch_release(state, _digest(1))
    switch_release(state, _digest(2))
    switch_release(state, _digest(3))
    record = state.load()
    assert choose_release(state, record, "previous") == _digest(2)
    record["releases"]["r2"]["status"] = "failed"
    assert choose_release(state, record, "previous") == _digest(1)
    assert choose_release(state, record, "r3") == _digest(3)  # the test's versions are the names
    with pytest.raises(NodeError, match="9.9 is not installed on this node"):
        choose_release(state, record, "9.9")


def test_environment_images_are_mounted_or_unpacked_at_their_mount_point():
    from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import ReleaseError, validate_release
    digest = "sha256:" + "a" * 64
    base = {"schema_version": 1, "application": "env", "version": "1.0", "protocol": "1"}
    good = validate_release(dict(base, artifacts=[
        {"name": "env", "reference": f"r.example/build/env@{digest}", "install": "mount", "mount_point": "/opt/envs/env/"}]))
    assert good["artifacts"][0]["mount_point"] == "/opt/envs/env" and good["artifacts"][0]["install"] == "mount"
    plain = validate_release(dict(base, artifacts=[{"name": "bin", "reference": f"r.example/b@{digest}"}]))
    assert "mount_point" not in plain["artifacts"][0]  # older releases keep their canonical form and id
    with pytest.raises(ReleaseError) as caught:
        validate_release(dict(base, artifacts=[
            {"name": "a", "reference": f"r.example/a@{digest}", "install": "files", "mount_point": "/opt/a"},
            {"name": "b", "reference": f"r.example/b@{digest}", "install": "unpack", "mount_point": "opt/b"}]))
    assert "artifacts[0].mount_point: only an environment image has a mount point" in str(caught.value)
    assert "artifacts[1].mount_point: 'opt/b' must be an absolute path" in str(caught.value)


def _layout_release(tmp_path, payload):
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._oras.artifact import describe_file, push_artifact  # pylint: disable=import-outside-toplevel
    source = tmp_path / "in" / "tool.bin"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    source.chmod(0o644)
    store = LayoutStore(str(tmp_path / "layout"), create=True)
    pushed = push_artifact(store, None, ["1.0"], [describe_file(str(source))])
    return validate_release({"schema_version": 1, "application": "hello", "version": "1.0", "protocol": "1",
                             "artifacts": [{"name": "bin", "install": "files",
                                            "reference": f"oci-layout:{tmp_path / 'layout'}@{pushed['digest']}"}]})


def test_install_links_files_from_the_cache_and_records_their_verified_digest(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.files import drift  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._release.install import install_release  # pylint: disable=import-outside-toplevel
    payload = bytes(range(256)) * 4096
    release = _layout_release(tmp_path, payload)
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    cache = tmp_path / "cache"
    first = install_release(state, release, _digest(1), {}, cache_dir=str(cache))
    placed = os.path.join(first["path"], "bin", "tool.bin")
    # One copy of the bytes on disk: the release file is the cache entry's inode, not a second copy.
    assert os.stat(placed).st_nlink == 2 and open(placed, "rb").read() == payload
    with open(os.path.join(first["path"], FILES_RECORD), encoding="utf-8") as handle:
        recorded = json.load(handle)["files"]["bin/tool.bin"]
    assert recorded["digest"] == digest_file(placed)[0] and recorded["size"] == len(payload)
    assert drift(state, first["name"]) == {"changed": [], "missing": [], "added": []}
    # A damaged cache entry is never linked into a new release: it is checked, dropped and fetched again.
    entry = [os.path.join(base, n) for base, _d, names in os.walk(cache / "blobs") for n in names
             if os.path.samefile(os.path.join(base, n), placed)][0]
    shutil.rmtree(first["path"])
    with open(entry, "r+b") as handle:
        handle.write(b"\xff" if payload[:1] != b"\xff" else b"\x00")
    again = install_release(AppState("hello", str(tmp_path / "state2"), str(tmp_path / "facts2")), release, _digest(1), {},
                            cache_dir=str(cache))
    with open(os.path.join(again["path"], "bin", "tool.bin"), "rb") as handle:
        assert handle.read() == payload


def test_a_node_running_the_release_healthy_is_found_from_its_record(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.status import running_release  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    _installed(state, "r1", _digest(1), "installed", "2026-01-01T00:00:00Z")
    switch_release(state, _digest(1))
    where = (str(tmp_path / "state"), str(tmp_path / "facts"))
    assert running_release(_digest(1), *where) is None  # not yet known to be healthy
    record = state.load()
    record["releases"]["r1"]["status"] = "good"
    state.save(record)
    assert running_release(_digest(1), *where) == {"application": "hello", "version": "r1", "oldstable": None}
    assert running_release(_digest(2), *where) is None
    os.unlink(os.path.join(state.release_path("r1"), FILES_RECORD))  # an unfinished tree is not running
    assert running_release(_digest(1), *where) is None
    assert running_release(_digest(1), str(tmp_path / "state"), str(tmp_path / "nowhere")) is None


def test_mount_points_lie_below_the_allowed_prefixes_and_never_in_system_directories():
    from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (  # pylint: disable=import-outside-toplevel
        DEFAULT_MOUNT_POINT_PREFIXES,
        check_mount_point_prefixes,
    )
    digest = "sha256:" + "a" * 64

    def manifest(mount_point):
        return {"schema_version": 1, "application": "env", "version": "1.0", "protocol": "1", "artifacts": [
            {"name": "env", "reference": f"r.example/build/env@{digest}", "install": "unpack", "mount_point": mount_point}]}

    defaults = list(DEFAULT_MOUNT_POINT_PREFIXES)
    assert validate_release(manifest("/opt/envs/env"), mount_point_prefixes=defaults)["artifacts"][0]["mount_point"] == "/opt/envs/env"
    assert validate_release(manifest("/user-environment/env"), mount_point_prefixes=defaults)
    for refused in ("/lib64", "/bin/x", "/etc/foo", "/var/lib/sciops-fleet/x", "/home/alice", "/tmp/x"):
        with pytest.raises(ReleaseError, match="system directory"):
            validate_release(manifest(refused), mount_point_prefixes=defaults)
    for refused in ("/scratch/env", "/usr/local/x"):
        with pytest.raises(ReleaseError, match=f"'{refused}' is not below an allowed mount point prefix \\(/opt, /user-environment, /apps\\)"):
            validate_release(manifest(refused), mount_point_prefixes=defaults)
    # A node does not know the site's list: it refuses system directories only; /usr/local is the site's.
    assert validate_release(manifest("/scratch/env"))
    site = check_mount_point_prefixes(["/usr/local/envs/", "/scratch"])
    assert site == ["/usr/local/envs", "/scratch"]
    assert validate_release(manifest("/usr/local/envs/env"), mount_point_prefixes=site)
    assert validate_release(manifest("/usr/local/envs/env"))
    with pytest.raises(OciError) as caught:
        check_mount_point_prefixes(["/", "/usr", "/var/lib", "/etc/envs", "opt", "/usr/local"])
    message = str(caught.value)
    assert message.startswith("mount_point_prefixes: ")
    for expected in ("'/' is the system directory /", "'/usr' is the system directory /usr",
                     "'/var/lib' is in the system directory /var", "'/etc/envs' is in the system directory /etc",
                     "'opt' must be an absolute path", "'/usr/local' is the system directory /usr/local"):
        assert expected in message


def test_a_release_larger_than_a_node_reads_is_refused():
    from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import (  # pylint: disable=import-outside-toplevel
        MAX_RELEASE_SIZE,
        release_document,
    )
    from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import MAX_MANIFEST_SIZE  # pylint: disable=import-outside-toplevel
    assert MAX_RELEASE_SIZE == MAX_MANIFEST_SIZE == 4 * 1024 * 1024
    release = validate_release(dict(copy.deepcopy(GOOD), description="x" * MAX_RELEASE_SIZE))
    with pytest.raises(ReleaseError, match=r"release.json would be 419\d+ bytes \(4.0 MiB\), more than the 4194304 bytes \(4 MiB\) a node reads"):
        release_document(release, "big.yaml")
    small = validate_release(copy.deepcopy(GOOD))
    assert release_document(small) == canonical_json(small)


# -- the record: shape, repair, order -------------------------------------------------------------


@pytest.mark.parametrize("text, reason", [
    ("[]", "it is an array, not an object"),
    ('{"releases": [], "history": {}}', "releases is an array, not an object"),
    ('{"releases": {"r1": {"digest": 7, "status": "good"}}}', "releases.r1.digest is 7"),
    ('{"releases": {"r1": {"digest": "sha256:' + "ab" * 32 + '", "status": "fine"}}}', "releases.r1.status is 'fine'"),
    ('{"releases": {"r1": {"digest": "sha256:' + "ab" * 32 + '", "status": "good", "version": 1.1}}}',
     "releases.r1.version is a number, not a string"),
    ('{"history": [1]}', "history[0] is a number"),
    ('{"current": "r1"}', "current is a string, not null or an object"),
    ('{"seq": "3"}', "seq is a string, not a number"),
    ("{", "not JSON"),
])
def test_a_record_of_the_wrong_shape_is_reported_damaged_not_a_crash(tmp_path, text, reason):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import RecordDamaged  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    os.makedirs(state.facts_dir)
    with open(state.fact_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    with pytest.raises(RecordDamaged) as caught:
        state.load()
    assert reason in str(caught.value) and state.fact_path in str(caught.value) and "rebuild" in str(caught.value)


def test_an_installed_but_unrecorded_release_is_adopted_and_an_incomplete_one_installed_again(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.install import install_release  # pylint: disable=import-outside-toplevel
    release = _layout_release(tmp_path, b"tool bytes\n" * 1000)
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    first = install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))
    record = state.load()
    entry = record["releases"][first["name"]]
    assert entry["installed_seq"] == record["seq"] == 1
    record["releases"].clear()  # as after a kill between the rename and the record's save
    state.save(record)
    again = install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))
    assert again["changed"] and any("adopted" in r for r in again["repairs"]) and again["artifacts"] == []
    adopted = state.load()["releases"][first["name"]]
    assert (adopted["digest"], adopted["version"], adopted["protocol"], adopted["status"]) == (_digest(1), "1.0", "1", "installed")
    assert state.load()["history"][-1]["event"] == "adopt"
    assert not install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))["changed"]
    # An unrecorded directory whose file lost bytes does not verify: removed and installed again, whole.
    record = state.load()
    record["releases"].clear()
    state.save(record)
    placed = os.path.join(first["path"], "bin", "tool.bin")
    os.unlink(placed)
    with open(placed, "wb") as handle:
        handle.write(b"tool bytes\n")
    redone = install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))
    assert any("incomplete" in r and "size" in r for r in redone["repairs"]) and redone["artifacts"]
    with open(placed, "rb") as handle:
        assert handle.read() == b"tool bytes\n" * 1000


def test_a_failed_install_leaves_no_staging_tree(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.install import install_release  # pylint: disable=import-outside-toplevel
    release = _layout_release(tmp_path, b"x" * 100)
    release["configs"] = [{"source": "bin/missing.in", "dest": "etc/x.conf", "vars": {}, "mode": "0644"}]
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    with pytest.raises(NodeError, match="cannot read its template"):
        install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))
    assert os.listdir(state.releases_dir) == []


def test_a_damaged_or_missing_record_is_rebuilt_from_the_disk_and_kept_aside(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.install import install_release  # pylint: disable=import-outside-toplevel
    release = _layout_release(tmp_path, b"payload\n")
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    installed = install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))
    switch_release(state, _digest(1))
    with open(state.fact_path, "w", encoding="utf-8") as handle:
        handle.write('{"releases": [], "history": {}}')
    # Check mode (and every read-only path) predicts without writing.
    predicted = switch_release(AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts")), _digest(1), check_mode=True)
    assert predicted["changed"] and predicted["record_rebuilt"] is None
    with open(state.fact_path, encoding="utf-8") as handle:
        assert handle.read() == '{"releases": [], "history": {}}'
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    outcome = switch_release(state, _digest(1))
    assert outcome["changed"] and outcome["record_rebuilt"].startswith(state.fact_path + ".damaged-")
    with open(outcome["record_rebuilt"], encoding="utf-8") as handle:
        assert handle.read() == '{"releases": [], "history": {}}'
    record = state.load()
    assert record["current"]["name"] == installed["name"] and record["current"]["digest"] == _digest(1)
    assert [h["event"] for h in record["history"]] == ["rebuild", "adopt", "switch"] and record["history"][-1]["repaired"]
    # A record moved away is rebuilt too; nothing is kept aside then.
    os.unlink(state.fact_path)
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    assert install_release(state, release, _digest(1), {}, cache_dir=str(tmp_path / "cache"))["record_rebuilt"] == state.fact_path
    assert state.load()["releases"][installed["name"]]["digest"] == _digest(1)


def test_a_switch_killed_before_its_record_was_saved_is_repaired_by_a_rerun(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in (1, 2):
        _installed(state, f"r{n}", _digest(n), "good")
    switch_release(state, _digest(1))
    state.set_slot("current", "r2")  # the link moved; the record was never saved
    assert state.load()["current"]["name"] == "r1"
    rerun = switch_release(state, _digest(2))
    assert rerun["changed"] and rerun["repairs"]
    record = state.load()
    assert record["current"]["name"] == "r2"
    assert record["history"][-1]["repaired"] is True and "repaired" in record["history"][-1]["reason"]
    assert record["history"][-1]["from"]["name"] == "r1"
    assert not switch_release(state, _digest(2))["changed"]


def test_order_is_the_records_own_not_the_clocks(tmp_path, monkeypatch):
    from ansible_collections.sciops.fleet.plugins.module_utils._release import record as _release_record  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._release.switch import choose_release  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in range(1, 5):
        _installed(state, f"r{n}", _digest(n), "good")
    switch_release(state, _digest(1), keep=4)
    switch_release(state, _digest(2), keep=4)
    # The clock jumps 25 years back: later switches carry earlier times.
    monkeypatch.setattr(_release_record, "now", lambda: "2001-01-01T00:00:00Z")
    switch_release(state, _digest(3), keep=4)
    outcome = switch_release(state, _digest(4), keep=3)
    assert outcome["pruned"] == ["r1"]  # not r3, the release that really ran before
    record = state.load()
    assert choose_release(state, record, "previous") == _digest(3)
    seqs = [h["seq"] for h in record["history"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_legacy_record_without_sequence_numbers_is_ordered_by_its_history(tmp_path):
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in range(1, 4):
        _installed(state, f"r{n}", _digest(n), "good")
    os.makedirs(state.facts_dir, exist_ok=True)
    history = [{"time": "2030-01-01T00:00:00Z" if n == 1 else "2001-01-01T00:00:00Z", "event": "switch", "slot": "current",
                "from": None, "to": {"name": f"r{n}", "digest": _digest(n)}, "result": "switched"} for n in (1, 2, 3)]
    releases = {f"r{n}": {"digest": _digest(n), "version": f"r{n}", "protocol": "1", "status": "good",
                          "last_active": history[n - 1]["time"]} for n in (1, 2, 3)}
    with open(state.fact_path, "w", encoding="utf-8") as handle:
        json.dump({"application": "hello", "releases": releases, "history": history, "current": None, "oldstable": None}, handle)
    state.set_slot("current", "r3")
    record = state.load()
    assert record["seq"] == 3 and [h["seq"] for h in record["history"]] == [1, 2, 3]
    assert _prune_plan(state, record, 2, (), {}) == ["r1"]


def test_a_repeated_health_verdict_writes_nothing_and_a_verdict_needs_its_slot(tmp_path):
    from ansible_collections.sciops.fleet.plugins.module_utils._release.health import record_health  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    for n in (1, 2):
        _installed(state, f"r{n}", _digest(n))
    switch_release(state, _digest(1))
    assert record_health(state, _digest(1), True, [])
    before = (os.stat(state.fact_path).st_mtime_ns, len(state.load()["history"]))
    assert not record_health(state, _digest(1), True, [])
    assert (os.stat(state.fact_path).st_mtime_ns, len(state.load()["history"])) == before
    assert record_health(state, _digest(1), False, [{"name": "port", "ok": False}])
    assert state.load()["current"]["status"] == "failed"
    with pytest.raises(NodeError, match=r"r2\) of hello is not what current points to on this node \(r1\)"):
        record_health(state, _digest(2), True, [])
    with pytest.raises(NodeError, match="not what oldstable points to on this node \\(nothing\\)"):
        record_health(state, _digest(1), True, [], slot="oldstable")
    state.set_slot("oldstable", "r2")
    assert record_health(state, _digest(2), True, [], slot="oldstable")


def test_a_change_waits_a_bounded_time_for_the_lock_and_names_its_holder(tmp_path):
    import fcntl  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    state = AppState("hello", str(tmp_path / "state"), str(tmp_path / "facts"))
    with state.lock():
        pass
    lock_path = os.path.join(state.app_dir, ".lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({lock_path!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.pwrite(fd, b'process 4242 since then', 0)\n"
        "print('held', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NodeError, match=r"hello is being changed on this node by process 4242 since then; waited 0.3 s"):
            with state.lock(wait=0.3):
                pass
    finally:
        holder.kill()
        holder.wait()
    with state.lock(wait=0.3):  # free again once its holder is gone
        fd = os.open(lock_path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


def test_a_mounts_record_the_node_did_not_write_is_neither_mounted_nor_used_to_remove_files(tmp_path, monkeypatch):
    from ansible_collections.sciops.fleet.plugins.module_utils._common import command as _command  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._systemd import mount as _mount_units  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds import deactivate  # pylint: disable=import-outside-toplevel
    from ansible_collections.sciops.fleet.plugins.module_utils._release.kinds.mount import read_mounts  # pylint: disable=import-outside-toplevel
    release_dir = tmp_path / "releases" / "1.0-abc"
    release_dir.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    units = tmp_path / "units"
    units.mkdir()
    monkeypatch.setattr(_mount_units, "UNIT_DIR", str(units))
    calls = []
    monkeypatch.setattr(_command.subprocess, "run", lambda argv, **kw: calls.append(argv))
    hostile = [{"name": "env", "unit": os.path.relpath(str(victim), str(units)), "what": str(release_dir / ".images" / "env.squashfs"),
                "where": str(release_dir / "env"), "type": "squashfs", "options": "ro"},
               {"name": "env", "unit": "x.mount", "what": "/etc/shadow", "where": str(release_dir / "env"),
                "type": "squashfs", "options": "ro"},
               {"name": "env", "unit": "x.mount", "what": str(release_dir / ".images" / "env.squashfs"),
                "where": str(release_dir / "env"), "type": "squashfs", "options": "ro\nExecStart=/bin/sh"}]
    for entry in hostile:
        (release_dir / ".sciops-mounts.json").write_text(json.dumps([entry]))
        with pytest.raises(NodeError, match="is not this node's own"):
            read_mounts(str(release_dir))
        deactivate(str(release_dir))
        assert victim.read_text() == "keep\n"
    assert not calls
