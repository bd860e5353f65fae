# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Build host side of RPM packaging: run rpmbuild reproducibly in a scratch directory, sign, move into place.
(``_rpm/repo.py`` reads repositories.)

Every tool runs through RUN, a callable ``run(argv, env=None) -> (rc, stdout, stderr)`` (AnsibleModule's
run_command in the modules), so nothing here needs Ansible.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Set, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import fsync_dir, link_unsupported
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.spec import plan_packages
from ansible_collections.sciops.fleet.plugins.module_utils._rpm.specfile import evr, package_changelog, render_spec

COMPRESSION_DEFAULT_LEVEL = {"zstd": 3, "xz": 6, "gzip": 6, "none": 0}
# rpm's payload I/O names; 'T0' lets zstd and xz use a thread per CPU.
_PAYLOAD = {"zstd": "w{level}T0.zstdio", "xz": "w{level}T0.xzdio", "gzip": "w{level}.gzdio", "none": "w.ufdio"}
QUERY_FORMAT = "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{SHA256HEADER}\\t%{PAYLOADDIGEST}\\t%{RSAHEADER:pgpsig}\\n"


class RpmBuildError(FleetError):
    """A tool failed or the destination cannot take the packages; the message says which and why."""


def payload_macro(compression: str, level: int | None = None) -> str:
    """The %_binary_payload value for COMPRESSION at LEVEL (the default level when None)."""
    if compression not in _PAYLOAD:
        raise RpmBuildError(f"compression must be one of {', '.join(_PAYLOAD)}, not {compression!r}")
    level = COMPRESSION_DEFAULT_LEVEL[compression] if level is None else level
    limits = {"zstd": (1, 19), "xz": (0, 9), "gzip": (1, 9), "none": (0, 0)}[compression]
    if compression != "none" and not limits[0] <= level <= limits[1]:
        raise RpmBuildError(f"compression_level {level} is out of range for {compression} ({limits[0]}..{limits[1]})")
    return _PAYLOAD[compression].format(level=level)


def rpmbuild_defines(topdir: str, source_date_epoch: int, compression: str = "zstd", level: int | None = None,
                     strip: bool = False, debuginfo: bool = False) -> List[str]:
    """The --define arguments that make rpmbuild fast for prebuilt binaries and its output reproducible."""
    defines = {
        "_topdir": topdir,
        "_rpmdir": os.path.join(topdir, "RPMS"),
        "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        "_buildhost": "reproducible",
        "use_source_date_epoch_as_buildtime": "1",
        "clamp_mtime_to_source_date_epoch": "1",
        "source_date_epoch_from_changelog": "0",
        "_binary_payload": payload_macro(compression, level),
        "_binary_filedigest_algorithm": "8",
        "_build_id_links": "none",
        "_missing_build_ids_terminate_build": "0",
        "__arch_install_post": "%{nil}",
    }
    if not debuginfo:
        defines.update({"debug_package": "%{nil}", "_enable_debug_packages": "0", "__debug_install_post": "%{nil}"})
    # The brp scripts strip, compress man pages and byte-compile: none of it is wanted for prebuilt trees.
    defines["__os_install_post"] = "%{?__brp_strip}" if strip else "%{nil}"
    args = []
    for key, value in defines.items():
        args += ["--define", f"{key} {value}"]
    return args


def query_package(run: Callable[..., Tuple[int, str, str]], path: str) -> Dict[str, str]:
    """Header facts of the RPM at PATH: name, epoch, version, release, arch, header and payload digests, signature."""
    rc, out, err = run(["rpm", "-qp", "--nosignature", "--nodigest", "--qf", QUERY_FORMAT, path])
    if rc != 0 or not out.strip():
        raise RpmBuildError(f"rpm cannot read {path}: {err.strip() or out.strip()}")
    fields = out.rstrip("\n").split("\n")[-1].split("\t")
    keys = ("name", "epoch", "version", "release", "arch", "header_sha256", "payload_digest", "signature")
    info = dict(zip(keys, fields))
    info["signature"] = "" if info.get("signature") in (None, "(none)") else info["signature"]
    return info


def _same_package(run, old, new, new_digest, key_ids):
    """True when the RPM at OLD can stand for the fresh build NEW (whose digest is NEW_DIGEST when not signing): the
    same bytes, or (when signing) the same header and payload and a signature by one of KEY_IDS (the sign key's long
    ids, see signing_key_ids), since signatures carry a time stamp."""
    if not os.path.exists(old):
        return False
    if not key_ids:
        return digest_file(old)[0] == new_digest
    before, after = query_package(run, old), query_package(run, new)
    same = all(before[k] == after[k] for k in ("header_sha256", "payload_digest"))
    return same and signature_key_id(before["signature"]) in key_ids


