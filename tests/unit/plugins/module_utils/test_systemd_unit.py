# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit names, rendering from sections, hardened defaults and the parsing of systemd's output."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.service import desired_text, parse_mode, unit_names
from ansible_collections.sciops.fleet.plugins.module_utils._systemd.unit import (
    HARDENING_COMMENT,
    MANAGED_HEADER,
    UnitError,
    UnitName,
    apply_hardening,
    expand_instance,
    parse_exposure,
    parse_show,
    path_digest,
    render_unit,
    validate_dropin_name,
    verify_problems,
    verify_warnings,
)


@pytest.mark.parametrize("name, prefix, instance, unit_type, template", [
    ("app.service", "app", None, "service", False),
    ("app@.service", "app", "", "service", True),
    ("app@current.service", "app", "current", "service", False),
    ("srv-data.mount", "srv-data", None, "mount", False),
    (r"srv-sciops\x2dscratch.mount", r"srv-sciops\x2dscratch", None, "mount", False),
    ("backup.timer", "backup", None, "timer", False),
])
def test_unit_names_are_parsed(name, prefix, instance, unit_type, template):
    unit = UnitName(name)
    assert (unit.prefix, unit.instance, unit.type, unit.is_template) == (prefix, instance, unit_type, template)


@pytest.mark.parametrize("name", ["app", "app.conf", "../app.service", "a b.service", "app.Service", ""])
def test_what_is_not_a_unit_name_is_refused(name):
    with pytest.raises(UnitError, match="not a systemd unit name"):
        UnitName(name)


def test_template_instances_and_their_names():
    unit = UnitName("echo@.service")
    assert unit_names(unit, ["current", "oldstable"]) == ["echo@current.service", "echo@oldstable.service"]
    with pytest.raises(UnitError, match="not a valid instance name"):
        unit.instance_name("a/b")
    with pytest.raises(UnitError, match="for template units"):
        unit_names(UnitName("echo.service"), ["current"])
    assert unit_names(UnitName("echo.service"), []) == ["echo.service"]


def test_drop_in_names():
    assert validate_dropin_name("50-limits") == "50-limits.conf"
    assert validate_dropin_name("override.conf") == "override.conf"
    for bad in ("../x", "a/b", ".hidden", "with space"):
        with pytest.raises(UnitError):
            validate_dropin_name(bad)


def test_sections_are_rendered_in_unit_file_order_with_typed_values():
    text = render_unit({
        "Install": {"WantedBy": "multi-user.target"},
        "Service": {"ExecStart": "/usr/bin/server --port 7000", "Restart": "on-failure", "RestartSec": 2,
                    "Environment": ["A=1", "B=2"], "CapabilityBoundingSet": "", "PrivateTmp": True,
                    "ProtectHome": False, "RemoveMe": None},
        "Unit": {"Description": "a server"},
        "X-Site": {"Owner": "lab-a"},
    }, "service")
    assert text == "\n".join([
        MANAGED_HEADER, "", "[Unit]", "Description=a server", "", "[Service]",
        "ExecStart=/usr/bin/server --port 7000", "Restart=on-failure", "RestartSec=2", "Environment=A=1",
        "Environment=B=2", "CapabilityBoundingSet=", "PrivateTmp=yes", "ProtectHome=no", "",
        "[X-Site]", "Owner=lab-a", "", "[Install]", "WantedBy=multi-user.target", "",
    ])


@pytest.mark.parametrize("sections, message", [
    ({"Service": {"ExecStart": "a\nb"}}, "line break"),
    ({"Service": {"Bad Key": "x"}}, "not a valid directive name"),
    ({"Service": {"ExecStart": {"nested": 1}}}, "must be a string"),
    ({"Service": {"ExecStart": [["a"]]}}, "list items"),
    ({"Serv]ice": {"A": "b"}}, "section name"),
    ({"Service": "ExecStart=/bin/true"}, "must be a mapping"),
])
def test_what_cannot_be_a_unit_line_is_refused(sections, message):
    with pytest.raises(UnitError, match=message):
        render_unit(sections, "service")


def test_hardening_fills_what_the_user_did_not_set():
    sections, keys = apply_hardening({"Service": {"ExecStart": "/bin/server", "ProtectSystem": "full",
                                                  "PrivateDevices": None}}, UnitName("app.service"))
    service = sections["Service"]
    assert service["ProtectSystem"] == "full" and "ProtectSystem" not in keys  # overridden
    assert service["PrivateDevices"] is None and "PrivateDevices" not in keys  # removed
    assert service["DynamicUser"] is True and service["NoNewPrivileges"] is True
    assert service["CapabilityBoundingSet"] == "" and service["StateDirectory"] == "app"
    text = render_unit(sections, "service", keys)
    lines = text.splitlines()
    assert "ProtectSystem=full" in lines and not any(line.startswith("PrivateDevices=") for line in lines)
    # The user's settings first, then the defaults under their comment.
    assert lines.index("ExecStart=/bin/server") < lines.index(HARDENING_COMMENT) < lines.index("DynamicUser=yes")
    assert lines.count("SystemCallFilter=@system-service") == 1 and "SystemCallFilter=~@privileged" in lines


