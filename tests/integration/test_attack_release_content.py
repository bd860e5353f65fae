# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attacks on issue 12's fixes by someone who controls a release's content (its release.json, tarballs and images),
and by an unlucky operator (a kill while old releases are pruned). Each test states the outcome that must hold."""

from __future__ import annotations

import json

import pytest

from test_hostile_archives import _tarball

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

APP = "attack"
APP_DIR = f"/var/lib/sciops-fleet/{APP}"
FACT = f"/etc/ansible/facts.d/sciops_fleet_{APP}.fact"


def _push(registry, run_module, tag, path):
    pushed = run_module("oras_push", target=f"{registry.host}/build/{APP}:{tag}", files=[{"path": str(path)}],
                        plain_http=True)
    assert not pushed.get("failed"), pushed
    return f"{registry.host}/build/{APP}@{pushed['digest']}"


def _publish(registry, run_module, release):
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/{APP}",
                           plain_http=True)
    return published


def _release(version, artifacts, configs=()):
    return {"schema_version": 1, "application": APP, "version": version, "protocol": "1",
            "artifacts": artifacts, "configs": list(configs), "requires": {"disk_mb": 1}}


def _install(ansible, fleet, reference, hosts, interpreter=None):
    extravars = {"ansible_python_interpreter": interpreter} if interpreter else None
    return ansible(fleet.inventory_path, hosts=hosts, module="sciops.fleet.release_install",
                   module_args=json.dumps({"release": reference, "plain_http": True}), extravars=extravars)


@pytest.fixture
def node(fleet):
    name = fleet.names[0]

    def clean():
        fleet.ssh(name, f"systemctl list-units --all --plain --no-legend 'sciops*' >/dev/null 2>&1; "
                        f"rm -rf {APP_DIR} {FACT} {FACT}.damaged-* /tmp/sciops-attack-* /usr/local/bin/python3-attack*",
                  check=False)
    clean()
    yield name
    clean()


def test_a_config_cannot_write_the_mount_record_and_make_the_node_write_outside_its_release(
        registry, fleet, ansible, run_module, tmp_path, node):
    """A config whose dest is the collection's own record of mounts (.sciops-mounts.json, at the release's top) is
    read back by activate_images as trusted: its "unit" is joined to /etc/systemd/system unchecked, so '../' in it
    writes a file anywhere on the node as root (and deactivate_images would delete anywhere)."""
    mounts = [{"name": "x", "unit": "../../../tmp/sciops-attack-unit", "what": "/nonexistent", "where": "/nonexistent",
               "type": "none", "options": "bind"}]
    bundle = tmp_path / "mounts.json.in"
    bundle.write_text(json.dumps(mounts))
    reference = _push(registry, run_module, "mounts", bundle)
    release = _release("1.0.0", [{"name": "app", "reference": reference, "install": "files"}],
                       [{"source": "app/mounts.json.in", "dest": ".sciops-mounts.json"}])
    published = _publish(registry, run_module, release)
    if published.get("failed"):  # refusing such a dest at publish is one right answer
        assert ".sciops-mounts.json" in published["msg"], published
        return
    _install(ansible, fleet, published["reference"], node)
    written = fleet.ssh(node, "cat /tmp/sciops-attack-unit 2>/dev/null || true").stdout
    assert written == "", f"the release wrote /tmp/sciops-attack-unit on the node as root:\n{written}"


@pytest.mark.parametrize("dest", ["img/hostdir/sciops-attack-tree"])
def test_a_config_is_never_written_through_an_absolute_link_of_an_unpacked_image(
        registry, fleet, ansible, run_module, tmp_path, node, dest):
    """An environment image (install: unpack, a tar archive) is extracted with the tree policy, which keeps absolute
    link targets. A config dest through such a link (img/hostdir -> /tmp) is then written on the node's own file
    system, outside the release."""
    image = _tarball(tmp_path, "image", [("VERSION", "file", "1\n", 0o644), ("hostdir", "symlink", "/tmp")])
    template = tmp_path / "t.in"
    template.write_text("pwned by a release\n")
    release = _release("1.0.0", [
        {"name": "img", "reference": _push(registry, run_module, "img", image), "install": "unpack"},
        {"name": "cfg", "reference": _push(registry, run_module, "cfg", template), "install": "files"}],
        [{"source": "cfg/t.in", "dest": dest}])
    published = _publish(registry, run_module, release)
    assert not published.get("failed"), published
    _install(ansible, fleet, published["reference"], node)
    written = fleet.ssh(node, "cat /tmp/sciops-attack-tree 2>/dev/null || true").stdout
    assert written == "", "the release's config was written to /tmp/sciops-attack-tree on the node, outside the release"


def test_a_config_source_is_never_read_through_an_absolute_link_of_an_unpacked_image(
        registry, fleet, ansible, run_module, tmp_path, node):
    """The same link the other way: a config source img/secret -> /etc/shadow copies the node's shadow file into
    the release (0644 by default: readable by every user of the node)."""
    image = _tarball(tmp_path, "image2", [("VERSION", "file", "2\n", 0o644), ("secret", "symlink", "/etc/shadow")])
    release = _release("2.0.0", [
        {"name": "img", "reference": _push(registry, run_module, "img2", image), "install": "unpack"}],
        [{"source": "img/secret", "dest": "leak.txt"}])
    published = _publish(registry, run_module, release)
    assert not published.get("failed"), published
    _install(ansible, fleet, published["reference"], node)
    leaked = fleet.ssh(node, f"cat {APP_DIR}/releases/*/leak.txt 2>/dev/null; "
                             f"stat -c %a {APP_DIR}/releases/*/leak.txt 2>/dev/null || true").stdout
    assert "root:" not in leaked, f"the node's /etc/shadow was copied into the release:\n{leaked}"


def test_a_fifo_in_an_unpacked_image_fails_the_install_and_does_not_hang_it(
        registry, fleet, ansible, run_module, tmp_path, node):
    """The tree policy keeps fifos; the files record then opens every file of the release to fsync and hash it, and
    opening a fifo blocks for ever, holding the application's lock (every later run on the node waits on it too).
    The module runs under `timeout 120` here so that the test ends; a bounded answer is what must hold."""
    image = _tarball(tmp_path, "fifo", [("VERSION", "file", "3\n", 0o644), ("pipe", "fifo", "", 0o644)])
    release = _release("3.0.0", [{"name": "img", "reference": _push(registry, run_module, "fifo", image),
                                  "install": "unpack"}])
    published = _publish(registry, run_module, release)
    assert not published.get("failed"), published
    fleet.ssh(node, "printf '#!/bin/sh\\nexec timeout -s KILL 120 /usr/bin/python3 \"$@\"\\n' > /usr/local/bin/python3-attack"
                    " && chmod 0755 /usr/local/bin/python3-attack")
    run = _install(ansible, fleet, published["reference"], node, interpreter="/usr/local/bin/python3-attack")
    results = run.ok.get(node) or run.failed.get(node) or []
    assert results, run
    message = results[0].get("msg", "") + results[0].get("module_stderr", "") + results[0].get("module_stdout", "")
    assert "Killed" not in message and results[0].get("rc") != 137, \
        f"release_install hung on the fifo and was killed after 120 s: {results[0]}"


PRUNE_FAULT = r'''
import os, runpy, signal, sys
mode, _sep, value = open("/run/sciops-attack-fault").read().strip().partition(" ")
state = {"active": False, "count": 0, "armed": False}
log = os.open("/run/sciops-attack-fault.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def hook(event, args):
    if state["armed"]:
        os.write(log, b"killed\n")
        os.kill(os.getpid(), signal.SIGKILL)
    if event == "shutil.rmtree" and str(args[0]).startswith("/var/lib/sciops-fleet/attack/releases/"):
        state["active"] = True
    elif event == "os.remove" and state["active"]:
        state["count"] += 1
        os.write(log, f"{state['count']} {args[0]}\n".encode())
        if mode == "kill" and state["count"] == int(value):
            state["armed"] = True
sys.addaudithook(hook)
code = sys.stdin.read()
sys.argv = [""]
exec(compile(code, "<stdin>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


def test_a_kill_while_an_old_release_is_pruned_leaves_no_recorded_release_with_missing_files(
        registry, fleet, ansible, run_module, tmp_path, node):
    """_prune removes a release directory (shutil.rmtree) before the record is saved. Killed in between, the record
    still lists the release, its files record may still be there, and reconcile() skips every recorded release whose
    files record exists: the half-removed release is never checked again. Installing it again says 'unchanged',
    and switching to it (a rollback) gives a current with missing files."""
    members = [("bin", "dir", "")] + [(f"bin/f{n}", "file", f"{n}\n", 0o755) for n in range(6)] + [("good", "file", "ok\n")]
    releases = {}
    for version in ("1.0.0", "2.0.0"):
        reference = _push(registry, run_module, f"prune-{version}", _tarball(tmp_path, f"prune-{version}", members + [
            ("VERSION", "file", version + "\n", 0o644)]))
        published = _publish(registry, run_module, _release(version, [{"name": "app", "reference": reference,
                                                                       "install": "extract"}]))
        assert not published.get("failed"), published
        releases[version] = published
    fleet.ssh(node, f"cat > /usr/local/lib/sciops-attack-fault.py <<'PYEOF'\n{PRUNE_FAULT}\nPYEOF\n"
                    "printf '#!/bin/sh\\nexec /usr/bin/python3 /usr/local/lib/sciops-attack-fault.py \"$@\"\\n' "
                    "> /usr/local/bin/python3-attack-fault && chmod 0755 /usr/local/bin/python3-attack-fault")

    def module(name, args, interpreter=None):
        extravars = {"ansible_python_interpreter": interpreter} if interpreter else None
        return ansible(fleet.inventory_path, hosts=node, module=f"sciops.fleet.{name}", module_args=json.dumps(args),
                       extravars=extravars)

    def prepare():
        fleet.ssh(node, f"rm -rf {APP_DIR} {FACT} /run/sciops-attack-fault.log")
        for version in ("1.0.0", "2.0.0"):
            assert _install(ansible, fleet, releases[version]["reference"], node).rc == 0
        switched = module("release_switch", {"application": APP, "release": releases["1.0.0"]["release_id"]})
        assert switched.rc == 0, switched

    switch = {"application": APP, "release": releases["2.0.0"]["release_id"], "keep": 1}
    try:
        prepare()
        fleet.ssh(node, "echo count > /run/sciops-attack-fault")
        counted = module("release_switch", switch, "/usr/local/bin/python3-attack-fault")
        assert counted.rc == 0 and counted.ok[node][0]["pruned"], counted
        order = [line.split(" ", 1)[1] for line in fleet.ssh(node, "cat /run/sciops-attack-fault.log").stdout.splitlines()]
        # Killed right before the files record goes (or after the first removal when it goes first: on tmpfs and
        # overlayfs readdir lists the newest entry, the files record, first; ext4's hash order often keeps it last).
        prepare()
        fleet.ssh(node, f"echo kill {max(order.index('.sciops-files.json'), 1)} > /run/sciops-attack-fault")
        killed = module("release_switch", switch, "/usr/local/bin/python3-attack-fault")
        assert killed.rc != 0 and "killed" in fleet.ssh(node, "cat /run/sciops-attack-fault.log").stdout, killed
    finally:
        fleet.ssh(node, "rm -f /run/sciops-attack-fault /usr/local/bin/python3-attack-fault", check=False)

    # The operator, or the rollout's next run, installs 1.0.0 again and rolls back to it.
    again = _install(ansible, fleet, releases["1.0.0"]["reference"], node)
    assert again.rc == 0, again
    back = module("release_switch", {"application": APP, "release": releases["1.0.0"]["release_id"]})
    assert back.rc == 0, back
    missing = fleet.ssh(node, f"cd {APP_DIR}/current && python3 -c 'import json,os; r=json.load(open(\".sciops-files.json\"));"
                              f" print([p for p in r[\"files\"] if not os.path.lexists(p)])'").stdout.strip()
    assert missing == "[]", (f"release 1.0.0 is current, recorded as installed, and lacks files {missing}; "
                             f"the re-install said changed={again.ok[node][0]['changed']}")
