# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sciops.fleet.build_env against the real registry: build, push, attach metadata, test mounted, promote on pass."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

import envkit

pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(not (shutil.which("mksquashfs") and shutil.which("squashfuse")),
                                 reason="needs mksquashfs and squashfuse")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(REPO, "playbooks", "build_env.yml")


def _inventory(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                    "      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n")
    return str(path)


def _run(ansible, tmp_path, registry, name, test_command, **more):
    mount = tmp_path / f"mnt-{name}"
    recipe = envkit.greeter_recipe(tmp_path, closure=True, extra={"mount": str(mount), "name": name},
                                   name=f"{name}.yaml")
    extravars = {"build_env_recipe": str(recipe), "build_env_dest": str(tmp_path / f"{name}.squashfs"),
                 "build_env_build_repository": f"{registry.host}/build/{name}",
                 "build_env_deploy_repository": f"{registry.host}/deploy/{name}", "build_env_tags": ["stable"],
                 "build_env_test_command": test_command, "build_env_plain_http": True, **more}
    return ansible(_inventory(tmp_path), playbook=PLAYBOOK, extravars=extravars), mount


def _mounts_under(path):
    """The mount points at or below PATH on this machine, as findmnt lists them."""
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line == str(path) or line.startswith(f"{path}/")]


def _is_sleep(pid):
    """Whether PID is still the test's live sleep process (not gone, not a zombie, not reused)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)
        return "(sleep" in fields[0] and fields[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _unmount_all_under(path):
    for target in reversed(_mounts_under(path)):
        subprocess.run(["fusermount3", "-u", target], check=False)


def _referrers(run_module, registry, reference):
    found = run_module("oras_discover", subject=reference, plain_http=True, fetch_content=True)
    assert not found.get("failed"), found
    return found["referrers"]


def test_a_passing_image_is_published_with_its_metadata_and_promoted(ansible, registry, run_module, tmp_path):
    run, mount = _run(ansible, tmp_path, registry, "greeter", "bin/greeter ci | grep -q 'hello from libgreet 1, ci'")
    assert run.rc == 0, run
    assert not os.path.ismount(mount)  # unmounted after the test
    info = run_module("oras_info", reference=f"{registry.host}/deploy/greeter:stable", plain_http=True)
    built = run_module("oras_info", reference=f"{registry.host}/build/greeter:1.0.0", plain_http=True)
    assert info["digest"] == built["digest"]
    referrers = _referrers(run_module, registry, f"{registry.host}/deploy/greeter:1.0.0")
    kinds = sorted(r["artifact_type"] for r in referrers)
    assert kinds == ["application/vnd.sciops.fleet.env.meta.v1+json", "application/vnd.sciops.fleet.env.test-result.v1+json"]
    by_type = {r["artifact_type"].rsplit(".", 2)[-2]: r["content"] for r in referrers}
    assert by_type["meta"]["env.json"]["mount"] == str(mount) and by_type["meta"]["env.json"]["name"] == "greeter"
    assert {f["path"] for f in by_type["meta"]["manifest.json"]["files"]} >= {"bin/greeter", "lib/libgreet.so.1"}
    assert by_type["test-result"]["test-result.json"]["passed"] is True
    assert by_type["test-result"]["test-result.json"]["image"] == built["digest"]

    again, _mount = _run(ansible, tmp_path, registry, "greeter", "bin/greeter ci | grep -q 'hello from libgreet 1, ci'")
    assert again.rc == 0, again
    assert sum(again.stats.get("changed", {}).values()) == 0, again.stdout[-3000:]


def test_a_failing_image_gets_its_result_attached_and_is_not_promoted(ansible, registry, run_module, tmp_path):
    run, mount = _run(ansible, tmp_path, registry, "broken", "bin/greeter ci | grep -q 'goodbye'")
    assert run.rc != 0 and "failed (exit 1)" in run.stdout and "it is not promoted" in run.stdout
    assert not os.path.ismount(mount)
    promoted = run_module("oras_info", reference=f"{registry.host}/deploy/broken:1.0.0", plain_http=True)
    assert not promoted.get("failed") and promoted["exists"] is False, promoted
    referrers = _referrers(run_module, registry, f"{registry.host}/build/broken:1.0.0")
    assert any(r["artifact_type"].endswith("test-result.v1+json") for r in referrers)


def test_the_image_test_never_uses_the_mount_point_and_leaves_no_mount_after_a_pass_or_a_failure(
        ansible, registry, tmp_path):
    parent = tmp_path / "test-mounts"
    parent.mkdir()
    try:
        for name, verdict in (("pass", "true"), ("fail", "exit 3")):
            seen = tmp_path / f"seen-{name}"
            seen.mkdir()
            command = (f"pwd > {seen}/pwd && printf '%s' \"$ENV_MOUNT\" > {seen}/env_mount"
                       f" && findmnt -rn -o TARGET > {seen}/mounts && bin/greeter ci | grep -q 'hello' && {verdict}")
            run, mount = _run(ansible, tmp_path, registry, f"private{name}", command,
                              build_env_test_mount_parent=str(parent))
            if name == "pass":
                assert run.rc == 0, run
            else:
                assert run.rc != 0 and "failed (exit 3)" in run.stdout, run
            # The test ran from a private directory in the parent, with the image there.
            where = (seen / "pwd").read_text().strip()
            assert os.path.dirname(where) == str(parent) and (seen / "env_mount").read_text() == where
            during = (seen / "mounts").read_text().splitlines()
            assert where in during
            # The image's own mount point on this host was never mounted, and nothing is left mounted or behind.
            assert str(mount) not in during and not os.path.exists(mount)
            assert _mounts_under(tmp_path) == [], f"left mounted after the {name}ing test"
            assert os.listdir(parent) == [], f"the private mount point is left after the {name}ing test"
    finally:
        _unmount_all_under(tmp_path)


def test_an_image_still_in_use_after_its_test_fails_the_role_naming_its_mount_point(
        ansible, registry, run_module, tmp_path):
    parent = tmp_path / "test-mounts"
    parent.mkdir()
    pidfile = tmp_path / "busy.pid"
    # The test leaves a process whose working directory is inside the mounted image: it cannot be unmounted.
    command = f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
    pid = None
    try:
        run, _mount = _run(ansible, tmp_path, registry, "busy", command, build_env_test_mount_parent=str(parent))
        pid = int(pidfile.read_text())
        assert run.rc != 0, run
        left = _mounts_under(parent)
        assert len(left) == 1, left
        assert f"could not unmount the test mount of {tmp_path / 'busy.squashfs'} at {left[0]}" in run.stdout, run
        assert "busy" in run.stdout.lower() and "fusermount3 -u " + left[0] in run.stdout, run
        promoted = run_module("oras_info", reference=f"{registry.host}/deploy/busy:1.0.0", plain_http=True)
        assert not promoted.get("failed") and promoted["exists"] is False, promoted
    finally:
        if pid is not None and _is_sleep(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _is_sleep(pid):
                time.sleep(0.1)
        _unmount_all_under(tmp_path)