def test_a_given_user_replaces_the_dynamic_user_and_templates_get_a_directory_per_instance():
    sections, _keys = apply_hardening({"Service": {"User": "qserv"}}, UnitName("qserv@.service"))
    assert "DynamicUser" not in sections["Service"]
    assert sections["Service"]["StateDirectory"] == "qserv/%i"
    sections, _keys = apply_hardening({"Service": {"User": "qserv", "DynamicUser": True}}, UnitName("q.service"))
    assert sections["Service"]["DynamicUser"] is True


def test_desired_text_adds_hardening_only_to_services_from_sections():
    base = {"hardening": True, "content": None}
    service = desired_text(dict(base, sections={"Service": {"ExecStart": "/bin/true"}}), UnitName("a.service"), None)
    assert "NoNewPrivileges=yes" in service
    socket = desired_text(dict(base, sections={"Socket": {"ListenStream": "80"}}), UnitName("a.socket"), None)
    assert "NoNewPrivileges" not in socket
    dropin = desired_text(dict(base, sections={"Service": {"LimitNOFILE": 10}}), UnitName("a.service"), "x.conf")
    assert "NoNewPrivileges" not in dropin
    off = desired_text(dict(base, hardening=False, sections={"Service": {"ExecStart": "/bin/true"}}),
                       UnitName("a.service"), None)
    assert "NoNewPrivileges" not in off
    content = desired_text(dict(base, content="[Service]\nExecStart=/bin/true"), UnitName("a.service"), None)
    assert content == "[Service]\nExecStart=/bin/true\n"
    assert desired_text(dict(base, sections=None), UnitName("a.service"), None) is None


def test_instance_paths_and_modes():
    assert expand_instance("/etc/app/%i.conf", "current") == "/etc/app/current.conf"
    assert expand_instance("/etc/app/100%%/%i", "old") == "/etc/app/100%/old"
    assert expand_instance("/etc/app/app.conf", None) == "/etc/app/app.conf"
    assert parse_mode("0644") == 0o644 and parse_mode("600") == 0o600 and parse_mode(0o640) == 0o640
    with pytest.raises(UnitError):
        parse_mode("rw-r--r--")


def test_watched_paths_compare_files_by_content_and_directories_by_target(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("a\n", encoding="utf-8")
    first = path_digest(str(conf))
    conf.write_text("b\n", encoding="utf-8")
    assert path_digest(str(conf)) != first and first.startswith("sha256:")
    assert path_digest(str(tmp_path / "missing")) == "absent"
    for release in ("1.0", "2.0"):
        (tmp_path / "releases" / release).mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to("releases/1.0")
    before = path_digest(str(link))
    link.unlink()
    link.symlink_to("releases/2.0")
    assert path_digest(str(link)) == "dir:" + str(tmp_path / "releases" / "2.0") != before


def test_verify_output_refuses_errors_and_in_strict_mode_ignored_lines():
    path = "/etc/systemd/system/app.service"
    ignored = f"{path}:5: Unknown key 'Frobnicate' in section [Service], ignoring."
    other = "/usr/lib/systemd/system/other.service:3: Unknown key 'X' in section [Unit], ignoring."
    assert verify_problems(f"{ignored}\n{other}\n", [path], 0) == [ignored]
    assert verify_problems(f"{ignored}\n", [path], 0, strict=False) == []
    assert verify_problems(other, [path], 0) == []
    refused = "app.service: Command /opt/x is not executable: No such file or directory"
    assert verify_problems(refused, [path], 1, strict=False) == [refused]
    assert verify_problems("", [path], 1) == ["systemd-analyze verify exited 1"]
    # A warning about a setting systemd applies does not refuse the unit; it is passed on.
    nobody = f"{path}:5: Special user nobody configured, this is not safe!"
    removed = f"{path}:7: Support for option PermissionsStartOnly= has been removed and it is ignored"
    assert verify_problems(f"{nobody}\n{removed}\n", [path], 0) == [removed]
    assert verify_warnings(f"{nobody}\n{removed}\n{other}\n", [path]) == [nobody]


def test_exposure_and_show_output_are_parsed():
    out = ("  NAME    DESCRIPTION    EXPOSURE\n"
           "✗ UMask=  Files created by service are world-readable by default   0.1\n\n"
           "→ Overall exposure level for app.service: 1.9 OK 🙂\n")
    assert parse_exposure(out) == (1.9, "OK")
    assert parse_exposure("-> Overall exposure level for x@a.service: 9.6 UNSAFE :-{") == (9.6, "UNSAFE")
    assert parse_exposure("Failed to connect to bus") == (None, None)
    assert parse_show("ActiveState=active\nSubState=running\nEnvironment=A=1 B=2\n") == {
        "ActiveState": "active", "SubState": "running", "Environment": "A=1 B=2"}


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path):
    """What the renderer writes is a unit systemd itself accepts without a single ignored line."""
    sections, keys = apply_hardening({"Unit": {"Description": "x"}, "Service": {"ExecStart": "/bin/sleep 1"},
                                      "Install": {"WantedBy": "multi-user.target"}}, UnitName("app.service"))
    path = tmp_path / "app.service"
    path.write_text(render_unit(sections, "service", keys), encoding="utf-8")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True,
                          check=False, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"))
    assert verify_problems(proc.stdout + proc.stderr, [str(path)], proc.returncode) == [], proc.stderr
