# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rpm_build and rpm_repo with the real rpmbuild, rpmsign, rpmlint and createrepo_c on this machine."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RPMLINT_SITE = os.path.join(HERE, "files", "rpmlint-site.toml")
SDE = 1714521600  # 2024-05-01

for _tool in ("rpmbuild", "rpm", "createrepo_c", "rpmlint", "gpg"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed (tools/install-system-deps.sh)", allow_module_level=True)

UNIT = "[Unit]\nDescription=Qserv worker\n[Service]\nExecStart=/opt/qserv/bin/qserv\n[Install]\nWantedBy=multi-user.target\n"


def stage_tree(root, app_version="1.0.0", conf="port = 7000\n"):
    """A staged tree as a build leaves it: an ELF binary, a private library, config, data, docs and a unit."""
    files = {
        "opt/qserv/bin/qserv": (open("/usr/bin/true", "rb").read(), 0o755),
        "opt/qserv/bin/qserv-version": (f"#!/bin/sh\necho {app_version}\n".encode(), 0o755),
        "opt/qserv/lib/libqserv.so": (f"qserv library {app_version}\n".encode(), 0o644),
        "opt/qserv/lib/libz.so.1": (open(os.path.realpath("/usr/lib/x86_64-linux-gnu/libz.so.1"), "rb").read(), 0o755),
        "opt/qserv/etc/qserv.conf": (conf.encode(), 0o644),
        "opt/qserv/var/data/chunk-0": (b"chunk\n", 0o644),
        "usr/lib/systemd/system/qserv.service": (UNIT.encode(), 0o644),
        "usr/share/doc/qserv/README": (f"Qserv {app_version}\n".encode(), 0o644),
    }
    for path, (data, mode) in files.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
        os.chmod(full, mode)
    return str(root)


def qserv_spec(app_version="1.0.0", deps_version="2024.1", release="1"):
    return {
        "name": "qserv", "version": app_version, "release": release,
        "summary": "Distributed database for astronomical catalogs", "license": "GPL-3.0-or-later",
        "url": "https://qserv.example.org", "prefix": "/opt/qserv", "auto_requires": True,
        "description": "Qserv answers queries on astronomical catalogs from a shared-nothing cluster.",
        "changelog": [{"date": "2024-05-01", "author": "Qserv builders <builders@example.org>",
                       "text": f"Build of release {app_version}"}],
        "attributes": [{"path": "opt/qserv/var", "owner": "daemon", "group": "daemon", "mode": "0640", "dir_mode": "0750"}],
        "packages": [
            {"name": "qserv", "files": ["opt/qserv/bin", "opt/qserv/etc", "opt/qserv/var", "opt/qserv/lib/libqserv*",
                                        "usr/lib/systemd/system/qserv.service", "usr/share/doc/qserv"],
             "requires": ["qserv-deps"], "config": ["opt/qserv/etc/qserv.conf"], "doc": ["usr/share/doc/qserv"],
             "ghost": ["opt/qserv/var/qserv.pid"],
             "scripts": {"pre": "getent passwd daemon >/dev/null || exit 1", "posttrans": "echo qserv installed"}},
            {"name": "qserv-deps", "version": deps_version, "summary": "Libraries Qserv runs with",
             "changelog": [{"date": "2024-05-01", "author": "Qserv builders <builders@example.org>",
                            "text": f"Libraries of {deps_version}"}],
             "files": ["opt/qserv/lib"], "exclude": ["opt/qserv/lib/libqserv*"], "owns_shared_dirs": True},
        ],
    }


def rpm(*args, env=None):
    result = subprocess.run(["rpm", *args], capture_output=True, text=True, check=True, env=env)
    return result.stdout


@pytest.fixture
def gpg_key(tmp_path):
    """A throwaway signing key without passphrase: (gpg home, fingerprint, armored public key path)."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "Fleet Test <test@example.org>",
                    "rsa2048", "sign", "never"], check=True, capture_output=True, env=env)
    listing = subprocess.run(["gpg", "--list-keys", "--with-colons"], check=True, capture_output=True, text=True, env=env).stdout
    fingerprint = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")][0]
    public = tmp_path / "key.asc"
    public.write_bytes(subprocess.run(["gpg", "--armor", "--export", fingerprint], check=True, capture_output=True, env=env).stdout)
    yield str(home), fingerprint, str(public)
    subprocess.run(["gpgconf", "--kill", "all"], check=False, capture_output=True, env=env)


def test_app_and_deps_from_one_tree_show_their_metadata_files_scripts_and_requires(run_module, tmp_path, gpg_key):
    tree = stage_tree(tmp_path / "tree")
    dest = tmp_path / "rpms"
    home, fingerprint, public = gpg_key
    built = run_module("rpm_build", tree=tree, dest=str(dest), spec=qserv_spec(), sign_key=fingerprint, gpg_home=home)
    assert not built.get("failed"), built
    assert built["changed"] and [p["source_date_epoch"] for p in built["packages"]] == [SDE, SDE]
    app, deps = (os.path.join(dest, p["file"]) for p in built["packages"])
    assert [p["file"] for p in built["packages"]] == ["qserv-1.0.0-1.x86_64.rpm", "qserv-deps-2024.1-1.x86_64.rpm"]
    assert sorted(os.listdir(dest)) == ["qserv-1.0.0-1.x86_64.rpm", "qserv-deps-2024.1-1.x86_64.rpm"]

    info = rpm("-qip", app)
    for line in ("Name        : qserv", "Version     : 1.0.0", "Release     : 1", "License     : GPL-3.0-or-later",
                 "URL         : https://qserv.example.org", "Build Host  : reproducible", "Architecture: x86_64",
                 "Packager    : Qserv builders <builders@example.org>", "Summary     : Distributed database for astronomical catalogs"):
        assert line in info, info
    assert "Build Date  : Wed May  1 00:00:00 2024" in info
    assert f"Key ID {fingerprint[-16:].lower()}" in info
    assert rpm("-qp", "--qf", "%{PAYLOADCOMPRESSOR}", app) == "zstd"

    # Files: who owns what, with which owner and mode; directories included, none in two packages.
    def dump(path):
        rows = {}
        for line in rpm("-qlp", "--dump", path).splitlines():
            fields = line.split()
            rows[fields[0]] = {"mode": fields[4], "owner": fields[5], "group": fields[6], "config": fields[7],
                               "doc": fields[8]}
        return rows
    app_files, deps_files = dump(app), dump(deps)
    assert not set(app_files) & set(deps_files)
    assert app_files["/opt/qserv/var"] == {"mode": "040750", "owner": "daemon", "group": "daemon", "config": "0", "doc": "0"}
    assert app_files["/opt/qserv/var/data"]["mode"] == "040750"
    assert app_files["/opt/qserv/var/data/chunk-0"] == {"mode": "0100640", "owner": "daemon", "group": "daemon", "config": "0", "doc": "0"}
    assert app_files["/opt/qserv/bin/qserv"]["mode"] == "0100755" and app_files["/opt/qserv/bin/qserv"]["owner"] == "root"
    assert app_files["/opt/qserv/etc/qserv.conf"]["config"] == "1"
    assert app_files["/usr/share/doc/qserv/README"]["doc"] == "1"
    assert "/opt/qserv/var/qserv.pid" in app_files and "/opt/qserv/lib/libqserv.so" in app_files
    # The shared directory belongs to the package that owns shared directories; system directories to none.
    assert "/opt/qserv" in deps_files and "/opt/qserv/lib" in deps_files and "/opt/qserv" not in app_files
    assert not {"/opt", "/usr", "/usr/lib/systemd/system", "/usr/share/doc"} & (set(app_files) | set(deps_files))
    assert rpm("-qp", "--configfiles", app).split() == ["/opt/qserv/etc/qserv.conf"]
    assert "/opt/qserv/var/qserv.pid" in rpm("-qp", "--state", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", app)
    assert re.search(r"^/opt/qserv/var/qserv.pid g$", rpm("-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", app), re.M)

    scripts = rpm("-qp", "--scripts", app)
    assert "preinstall scriptlet (using /bin/sh):\ngetent passwd daemon" in scripts
    assert "systemctl --no-reload preset qserv.service" in scripts
    assert "systemctl --no-reload disable --now qserv.service" in scripts
    assert "systemctl try-restart qserv.service" in scripts
    assert "posttrans scriptlet (using /bin/sh):\necho qserv installed" in scripts
    assert rpm("-qp", "--scripts", deps) == ""  # no units, no scripts

    requires = rpm("-qp", "--requires", app).splitlines()
    assert "qserv-deps = 2024.1-1" in requires  # the sibling, pinned
    assert "libc.so.6()(64bit)" in requires  # found by rpm in the ELF binary
    assert "libz.so.1()(64bit)" in rpm("-qp", "--provides", deps).splitlines()
    assert rpm("-qp", "--qf", "%{PREFIXES}", app) == "(none)"  # not relocatable unless asked

    # rpmlint: no errors, once the distribution-policy checks a site package under /opt breaks on purpose are
    # filtered (each is explained in the settings file); unfiltered, no other kind of error appears.
    rpm_home = tmp_path / "rpm-home"
    rpm_home.mkdir()
    (rpm_home / ".rpmmacros").write_text(f"%_dbpath {tmp_path / 'rpmdb'}\n")
    env = dict(os.environ, HOME=str(rpm_home))
    subprocess.run(["rpm", "--import", public], check=True, env=env)
    lint = subprocess.run(["rpmlint", "-c", RPMLINT_SITE, app, deps], capture_output=True, text=True, env=env, check=False)
    assert lint.returncode == 0 and " 0 errors," in lint.stdout, lint.stdout + lint.stderr
    plain = subprocess.run(["rpmlint", app, deps], capture_output=True, text=True, env=env, check=False).stdout
    filtered = set(re.findall(r"'([a-z0-9-]+)',", open(RPMLINT_SITE, encoding="utf-8").read()))
    kinds = set(re.findall(r": E: ([a-z0-9-]+)", plain))
    assert kinds <= filtered, plain

    # The same tree and spec again: nothing changes, the signed packages stay as they are.
    again = run_module("rpm_build", tree=tree, dest=str(dest), spec=qserv_spec(), sign_key=fingerprint, gpg_home=home)
    assert again["changed"] is False and [p["digest"] for p in again["packages"]] == [p["digest"] for p in built["packages"]]


def test_a_sign_key_given_as_a_user_id_signs_once_and_a_rerun_changes_nothing(run_module, tmp_path, gpg_key):
    tree = stage_tree(tmp_path / "tree")
    dest = tmp_path / "rpms"
    home, fingerprint, _public = gpg_key
    # As rpm_build's own EXAMPLES give it: the key's e-mail address.
    built = run_module("rpm_build", tree=tree, dest=str(dest), spec=qserv_spec(), sign_key="test@example.org", gpg_home=home)
    assert not built.get("failed") and built["changed"], built
    signature = rpm("-qp", "--qf", "%{RSAHEADER:pgpsig}", os.path.join(dest, built["packages"][0]["file"]))
    assert f"Key ID {fingerprint[-16:].lower()}" in signature, signature
    digests = [p["digest"] for p in built["packages"]]
    # The same key by its whole user id, its long id and its short id: still signed by it, nothing to do.
    for key in ("test@example.org", "Fleet Test <test@example.org>", fingerprint[-16:], fingerprint[-8:].lower()):
        again = run_module("rpm_build", tree=tree, dest=str(dest), spec=qserv_spec(), sign_key=key, gpg_home=home)
        assert again["changed"] is False and not any(p["changed"] for p in again["packages"]), (key, again)
        assert [p["digest"] for p in again["packages"]] == digests, key
        assert [_sha256(os.path.join(dest, p["file"])) for p in again["packages"]] == [d.split(":", 1)[1] for d in digests]
    unknown = run_module("rpm_build", tree=tree, dest=str(dest), spec=qserv_spec(), sign_key="nobody@example.org", gpg_home=home)
    assert unknown.get("failed") and "sign_key: gpg finds no secret key 'nobody@example.org'" in unknown["msg"], unknown
    assert [_sha256(os.path.join(dest, p["file"])) for p in built["packages"]] == [d.split(":", 1)[1] for d in digests]


def _sha256(path):
    import hashlib  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_same_tree_and_spec_give_the_same_bytes_and_only_what_changed_is_replaced(run_module, tmp_path):
    tree = stage_tree(tmp_path / "tree")
    first = run_module("rpm_build", tree=tree, dest=str(tmp_path / "a"), spec=qserv_spec())
    assert first["changed"], first
    # Restaged: the same content with new modification times, built elsewhere.
    shutil.copytree(tree, tmp_path / "tree2")
    for base, _dirs, names in os.walk(tmp_path / "tree2"):
        for name in names:
            os.utime(os.path.join(base, name), (SDE + 10**7, SDE + 10**7))
    second = run_module("rpm_build", tree=str(tmp_path / "tree2"), dest=str(tmp_path / "b"), spec=qserv_spec())
    assert [p["digest"] for p in second["packages"]] == [p["digest"] for p in first["packages"]]
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    rerun = run_module("rpm_build", tree=tree, dest=str(tmp_path / "a"), spec=qserv_spec())
    assert rerun["changed"] is False and not any(p["changed"] for p in rerun["packages"])
    mtimes = {n: os.stat(tmp_path / "a" / n).st_mtime_ns for n in os.listdir(tmp_path / "a")}

    # A new application build: check mode predicts it and writes nothing; then only the app package changes.
    with open(os.path.join(tree, "opt/qserv/bin/qserv-version"), "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\necho 1.0.0 rebuilt\n")
    predicted = run_module("rpm_build", check=True, tree=tree, dest=str(tmp_path / "a"), spec=qserv_spec())
    assert predicted["changed"] and [p["changed"] for p in predicted["packages"]] == [True, False]
    assert {n: os.stat(tmp_path / "a" / n).st_mtime_ns for n in os.listdir(tmp_path / "a")} == mtimes
    applied = run_module("rpm_build", tree=tree, dest=str(tmp_path / "a"), spec=qserv_spec())
    assert [p["changed"] for p in applied["packages"]] == [True, False]
    assert os.stat(tmp_path / "a" / "qserv-deps-2024.1-1.x86_64.rpm").st_mtime_ns == mtimes["qserv-deps-2024.1-1.x86_64.rpm"]
    assert sorted(os.listdir(tmp_path / "a")) == sorted(mtimes)  # no scratch left behind


def test_relocatable_prefix_and_payload_choices(run_module, tmp_path):
    tree = tmp_path / "tree"
    (tree / "opt/tool/bin").mkdir(parents=True)
    (tree / "opt/tool/bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(tree / "opt/tool/bin/tool", 0o755)
    spec = {"name": "tool", "version": "2.0~beta.1", "summary": "A relocatable tool", "license": "MIT",
            "arch": "noarch", "prefix": "/opt/tool", "relocatable": True}
    built = run_module("rpm_build", tree=str(tree), dest=str(tmp_path / "out"), spec=spec, compression="xz",
                       compression_level=3, source_date_epoch=SDE)
    assert not built.get("failed"), built
    path = built["files"][0]
    assert os.path.basename(path) == "tool-2.0~beta.1-1.noarch.rpm"
    assert rpm("-qp", "--qf", "%{PREFIXES} %{PAYLOADCOMPRESSOR} %{ARCH}", path) == "/opt/tool xz noarch"
    assert rpm("-qlp", path).split() == ["/opt/tool", "/opt/tool/bin", "/opt/tool/bin/tool"]
    # Relocatable packages hold only paths below the prefix.
    (tree / "etc").mkdir()
    (tree / "etc/tool.conf").write_text("x\n")
    refused = run_module("rpm_build", tree=str(tree), dest=str(tmp_path / "out2"), spec=spec)
    assert refused["failed"] and "spec.relocatable: package tool has paths outside the prefix /opt/tool (etc/tool.conf" in refused["msg"]


def _break(change):
    spec = qserv_spec()
    change(spec)
    return spec


BAD_SPECS = [
    ("missing fields", lambda s: [s.pop("version"), s.pop("license"), s["packages"][1].pop("files")],
     ["spec.version: is required", "spec.license: is required", "spec.packages[1].files: is required"]),
    ("bad version", lambda s: s.update(version="1.0-rc1"),
     ["spec.version: '1.0-rc1' contains '-'", "write a pre-release as '1.0~rc1'"]),
    ("bad release", lambda s: s["packages"][1].update(release="1-2"), ["spec.packages[1].release: '1-2' is not a valid RPM release"]),
    ("file in two packages", lambda s: s["packages"][1].update(exclude=[]),
     ["tree: opt/qserv/lib/libqserv.so is in two packages (qserv, qserv-deps)"]),
    ("file in no package", lambda s: s["packages"][0]["files"].remove("usr/share/doc/qserv"),
     ["tree: usr/share/doc/qserv/README is in no package"]),
    ("path outside the tree", lambda s: s["packages"][0]["files"].append("../etc/passwd"),
     ["spec.packages[0].files[6]: '../etc/passwd' is outside the tree"]),
    ("absolute path", lambda s: s["packages"][0]["config"].append("/etc/qserv.conf"),
     ["spec.packages[0].config[1]: '/etc/qserv.conf' is outside the tree"]),
    ("bad mode and dependency", lambda s: [s["attributes"][0].update(mode=640), s["packages"][0]["requires"].append("libfoo >> 1")],
     ["spec.attributes[0].mode: 640 must be an octal mode written as a string", "spec.packages[0].requires[1]: 'libfoo >> 1' is not a dependency"]),
    ("unknown field", lambda s: s.update(licence="MIT"), ["spec.licence: unknown field"]),
]


@pytest.mark.parametrize("change,expected", [b[1:] for b in BAD_SPECS], ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_are_refused_naming_the_field_and_leave_no_package(run_module, tmp_path, change, expected):
    tree = stage_tree(tmp_path / "tree")
    dest = tmp_path / "rpms"
    dest.mkdir()
    (dest / "qserv-0.9.0-1.x86_64.rpm").write_bytes(b"an older build stays untouched")
    result = run_module("rpm_build", tree=tree, dest=str(dest), spec=_break(change))
    assert result.get("failed"), result
    for text in expected:
        assert text in result["msg"], result["msg"]
    assert os.listdir(dest) == ["qserv-0.9.0-1.x86_64.rpm"]
    assert (dest / "qserv-0.9.0-1.x86_64.rpm").read_bytes() == b"an older build stays untouched"


def test_a_failing_rpmbuild_leaves_no_partial_package(run_module, tmp_path):
    tree = stage_tree(tmp_path / "tree")
    spec = qserv_spec()
    dest = tmp_path / "rpms"
    # The spec is valid but rpmbuild's %install fails: the ghost's directory would be a file of the tree.
    (tmp_path / "tree/opt/qserv/var/qserv.pid").mkdir()
    (tmp_path / "tree/opt/qserv/var/qserv.pid/x").write_text("x")
    spec["packages"][0]["ghost"] = ["opt/qserv/var/qserv.pid/x/y"]
    result = run_module("rpm_build", tree=tree, dest=str(dest), spec=spec)
    assert result.get("failed") and "rpmbuild failed" in result["msg"], result
    assert os.listdir(dest) == []


def test_rpm_repo_lists_the_packages_and_a_second_run_changes_nothing(run_module, tmp_path):
    tree = stage_tree(tmp_path / "tree")
    repo = tmp_path / "repo"
    assert not run_module("rpm_build", tree=tree, dest=str(repo), spec=qserv_spec()).get("failed")
    predicted = run_module("rpm_repo", check=True, path=str(repo))
    assert predicted["changed"] and not (repo / "repodata").exists()
    first = run_module("rpm_repo", path=str(repo), revision=SDE)
    assert first["changed"] and first["packages"] == ["qserv-1.0.0-1.x86_64.rpm", "qserv-deps-2024.1-1.x86_64.rpm"]
    repomd = (repo / "repodata" / "repomd.xml").read_bytes()
    assert f"<revision>{SDE}</revision>".encode() in repomd
    second = run_module("rpm_repo", path=str(repo), revision=SDE)
    assert second["changed"] is False and second["added"] == [] and second["packages"] == first["packages"]
    assert (repo / "repodata" / "repomd.xml").read_bytes() == repomd and second["repomd_digest"] == first["repomd_digest"]

    # A new application build is added incrementally; the old one stays listed.
    stage_tree(tmp_path / "tree", app_version="1.1.0")
    assert not run_module("rpm_build", tree=tree, dest=str(repo), spec=qserv_spec("1.1.0")).get("failed")
    third = run_module("rpm_repo", path=str(repo), revision=SDE + 1)
    assert third["changed"] and third["added"] == ["qserv-1.1.0-1.x86_64.rpm"]
    assert "qserv-1.1.0-1.x86_64.rpm" in third["packages"] and "qserv-1.0.0-1.x86_64.rpm" in third["packages"]
    assert run_module("rpm_repo", path=str(repo), revision=SDE + 1)["changed"] is False


def test_check_mode_builds_nothing_into_a_missing_destination(run_module, tmp_path):
    tree = stage_tree(tmp_path / "tree")
    result = run_module("rpm_build", check=True, tree=tree, dest=str(tmp_path / "new"), spec=copy.deepcopy(qserv_spec()))
    assert result["changed"] and not os.path.exists(tmp_path / "new")