def signature_key_id(signature: str | None) -> str:
    """The key id in rpm's ``%{RSAHEADER:pgpsig}`` text (``RSA/SHA256, <date>, Key ID 0123456789abcdef``), lower
    case; empty when there is none."""
    found = re.search(r"Key ID ([0-9A-Fa-f]+)", signature or "")
    return found.group(1).lower() if found else ""


def _gpg():
    gpg = shutil.which("gpg") or shutil.which("gpg2")
    if not gpg:
        raise RpmBuildError("signing needs gpg on the build host; install it (Debian: gnupg, Red Hat: gnupg2)")
    return gpg


def signing_key_ids(run: Callable[..., Tuple[int, str, str]], key: str, gpg_home: str | None = None) -> Set[str]:
    """The long key ids (lower case) of the secret key KEY (a user id, fingerprint, long or short id) and its
    subkeys, as gpg resolves KEY when it signs: a signature by any of them is a signature by KEY."""
    argv = [_gpg(), "--batch", "--with-colons", "--list-secret-keys", "--", key]
    rc, out, err = run(argv, env={"GNUPGHOME": gpg_home} if gpg_home else None)
    ids = {fields[4].lower() for fields in (line.split(":") for line in (out or "").splitlines())
           if fields[0] in ("sec", "ssb") and len(fields) > 4 and fields[4]}
    if rc != 0 or not ids:
        where = f"in {gpg_home}" if gpg_home else "in the user's GnuPG home"
        raise RpmBuildError(f"sign_key: gpg finds no secret key {key!r} {where} ({_tail(err or out)}); give a user id, "
                            "fingerprint or key id of a secret key there, or set gpg_home")
    # A short id names a key by its last 8 hex digits; rpm may show either length.
    return ids | {key_id[-8:] for key_id in ids}


def package_source_date_epoch(spec: Mapping[str, Any], package: Mapping[str, Any], plan: Mapping[str, Any], tree: str,
                              given: int | None = None) -> int:
    """SOURCE_DATE_EPOCH of PACKAGE: GIVEN, else its newest changelog date, else its newest file in TREE."""
    if given is not None:
        return given
    dates = [e["date"] for e in package_changelog(spec, package) if e["date"]]
    if dates:
        return _date_epoch(max(dates))
    newest = 0
    for path in plan[package["name"]]["files"]:
        newest = max(newest, int(os.lstat(os.path.join(tree, path)).st_mtime))
    return newest


def stage_package(tree: str, entry: Mapping[str, Any], root: str, copy: bool = False) -> None:
    """Lay PACKAGE's files (ENTRY of the plan) out under ROOT as hard links to TREE (copies when COPY or when a
    link is impossible), directories with the tree's modes."""
    def make_dir(relative):
        target = os.path.join(root, relative)
        if not os.path.isdir(target):
            make_dir(os.path.dirname(relative)) if os.path.dirname(relative) else None
            os.mkdir(target)
            source = os.path.join(tree, relative)
            if os.path.isdir(source):
                os.chmod(target, os.stat(source).st_mode & 0o7777)
    os.makedirs(root, exist_ok=True)
    for relative in entry["dirs"]:
        make_dir(relative)
    for relative in entry["files"]:
        if os.path.dirname(relative):
            make_dir(os.path.dirname(relative))
        source, target = os.path.join(tree, relative), os.path.join(root, relative)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
            continue
        if not copy:
            try:
                os.link(source, target)
                continue
            except OSError as exc:
                if not link_unsupported(exc):
                    raise
        shutil.copy2(source, target)


