# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The .nspawn settings a machine gets from the module's options, image detection and digests."""

from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._systemd.nspawn import (
    ARGUMENT_SPEC,
    SETTINGS_HEADER,
    MachineError,
    detect_format,
    quote_arg,
    render_settings,
    settings_sections,
    validate_name,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import tree_digest


def params(**overrides):
    values = {name: spec.get("default") for name, spec in ARGUMENT_SPEC.items()}
    values.update(name="analysis")
    values.update(overrides)
    return values


def test_the_default_machine_boots_with_a_private_network_and_no_user_namespace():
    assert render_settings(settings_sections(params())) == "\n".join([
        SETTINGS_HEADER, "", "[Exec]", "Boot=yes", "PrivateUsers=no", "", "[Network]", "Private=yes",
        "VirtualEthernet=no", "",
    ])


def test_every_option_becomes_its_directive():
    text = render_settings(settings_sections(params(
        boot=False, command=["/usr/bin/server", "--name", "a b", 'say "hi"'], read_only=True, volatile="state",
        bind=["/srv/data:/data"], bind_ro=["/etc/site.conf:/etc/site.conf:norbind"], network="veth",
        ports=["tcp:8080:80"], capabilities=["CAP_NET_ADMIN"], drop_capabilities=["CAP_SYS_ADMIN", "CAP_MKNOD"],
        environment={"SITE": "lab-a", "A_B": "x y"}, private_users="pick",
        settings={"Exec": {"KillSignal": "SIGRTMIN+3"}, "Files": {"TemporaryFileSystem": "/scratch"}},
    )))
    lines = text.splitlines()
    for line in ("Boot=no", "Parameters=/usr/bin/server --name 'a b' 'say \"hi\"'", "PrivateUsers=pick",
                 "Capability=CAP_NET_ADMIN", "DropCapability=CAP_SYS_ADMIN CAP_MKNOD", "Environment='A_B=x y'",
                 "Environment=SITE=lab-a", "KillSignal=SIGRTMIN+3", "ReadOnly=yes", "Volatile=state",
                 "Bind=/srv/data:/data", "BindReadOnly=/etc/site.conf:/etc/site.conf:norbind",
                 "TemporaryFileSystem=/scratch", "Private=yes", "VirtualEthernet=yes", "Port=tcp:8080:80"):
        assert line in lines, (line, text)
    assert lines.index("[Exec]") < lines.index("[Files]") < lines.index("[Network]")


def test_host_network_shares_the_nodes_interfaces():
    sections = settings_sections(params(network="host"))
    assert sections["Network"] == {"Private": False, "VirtualEthernet": False}


@pytest.mark.parametrize("overrides, message", [
    ({"command": ["/bin/true"]}, "set boot: false"),
    ({"ports": ["tcp:80"]}, "need network: veth"),
    ({"bind": ["relative:/x"]}, "absolute paths"),
    ({"bind": ["/a b:/x"]}, "absolute paths"),
    ({"environment": {"1X": "y"}}, "not a variable name"),
    ({"boot": False, "command": ["a\nb"]}, "line break"),
    ({"settings": {"Exec": "Boot=no"}}, "must be a mapping"),
])
def test_settings_that_would_not_mean_what_they_say_are_refused(overrides, message):
    with pytest.raises(MachineError, match=message):
        settings_sections(params(**overrides))


def test_machine_names():
    assert validate_name("env-2024-1") == "env-2024-1"
    for bad in ("", "-x", "a/b", "a.b", "env_1", "x" * 65):  # a host name: systemd-nspawn refuses '_'
        with pytest.raises(MachineError):
            validate_name(bad)
    assert quote_arg("--port=80") == "--port=80" and quote_arg("a b") == "'a b'" and quote_arg("it's") == '"it\'s"'
    # Parameters= keeps a backslash as it is: an argument that needs one is refused, never passed on changed.
    for bad in ("a\\b", "it's \"x\""):
        with pytest.raises(MachineError, match="a backslash or both quote characters"):
            quote_arg(bad)


def test_image_formats_are_told_from_their_content(tmp_path):
    (tmp_path / "tree").mkdir()
    assert detect_format(str(tmp_path / "tree")) == "directory"
    (tmp_path / "image.sqfs").write_bytes(b"hsqs" + b"\0" * 100)
    assert detect_format(str(tmp_path / "image.sqfs")) == "squashfs"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("etc/os-release")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"x=1"))
    (tmp_path / "image.tar").write_bytes(buffer.getvalue())
    (tmp_path / "image.tgz").write_bytes(gzip.compress(buffer.getvalue()))
    assert detect_format(str(tmp_path / "image.tar")) == "tar"
    assert detect_format(str(tmp_path / "image.tgz")) == "tar"
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(MachineError, match="neither a directory"):
        detect_format(str(tmp_path / "notes.txt"))
    with pytest.raises(MachineError, match="does not exist"):
        detect_format(str(tmp_path / "missing"))


def test_a_directory_digest_changes_with_any_entry(tmp_path):
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "a").write_text("1", encoding="utf-8")
    os.symlink("a", root / "etc" / "b")
    first = tree_digest(str(root))
    assert tree_digest(str(root)) == first and first.startswith("tree:sha256:")
    os.chmod(root / "etc" / "a", 0o600)
    second = tree_digest(str(root))
    assert second != first
    os.unlink(root / "etc" / "b")
    os.symlink("c", root / "etc" / "b")
    assert tree_digest(str(root)) != second
