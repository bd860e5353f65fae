# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""RPM artifacts rolled out to real nodes: app and deps together, the app upgraded alone, downgraded, config kept."""

from __future__ import annotations

import json
import os

import pytest

from test_rpm_build import qserv_spec, stage_tree

pytestmark = [pytest.mark.fleet, pytest.mark.registry]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLLOUT = os.path.join(REPO, "playbooks", "rollout.yml")
STATUS = os.path.join(REPO, "playbooks", "status.yml")


def _tools_package(run_module, tmp_path):
    """A small third package, qserv-tools, that only one release ships."""
    tool = tmp_path / "tools-tree" / "opt" / "qserv-tools" / "bin" / "qserv-admin"
    tool.parent.mkdir(parents=True)
    tool.write_text("#!/bin/sh\necho admin\n")
    tool.chmod(0o755)
    built = run_module("rpm_build", tree=str(tmp_path / "tools-tree"), dest=str(tmp_path / "rpms-tools"),
                       source_date_epoch=1714521600,
                       spec={"name": "qserv-tools", "version": "1.1.0", "summary": "Qserv administration tools",
                             "license": "GPL-3.0-or-later", "prefix": "/opt/qserv-tools"})
    assert not built.get("failed"), built
    return built["files"][0]


def _build_and_publish(registry, run_module, tmp_path, app_version, conf, tools=None):
    tree = stage_tree(tmp_path / f"tree-{app_version}", app_version=app_version, conf=conf)
    built = run_module("rpm_build", tree=tree, dest=str(tmp_path / f"rpms-{app_version}"), spec=qserv_spec(app_version))
    assert not built.get("failed"), built
    app, deps = built["files"]
    digests = {}
    for name, path in (("qserv", app), ("qserv-deps", deps)) + ((("qserv-tools", tools),) if tools else ()):
        pushed = run_module("oras_push", target=f"{registry.host}/build/{name}:{os.path.basename(path).replace('~', '_')[:100]}",
                            files=[{"path": path}], plain_http=True)
        assert not pushed.get("failed"), pushed
        digests[name] = pushed["digest"]
    release = {
        "schema_version": 1, "application": "qserv", "version": app_version, "protocol": "1",
        "artifacts": [
            {"name": "app", "reference": f"{registry.host}/build/qserv@{digests['qserv']}", "install": "rpm"},
            {"name": "deps", "reference": f"{registry.host}/build/qserv-deps@{digests['qserv-deps']}", "install": "rpm"},
        ] + ([{"name": "tools", "reference": f"{registry.host}/build/qserv-tools@{digests['qserv-tools']}",
               "install": "rpm"}] if tools else []),
        "requires": {"commands": ["rpm"]},
        "health": [{"command": f"test \"$(/opt/qserv/bin/qserv-version)\" = {app_version}", "timeout": 5}],
    }
    published = run_module("release_publish", manifest_data=release, repository=f"{registry.host}/releases/qserv",
                           channels=[], plain_http=True)
    assert not published.get("failed"), published
    return published, digests


def _rollout(ansible, fleet, reference, **extra):
    extravars = {"rollout_release": reference, "rollout_plain_http": True, "rollout_batches": [100],
                 "rollout_rpm_nodeps": True, **extra}
    return ansible(fleet.inventory_path, playbook=ROLLOUT, extravars=extravars, envvars={"ANSIBLE_TIMEOUT": "10"})


def _rpm_q(fleet, node, *names):
    out = fleet.ssh(node, "rpm -q --qf '%{NAME} %{VERSION}-%{RELEASE} %{INSTALLTIME}\\n' " + " ".join(names), check=False).stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if len(line.split()) == 3}


@pytest.fixture
def rpm_nodes(fleet):
    """The nodes, with the qserv packages and records removed again afterwards."""
    yield fleet
    for node in fleet.names:
        fleet.ssh(node, "for p in qserv qserv-deps qserv-tools; do rpm -e --nodeps $p >/dev/null 2>&1; done; rm -rf /opt/qserv /opt/qserv-tools "
                        "/var/lib/sciops-fleet/qserv "
                        "/etc/ansible/facts.d/sciops_fleet_qserv.fact /var/cache/sciops-fleet", check=False)