def build_packages(run: Callable[..., Tuple[int, str, str]], spec: Mapping[str, Any], tree: str, dest: str,
                   source_date_epoch: int | None = None, compression: str = "zstd", level: int | None = None,
                   strip: bool = False, debuginfo: bool = False, sign_key: str | None = None,
                   gpg_home: str | None = None, check_mode: bool = False) -> Dict[str, Any]:
    """Build SPEC's packages from TREE into DEST; return a dict: changed, packages (per package its file, digest,
    nevra, changed, source_date_epoch), spec_text (every spec file written).

    Each package is built by its own rpmbuild run from its own spec and build root, so it depends on its own files
    and fields only. The builds run in a scratch directory inside DEST and the packages are renamed into place once
    all are built (and signed): on any error nothing new is left in DEST. A package whose bytes (or, signed, whose
    content) did not change is left as it is.
    """
    tree = os.path.abspath(tree)
    plan = plan_packages(spec, tree)
    epochs = {p["name"]: package_source_date_epoch(spec, p, plan, tree, source_date_epoch) for p in spec["packages"]}
    if not os.path.isdir(dest):
        if check_mode:
            return _predicted(spec, dest, epochs)
        try:
            os.makedirs(dest)
        except OSError as exc:
            raise RpmBuildError(f"dest: cannot create {dest}: {exc.strerror}") from None
    key_ids = signing_key_ids(run, sign_key, gpg_home) if sign_key else None
    scratch = tempfile.mkdtemp(prefix=".rpm_build-", dir=dest)
    texts = []
    try:
        results, changed = [], False
        for package in spec["packages"]:
            name = package["name"]
            topdir = os.path.join(scratch, name, "top")
            staged = os.path.join(scratch, name, "staged")
            os.makedirs(os.path.join(topdir, "RPMS"))
            stage_package(tree, plan[name], staged, copy=strip)
            # rpmbuild empties its build root before %install: fill it from the staged links (links again, cheap).
            install = (f"cp -a -l {shlex.quote(staged)}/. %{{buildroot}}/ 2>/dev/null || "
                       f"cp -a {shlex.quote(staged)}/. %{{buildroot}}/")
            if strip:
                install = f"cp -a {shlex.quote(staged)}/. %{{buildroot}}/"
            text = render_spec(spec, plan, tree, package, epochs[name], install)
            texts.append(text)
            spec_path = os.path.join(topdir, f"{name}.spec")
            with open(spec_path, "w", encoding="utf-8") as handle:
                handle.write(text)
            argv = ["rpmbuild", "-bb", "--quiet", "--nodeps", "--buildroot", os.path.join(scratch, name, "buildroot")]
            argv += rpmbuild_defines(topdir, epochs[name], compression, level, strip, debuginfo)
            if spec["arch"] != "noarch":
                argv += ["--target", spec["arch"]]
            argv.append(spec_path)
            rc, out, err = run(argv, env={"SOURCE_DATE_EPOCH": str(epochs[name]), "TZ": "UTC", "LC_ALL": "C"})
            if rc != 0:
                raise RpmBuildError(f"rpmbuild failed (exit {rc}) for package {name}: {_tail(err or out)}")
            file_name = f"{name}-{package['version']}-{package['release']}.{spec['arch']}.rpm"
            built = os.path.join(topdir, "RPMS", file_name)
            if not os.path.isfile(built):
                raise RpmBuildError(f"rpmbuild did not write {file_name}; its output: {_tail(err or out)}")
            final = os.path.join(dest, file_name)
            # Unsigned, the built bytes are the package's: hashed once, for the comparison and the result.
            digest = None if sign_key else digest_file(built)
            unchanged = _same_package(run, final, built, digest and digest[0], key_ids)
            if not unchanged and sign_key and not check_mode:
                sign_package(run, built, sign_key, gpg_home)
            if digest is None:  # signed: the bytes that stay are the kept package's, or the newly signed ones
                digest = digest_file(final if unchanged else built)
            results.append({"name": name, "file": file_name, "path": final, "changed": not unchanged,
                            "nevra": f"{name}-{evr(package)}.{spec['arch']}", "version": package["version"],
                            "release": package["release"], "epoch": package["epoch"],
                            "source_date_epoch": epochs[name], "digest": digest[0], "size": digest[1],
                            "_built": built})
            changed = changed or not unchanged
        if not check_mode:
            for entry in results:
                if entry["changed"]:
                    os.replace(entry["_built"], entry["path"])
            if changed:
                fsync_dir(dest)
        for entry in results:
            del entry["_built"]
        return {"changed": changed, "packages": results, "spec_text": "\n".join(texts)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _predicted(spec, dest, epochs):
    packages = [{"name": p["name"], "file": f"{p['name']}-{p['version']}-{p['release']}.{spec['arch']}.rpm",
                 "changed": True, "nevra": f"{p['name']}-{evr(p)}.{spec['arch']}", "version": p["version"],
                 "release": p["release"], "epoch": p["epoch"], "digest": None, "size": None,
                 "source_date_epoch": epochs[p["name"]]} for p in spec["packages"]]
    for entry in packages:
        entry["path"] = os.path.join(dest, entry["file"])
    return {"changed": True, "packages": packages, "spec_text": ""}


def _date_epoch(date):
    import calendar  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel
    return calendar.timegm(time.strptime(date, "%Y-%m-%d"))


def _tail(text, lines=12):
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip()) or "(no output)"


def sign_package(run: Callable[..., Tuple[int, str, str]], path: str, key: str, gpg_home: str | None = None) -> None:
    """Sign the RPM at PATH with gpg key KEY (rpmsign --addsign); the key must not ask for a passphrase."""
    gpg = _gpg()
    # rpm's %__gpg names gpg2 on some systems and gpg on others: give it the one that is here.
    argv = ["rpmsign", "--addsign", "--define", f"_gpg_name {key}", "--define", f"__gpg {gpg}"]
    if gpg_home:
        argv += ["--define", f"_gpg_path {gpg_home}"]
    argv.append(path)
    rc, out, err = run(argv, env={"GNUPGHOME": gpg_home} if gpg_home else None)
    if rc != 0:
        raise RpmBuildError(f"signing {os.path.basename(path)} with key {key} failed (exit {rc}): {_tail(err or out)}; "
                            "check sign_key and gpg_home, and that the key needs no passphrase prompt")