def test_app_and_deps_install_upgrade_alone_downgrade_and_keep_the_edited_config(registry, rpm_nodes, ansible, run_module, tmp_path):
    fleet = rpm_nodes
    nodes = fleet.names
    v1, digests1 = _build_and_publish(registry, run_module, tmp_path, "1.0.0", "port = 7000\n")
    # 1.1.0 also ships a third package, qserv-tools, which 1.0.0 does not have.
    v2, digests2 = _build_and_publish(registry, run_module, tmp_path, "1.1.0", "port = 7000\nthreads = 8\n",
                                      tools=_tools_package(run_module, tmp_path))
    # One tree, two packages: the new application build shipped the same dependency package, byte for byte.
    assert digests2["qserv-deps"] == digests1["qserv-deps"] and digests2["qserv"] != digests1["qserv"]

    first = _rollout(ansible, fleet, v1["reference"])
    assert first.rc == 0, first
    for node in nodes:
        installed = _rpm_q(fleet, node, "qserv", "qserv-deps")
        assert {k: v[0] for k, v in installed.items()} == {"qserv": "1.0.0-1", "qserv-deps": "2024.1-1"}
        assert fleet.ssh(node, "stat -c '%a %U %G' /opt/qserv/var /opt/qserv/var/data/chunk-0").stdout.split("\n")[:2] == \
            ["750 daemon daemon", "640 daemon daemon"]
        assert fleet.ssh(node, "/opt/qserv/bin/qserv-version").stdout.strip() == "1.0.0"
        # rpm knows the application needs its dependencies: removing them alone is refused.
        erase = fleet.ssh(node, "rpm -e --test qserv-deps", check=False)
        assert erase.returncode != 0 and "is needed by (installed) qserv-1.0.0-1" in erase.stderr
    deps_installed_at = {node: _rpm_q(fleet, node, "qserv-deps")["qserv-deps"][1] for node in nodes}

    edited = nodes[0]
    fleet.ssh(edited, "printf 'port = 7777\\n' > /opt/qserv/etc/qserv.conf")

    # Upgrade the application alone: deps are kept (not reinstalled), the edited config survives.
    second = _rollout(ansible, fleet, v2["reference"])
    assert second.rc == 0, second
    for node in nodes:
        installed = _rpm_q(fleet, node, "qserv", "qserv-deps", "qserv-tools")
        assert installed["qserv"][0] == "1.1.0-1" and installed["qserv-tools"][0] == "1.1.0-1"
        assert installed["qserv-deps"] == ["2024.1-1", deps_installed_at[node]]
        assert fleet.ssh(node, "/opt/qserv/bin/qserv-version").stdout.strip() == "1.1.0"
    assert fleet.ssh(edited, "cat /opt/qserv/etc/qserv.conf").stdout == "port = 7777\n"
    assert fleet.ssh(edited, "cat /opt/qserv/etc/qserv.conf.rpmnew").stdout == "port = 7000\nthreads = 8\n"
    assert fleet.ssh(nodes[1], "cat /opt/qserv/etc/qserv.conf").stdout == "port = 7000\nthreads = 8\n"

    # The status matrix shows the installed package versions.
    report = ansible(fleet.inventory_path, playbook=STATUS,
                     extravars={"status_application": "qserv", "status_json_path": str(tmp_path / "matrix.json")})
    assert report.rc == 0, report
    matrix = {row["node"]: row for row in json.loads((tmp_path / "matrix.json").read_text())["nodes"]}
    for node in nodes:
        assert matrix[node]["version"] == "1.1.0"
        assert matrix[node]["packages"] == ["qserv-1.1.0-1", "qserv-deps-2024.1-1", "qserv-tools-1.1.0-1"]
    assert "qserv-1.1.0-1, qserv-deps-2024.1-1, qserv-tools-1.1.0-1" in report.stdout

    # A downgrade must be asked for: without it the node fails, is left on 1.1.0, and says why.
    refused = _rollout(ansible, fleet, v1["reference"], rollout_batches=[1])
    assert refused.rc != 0
    assert "would downgrade the RPM package(s) qserv 1.1.0-1 -> 1.0.0-1" in refused.stdout, refused
    for node in nodes:
        installed = _rpm_q(fleet, node, "qserv", "qserv-tools")
        assert installed["qserv"][0] == "1.1.0-1" and installed["qserv-tools"][0] == "1.1.0-1"
    back = _rollout(ansible, fleet, v1["reference"], rollout_rpm_downgrade=True)
    assert back.rc == 0, back
    for node in nodes:
        # Back on 1.0.0, which does not ship qserv-tools: it is erased, the rest is 1.0.0's.
        installed = _rpm_q(fleet, node, "qserv", "qserv-deps", "qserv-tools")
        assert "qserv-tools" not in installed and fleet.ssh(node, "test -e /opt/qserv-tools/bin/qserv-admin", check=False).returncode != 0
        assert installed["qserv"][0] == "1.0.0-1" and installed["qserv-deps"] == ["2024.1-1", deps_installed_at[node]]
        assert fleet.ssh(node, "/opt/qserv/bin/qserv-version").stdout.strip() == "1.0.0"
    assert fleet.ssh(edited, "cat /opt/qserv/etc/qserv.conf").stdout == "port = 7777\n"
