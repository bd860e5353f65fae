# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Environment builds: a recipe becomes a reproducible image (squashfs, tar.zst or a directory).

The recipe (``docs/environments.md`` documents every field)::

    schema_version: 1
    name: greeter                 # lower-case letters, digits, . _ -
    version: 1.0.0                # starts with a digit
    description: the greeter tool
    mount: /opt/envs/greeter      # where the image is mounted on a node; absolute
    source_date_epoch: 1700000000 # optional; the time stamp of every file and of the provenance
    backend: tree                 # tree | venv | spack
    tree: {source: stage, closure: true, library_path: [], exclude_libraries: []}
    venv: {requirements: [cowsay==6.1], python: /usr/bin/python3, pip_args: []}
    spack: {specs: [hdf5@1.14], compilers: [gcc@12], packages: {}, views: {default: {link: roots}}}
    views:                        # what uenv reads: per view, environment variables
      default:
        description: the tools
        prepend_path: {PATH: [bin]}   # relative to the mount point, or absolute
        append_path: {}
        set: {GREETER_HOME: .}

Inside the image, ``meta/`` holds ``env.json`` (the uenv metadata: name, version, description, mount, views
with their environment variables), ``manifest.json`` (path, size, mode and sha256 of every file),
``provenance.json`` (recipe digest, input digest, tool versions, the build's fixed time) and the recipe.

The same recipe and inputs give the same bytes: every file gets the fixed time, owners are root, entries are
sorted, and nothing of the build host (its paths, users, host name, clock) gets in. A build happens in a
scratch directory beside the destination and is renamed into place whole; a failed build leaves nothing there.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError, InvalidDocumentError

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import (
    DocumentError,
    atomic_write,
    fsync_dir,
    fsync_file,
    link_unsupported,
    read_document,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import NAME_RE, VERSION_RE, Checker

SCHEMA_VERSION = 1
BACKENDS = ("tree", "venv", "spack")
FORMATS = ("squashfs", "tar.zst", "directory")
COMPRESSIONS = ("zstd", "gzip", "xz", "lz4", "lzo")
META_DIR = "meta"
ENV_FILE = "meta/env.json"
MANIFEST_FILE = "meta/manifest.json"
PROVENANCE_FILE = "meta/provenance.json"
RECIPE_FILE = "meta/recipe.json"
BUILD_RECORD_SUFFIX = ".build.json"
ENV_MEDIA_TYPE = "application/vnd.sciops.fleet.env.meta.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.sciops.fleet.env.manifest.v1+json"

_TOP_KEYS = ("schema_version", "name", "version", "description", "mount", "source_date_epoch", "backend",
             "tree", "venv", "spack", "views")
_TREE_KEYS = ("source", "closure", "library_path", "exclude_libraries")
_VENV_KEYS = ("requirements", "requirements_file", "python", "pip_args", "files")
_SPACK_KEYS = ("specs", "compilers", "packages", "views", "mirrors", "spack_command")
_VIEW_KEYS = ("description", "prepend_path", "append_path", "set")
_SPACK_VIEW_KEYS = ("link", "exclude", "projections", "link_type")
_ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BLOCK_RE = re.compile(r"^([0-9]+)([KkMm]?)$")
# The C library and its loader come from the node: a copied libc would not match the node's loader.
SYSTEM_LIBRARIES = ("ld-linux*.so*", "ld64.so*", "libc.so*", "libm.so*", "libpthread.so*", "libdl.so*", "librt.so*",
                    "libresolv.so*", "libutil.so*", "libanl.so*", "libnsl.so*", "libmvec.so*", "linux-vdso.so*",
                    "linux-gate.so*")
_ELF_MAGIC = b"\x7fELF"


class RecipeError(InvalidDocumentError):
    """A recipe is not valid; the message lists every problem, one per field."""

    def __init__(self, source, problems):
        super().__init__(f"recipe {source}", problems)


class EnvBuildError(FleetError):
    """A build step failed; the message names the step, the input and what to do."""


# -- recipe ---------------------------------------------------------------------------------------


def _mapping(check, data, key, field):
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        check.add(field, f"must be a mapping, not {type(value).__name__}")
        return {}
    return value


def _bool(check, data, key, field, default):
    value = data.get(key, default)
    if not isinstance(value, bool):
        check.add(field, f"must be true or false, not {value!r}")
        return default
    return value


def _existing(check, base, value, field, want_dir):
    path = os.path.normpath(os.path.join(base, value))
    if want_dir and not os.path.isdir(path):
        check.add(field, f"{value!r} is not a directory (looked for {path}); create it or fix the path, relative to the recipe")
    elif not want_dir and not os.path.isfile(path):
        check.add(field, f"{value!r} is not a file (looked for {path}); create it or fix the path, relative to the recipe")
    return path


def _validate_views(check, data, mount):
    views = {}
    for name, view in _mapping(check, data, "views", "views").items():
        field = f"views.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            check.add(field, "view names are lower-case letters, digits, '.', '_', '-'")
            continue
        if not isinstance(view, dict):
            check.add(field, "must be a mapping with description, prepend_path, append_path, set")
            continue
        check.keys(view, _VIEW_KEYS, field)
        entry = {"description": check.string(view, "description", f"{field}.description", required=False) or ""}
        for op in ("prepend_path", "append_path"):
            paths = {}
            for var, values in _mapping(check, view, op, f"{field}.{op}").items():
                if not isinstance(var, str) or not _ENV_VAR_RE.match(var):
                    check.add(f"{field}.{op}.{var}", "is not an environment variable name")
                    continue
                values = check.string_list(view[op], var, f"{field}.{op}.{var}")
                paths[var] = [v if v.startswith("/") else os.path.normpath(os.path.join(mount or "/", v)) for v in values]
            entry[op] = paths
        scalars = {}
        for var, value in _mapping(check, view, "set", f"{field}.set").items():
            if not isinstance(var, str) or not _ENV_VAR_RE.match(var) or isinstance(value, (dict, list)) or value is None:
                check.add(f"{field}.set.{var}", "must map an environment variable name to a string")
                continue
            scalars[var] = str(value)
        entry["set"] = scalars
        views[name] = entry
    return views


def validate_recipe(data, source="(given)", base_dir="."):
    """Validate a parsed recipe; return its canonical dict or raise RecipeError listing every problem.

    Paths in the recipe are relative to BASE_DIR (the recipe's directory); the canonical form keeps them as
    written, and ``resolved`` paths are added under keys that start with ``_``.
    """
    check = Checker()
    if not isinstance(data, dict):
        raise RecipeError(source, [f"the document must be a mapping of fields, not {type(data).__name__}"])
    check.keys(data, _TOP_KEYS, "")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        check.add("schema_version", f"must be {SCHEMA_VERSION} (this collection reads recipe schema {SCHEMA_VERSION}), "
                  f"not {data.get('schema_version')!r}")
    recipe = {"schema_version": SCHEMA_VERSION}
    recipe["name"] = check.string(data, "name", "name", NAME_RE, " (lower-case letters, digits, '.', '_', '-'; at most 63)")
    recipe["version"] = check.string(data, "version", "version", VERSION_RE,
                                     " (start with a digit; letters, digits, '.', '+', '~', '_', '-'; e.g. 1.4.0 or 2024.1~rc1)")
    recipe["description"] = check.string(data, "description", "description", required=False) or ""
    mount = check.string(data, "mount", "mount")
    if mount is not None and (not mount.startswith("/") or ".." in mount.split("/") or mount.rstrip("/") == ""):
        check.add("mount", f"{mount!r} must be an absolute path other than /, without '..', e.g. /user-environment")
        mount = None
    recipe["mount"] = mount.rstrip("/") if mount else mount
    epoch = data.get("source_date_epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        check.add("source_date_epoch", f"must be a whole number of seconds since 1970 (e.g. 1700000000), not {epoch!r}")
        epoch = None
    recipe["source_date_epoch"] = epoch
    backend = data.get("backend")
    if backend not in BACKENDS:
        check.add("backend", f"{backend!r} is not one of {', '.join(BACKENDS)}" if backend is not None
                  else f"is required: one of {', '.join(BACKENDS)}")
    for other in BACKENDS:
        if other != backend and data.get(other) is not None:
            check.add(other, f"belongs to the {other} backend, and this recipe's backend is {backend!r}; remove it")
    recipe["backend"] = backend
    settings = _mapping(check, data, backend, backend) if backend in BACKENDS else {}
    if backend == "tree":
        check.keys(settings, _TREE_KEYS, "tree")
        tree = {"source": check.string(settings, "source", "tree.source"),
                "closure": _bool(check, settings, "closure", "tree.closure", False),
                "library_path": check.string_list(settings, "library_path", "tree.library_path"),
                "exclude_libraries": check.string_list(settings, "exclude_libraries", "tree.exclude_libraries")}
        if tree["source"]:
            tree["_source"] = _existing(check, base_dir, tree["source"], "tree.source", want_dir=True)
        tree["_library_path"] = [os.path.normpath(os.path.join(base_dir, p)) for p in tree["library_path"]]
        recipe["tree"] = tree
    elif backend == "venv":
        check.keys(settings, _VENV_KEYS, "venv")
        venv = {"requirements": check.string_list(settings, "requirements", "venv.requirements"),
                "requirements_file": check.string(settings, "requirements_file", "venv.requirements_file", required=False),
                "python": check.string(settings, "python", "venv.python", required=False) or "/usr/bin/python3",
                "pip_args": check.string_list(settings, "pip_args", "venv.pip_args"),
                "files": check.string_list(settings, "files", "venv.files")}
        if not venv["requirements"] and not venv["requirements_file"]:
            check.add("venv.requirements", "is required (or venv.requirements_file): the packages to install, e.g. [cowsay==6.1]")
        if venv["requirements_file"]:
            venv["_requirements_file"] = _existing(check, base_dir, venv["requirements_file"], "venv.requirements_file", False)
        venv["_files"] = [_existing(check, base_dir, f, f"venv.files[{i}]", False) for i, f in enumerate(venv["files"])]
        if not venv["python"].startswith("/"):
            check.add("venv.python", f"{venv['python']!r} must be an absolute path to the interpreter the nodes also have, e.g. /usr/bin/python3")
        recipe["venv"] = venv
    elif backend == "spack":
        check.keys(settings, _SPACK_KEYS, "spack")
        spack = {"specs": check.string_list(settings, "specs", "spack.specs"),
                 "compilers": check.string_list(settings, "compilers", "spack.compilers"),
                 "packages": _mapping(check, settings, "packages", "spack.packages"),
                 "mirrors": _mapping(check, settings, "mirrors", "spack.mirrors"),
                 "spack_command": check.string(settings, "spack_command", "spack.spack_command", required=False) or "spack"}
        if not spack["specs"]:
            check.add("spack.specs", "is required: at least one spec, e.g. [hdf5@1.14 +mpi]")
        views = {}
        for name, view in (_mapping(check, settings, "views", "spack.views") or {"default": {}}).items():
            if not isinstance(name, str) or not NAME_RE.match(name) or not isinstance(view, dict):
                check.add(f"spack.views.{name}", "must be a view name mapped to its settings (link, exclude, projections, link_type)")
                continue
            check.keys(view, _SPACK_VIEW_KEYS, f"spack.views.{name}")
            views[name] = dict(view)
        spack["views"] = views
        recipe["spack"] = spack
    recipe["views"] = _validate_views(check, data, recipe["mount"])
    if check.problems:
        raise RecipeError(source, check.problems)
    if not recipe["views"]:
        recipe["views"] = default_views(recipe)
    return recipe


def default_views(recipe):
    """One view, ``default``: the image's bin/ on PATH (and, for a venv, VIRTUAL_ENV); spack: one per spack view."""
    mount = recipe["mount"]
    if recipe["backend"] == "spack":
        return {name: {"description": f"spack view {name}",
                       "prepend_path": {"PATH": [f"{mount}/views/{name}/bin"]}, "append_path": {}, "set": {}}
                for name in recipe["spack"]["views"]}
    view = {"description": f"{recipe['name']} {recipe['version']}", "prepend_path": {"PATH": [f"{mount}/bin"]},
            "append_path": {}, "set": {}}
    if recipe["backend"] == "venv":
        view["set"] = {"VIRTUAL_ENV": mount}
    return {"default": view}


def load_recipe(path):
    """Read and validate the recipe file PATH (YAML or JSON)."""
    try:
        data = read_document(path)  # a build host without PyYAML can still read a JSON recipe
    except OSError as exc:
        raise EnvBuildError(f"recipe {path} cannot be read: {exc.strerror}; give the path of an existing recipe file") from None
    except DocumentError as exc:
        raise RecipeError(path, [str(exc)]) from None
    return validate_recipe(data, path, os.path.dirname(os.path.abspath(path)))


def public_recipe(recipe):
    """The recipe without the resolved (host-specific) paths: what goes into the image and its digest."""
    if isinstance(recipe, dict):
        return {k: public_recipe(v) for k, v in recipe.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(recipe, list):
        return [public_recipe(v) for v in recipe]
    return recipe


def canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


# -- spack ----------------------------------------------------------------------------------------


def spack_yaml(recipe):
    """The spack.yaml of RECIPE's spack backend: specs, compilers as requirements, packages, views under the mount."""
    spack = recipe["spack"]
    mount = recipe["mount"]
    packages = {name: dict(value) if isinstance(value, dict) else value for name, value in sorted(spack["packages"].items())}
    if spack["compilers"]:
        everything = dict(packages.get("all") or {})
        everything["require"] = [{"one_of": [f"%{c}" for c in spack["compilers"]]}] if len(spack["compilers"]) > 1 \
            else [f"%{spack['compilers'][0]}"]
        packages["all"] = everything
    views = {}
    for name, view in sorted(spack["views"].items()):
        entry = {"root": f"{mount}/views/{name}", "link": view.get("link", "roots")}
        for key in ("exclude", "projections", "link_type"):
            if key in view:
                entry[key] = view[key]
        views[name] = entry
    document = {"spack": {
        "specs": list(spack["specs"]),
        "view": views,
        "concretizer": {"unify": True, "reuse": False},
        "config": {"install_tree": {"root": f"{mount}/store"}},
        "packages": packages,
    }}
    if spack["mirrors"]:
        document["spack"]["mirrors"] = dict(sorted(spack["mirrors"].items()))
    return document


# -- tools ----------------------------------------------------------------------------------------


def run_tool(argv, step, env=None, cwd=None):
    """Run ARGV; on failure raise EnvBuildError naming STEP with the tail of its output."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, cwd=cwd)
    except OSError as exc:
        raise EnvBuildError(f"{step}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise EnvBuildError(f"{step}: {os.path.basename(argv[0])} exited {proc.returncode}: {tail}")
    return proc.stdout


def tool_version(command, args=("--version",)):
    """The first line a tool prints about its version, or None when it is not installed."""
    path = shutil.which(command)
    if not path:
        return None
    proc = subprocess.run([path, *args], capture_output=True, text=True, check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def require_tool(command, why, package):
    path = shutil.which(command)
    if not path:
        raise EnvBuildError(f"{command} is not on this build host's PATH and {why}; install it "
                            f"(Debian package {package}; tools/install-system-deps.sh does)")
    return path


def parse_block_size(value):
    """Bytes of a block size given as 131072, '128K' or '1M'; mksquashfs takes 4K to 1M, a power of two."""
    match = _BLOCK_RE.match(str(value).strip())
    if not match:
        raise EnvBuildError(f"block_size {value!r} is not a size; write it as 131072, 128K or 1M")
    size = int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if size < 4096 or size > 1024 * 1024 or size & (size - 1):
        raise EnvBuildError(f"block_size {value!r} must be a power of two from 4K to 1M (mksquashfs's range)")
    return size


def mksquashfs_argv(source, image, compression="zstd", level=None, block_size=1024 * 1024, epoch=0, processors=None):
    """The mksquashfs command line of a reproducible image: fixed times, root owners, no xattrs, no append."""
    argv = [shutil.which("mksquashfs") or "mksquashfs", source, image, "-noappend", "-no-progress", "-quiet",
            "-comp", compression, "-b", str(block_size), "-all-root", "-no-xattrs",
            "-mkfs-time", str(epoch), "-all-time", str(epoch)]
    if level is not None:
        argv += ["-Xcompression-level", str(level)]
    if processors:
        argv += ["-processors", str(processors)]
    return argv


# -- inputs ---------------------------------------------------------------------------------------


_DIGESTS = {}


def _file_sha256(path, info):
    """sha256 hex of a file, remembered by its identity: a file hard-linked into the build tree is read once."""
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)  # not ctime: linking changes it
    if key not in _DIGESTS:
        _DIGESTS[key] = digest_file(path)[0].split(":", 1)[1]
    return _DIGESTS[key]


def tree_entries(root):
    """Every entry below ROOT, sorted: ``(relative path, kind, mode, size, sha256 or link target)``.

    Files are hashed on a few threads (hashlib lets go of the interpreter lock), each file once per build."""
    entries, files = [], []
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + names):
            path = os.path.join(base, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                entries.append((relative, "link", mode, 0, os.readlink(path)))
            elif stat.S_ISDIR(info.st_mode):
                entries.append((relative, "dir", mode, 0, ""))
            elif stat.S_ISREG(info.st_mode):
                files.append((relative, path, mode, info))
            else:
                raise EnvBuildError(f"{path} is a device, socket or fifo; an environment image holds files, "
                                    "directories and links only; remove it from the tree")
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda item: _file_sha256(item[1], item[3]), files))
    for (relative, _path, mode, info), digest in zip(files, digests):
        entries.append((relative, "file", mode, info.st_size, digest))
    return sorted(entries)


def inputs_digest(recipe, options):
    """sha256 over everything a build depends on: the recipe, the build options, the tools, the input files.

    Equal digests mean an equal image, so a build whose digest matches the last one is skipped.
    """
    hasher = hashlib.sha256()
    hasher.update(canonical({"recipe": public_recipe(recipe), "options": options}))
    backend = recipe["backend"]
    if backend == "tree":
        hasher.update(canonical(tree_entries(recipe["tree"]["_source"])))
        if recipe["tree"]["closure"]:
            # The libraries copied in are inputs too: their digests follow from the binaries, resolved now.
            staged = recipe["tree"]["_source"]
            hasher.update(canonical(sorted((n, digest_file(p)[0]) for n, p in
                                           closure_libraries(staged, recipe["tree"]).items())))
    elif backend == "venv":
        venv = recipe["venv"]
        for path in ([venv["_requirements_file"]] if venv.get("_requirements_file") else []) + venv["_files"]:
            hasher.update(canonical([os.path.basename(path), digest_file(path)[0]]))
    return "sha256:" + hasher.hexdigest()


# -- ELF closure ----------------------------------------------------------------------------------


def is_elf(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _ELF_MAGIC
    except OSError:
        return False


def elf_files(root):
    """Regular ELF files below ROOT (executables and shared libraries), sorted."""
    found = []
    for relative, kind, _mode, _size, _digest in tree_entries(root):
        if kind == "file" and is_elf(os.path.join(root, relative)):
            found.append(relative)
    return found


def _is_system_library(name, extra):
    import fnmatch  # pylint: disable=import-outside-toplevel
    return any(fnmatch.fnmatch(name, pattern) for pattern in SYSTEM_LIBRARIES + tuple(extra))


def _ldd(path, library_path):
    """``{soname: resolved path or None}`` of every library PATH needs, directly or not (ldd's view)."""
    env = dict(os.environ, LC_ALL="C")
    if library_path:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    proc = subprocess.run([shutil.which("ldd") or "ldd", path], capture_output=True, text=True, check=False, env=env)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "not a dynamic executable" in text:
        return {}
    needed = {}
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"^(\S+)\s+=>\s+(not found|(\S+))", line)
        if match:
            needed[match.group(1)] = None if match.group(2) == "not found" else match.group(3)
    return needed


def closure_libraries(root, tree):
    """``{soname: path on the build host}`` of the shared libraries the ELF files below ROOT need, without the
    C library (which comes from the node) and without libraries the tree itself holds."""
    require_tool("ldd", "the tree backend's closure option needs it to find the libraries", "libc-bin")
    inside = {os.path.basename(p) for p in elf_files(root)}
    wanted, missing = {}, []
    for relative in elf_files(root):
        for soname, path in _ldd(os.path.join(root, relative), tree["_library_path"]).items():
            if _is_system_library(soname, tree["exclude_libraries"]) or soname in inside:
                continue
            if path is None:
                missing.append(f"{soname} (needed by {relative})")
            else:
                wanted[soname] = os.path.realpath(path)
    if missing:
        raise EnvBuildError(f"tree.closure: no library found for {', '.join(sorted(set(missing)))}; "
                            "add the directory that holds it to tree.library_path")
    return dict(sorted(wanted.items()))


def add_closure(root, tree):
    """Copy the closure's libraries into ROOT/lib and make every ELF file find them there ($ORIGIN RUNPATH).

    Returns the list of sonames copied in."""
    libraries = closure_libraries(root, tree)
    if not libraries:
        return []
    patchelf = require_tool("patchelf", "the tree backend's closure option needs it to point the programs at lib/", "patchelf")
    lib_dir = os.path.join(root, "lib")
    os.makedirs(lib_dir, exist_ok=True)
    for soname, path in libraries.items():
        target = os.path.join(lib_dir, soname)
        shutil.copyfile(path, target)
        os.chmod(target, 0o755)
    for relative in elf_files(root):
        path = os.path.join(root, relative)
        if not _ldd(path, [lib_dir] + tree["_library_path"]):
            continue  # static, or not dynamically linked
        origin = os.path.relpath(lib_dir, os.path.dirname(path))
        runpath = "$ORIGIN" if origin == "." else f"$ORIGIN/{origin}"
        run_tool([patchelf, "--set-rpath", runpath, path], f"tree.closure: patchelf {relative}")
    return list(libraries)


# -- backends -------------------------------------------------------------------------------------


def copy_tree(source, dest, hard_links=False, copy=()):
    """Copy SOURCE into DEST (which exists) with links kept as links and modes kept.

    With HARD_LINKS, files are hard-linked where the file system allows (nothing reads their bytes twice), except
    those named in COPY, which a later step changes."""
    for relative, kind, mode, _size, target in tree_entries(source):
        src, dst = os.path.join(source, relative), os.path.join(dest, relative)
        if kind == "dir":
            os.makedirs(dst, exist_ok=True)
            os.chmod(dst, mode)
        elif kind == "link":
            os.symlink(target, dst)
        else:
            if hard_links and relative not in copy:
                try:
                    os.link(src, dst)
                    continue
                except OSError as exc:
                    if not link_unsupported(exc):
                        raise
                    hard_links = False
            shutil.copyfile(src, dst)
            os.chmod(dst, mode)


def build_tree(recipe, root, hard_links):
    tree = recipe["tree"]
    # ELF files are patched in place by the closure step: those are copied, never linked to the source.
    patched = set(elf_files(tree["_source"])) if tree["closure"] else set()
    copy_tree(tree["_source"], root, hard_links=hard_links, copy=patched)
    return {"libraries": add_closure(root, tree) if tree["closure"] else []}


def _rewrite_text(path, old, new):
    """Replace OLD by NEW in the text file PATH; True when it changed."""
    with open(path, "rb") as handle:
        data = handle.read()
    if old.encode() not in data or b"\0" in data[:8192]:
        return False
    with open(path, "wb") as handle:
        handle.write(data.replace(old.encode(), new.encode()))
    return True


def _fix_records(root):
    """Make every installed distribution's RECORD match the files as they are now (rewritten scripts, removed
    bytecode and direct_url.json), so that the RECORD is the same whatever the build directory was."""
    import base64  # pylint: disable=import-outside-toplevel
    import csv  # pylint: disable=import-outside-toplevel
    for base, _dirs, names in os.walk(root):
        if "RECORD" not in names or not base.endswith(".dist-info") or os.path.islink(base):
            continue
        record = os.path.join(base, "RECORD")
        site = os.path.dirname(base)
        with open(record, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        kept = []
        for row in rows:
            if not row:
                continue
            path = os.path.normpath(os.path.join(site, row[0]))
            if not os.path.lexists(path):
                continue
            if len(row) >= 3 and row[1] and os.path.isfile(path) and not os.path.islink(path):
                digest, size = digest_file(path)
                encoded = base64.urlsafe_b64encode(bytes.fromhex(digest.split(":", 1)[1])).rstrip(b"=").decode()
                row = [row[0], f"sha256={encoded}", str(size)]
            kept.append(row)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept)
        with open(record, "w", encoding="utf-8", newline="") as handle:
            handle.write(buffer.getvalue())


def build_venv(recipe, root, epoch):
    """A virtual environment in ROOT whose scripts and settings name the mount point, not ROOT."""
    venv = recipe["venv"]
    python = venv["python"]
    if not os.access(python, os.X_OK):
        raise EnvBuildError(f"venv.python {python} is not an executable on this build host; install it or name another")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PYTHONDONTWRITEBYTECODE="1", PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    run_tool([python, "-m", "venv", root], f"venv: creating the environment with {python}", env=env)
    args = [os.path.join(root, "bin", "python"), "-m", "pip", "install", "--no-compile", "--no-warn-script-location"]
    args += venv["pip_args"] + venv["requirements"] + venv["_files"]
    if venv.get("_requirements_file"):
        args += ["-r", venv["_requirements_file"]]
    run_tool(args, "venv: pip install", env=env)
    # The build path must not stay in the image: scripts, activate files and pyvenv.cfg name the mount point.
    mount = recipe["mount"]
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = os.path.join(base, name)
            if os.path.islink(path):
                continue
            if name == "direct_url.json":  # names the wheel's path on the build host
                os.unlink(path)
                continue
            if base == os.path.join(root, "bin") or name == "pyvenv.cfg":
                _rewrite_text(path, root, mount)
    for base, dirs, _names in os.walk(root, topdown=False):
        for name in dirs:
            if name == "__pycache__":
                shutil.rmtree(os.path.join(base, name))
    _fix_records(root)
    pip_version = run_tool([os.path.join(root, "bin", "python"), "-m", "pip", "--version"], "venv: pip --version", env=env)
    python_version = run_tool([python, "--version"], "venv: python --version", env=env)
    return {"tools": {"python": python_version.strip(), "pip": pip_version.split(" from ")[0].strip()}}


def require_spack(recipe):
    """The path of the spack command, or a clear error saying it is missing."""
    spack = shutil.which(recipe["spack"]["spack_command"])
    if not spack:
        raise EnvBuildError(f"recipe backend spack needs {recipe['spack']['spack_command']!r}, which is not on this build "
                            "host's PATH; install Spack there (and source its setup-env.sh), or build this recipe on a host "
                            "that has it")
    return spack


def build_spack(recipe, root, scratch):
    spack = require_spack(recipe)
    env_dir = os.path.join(scratch, "spack-env")
    os.makedirs(env_dir)
    import yaml  # pylint: disable=import-outside-toplevel
    with open(os.path.join(env_dir, "spack.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(spack_yaml(recipe), handle, sort_keys=True)
    mount = recipe["mount"]
    # Spack installs into the mount point (paths are compiled into what it builds); the image is taken from there.
    if os.path.exists(mount) and os.listdir(mount):
        raise EnvBuildError(f"spack: the mount point {mount} on this build host is not empty; spack builds into it, "
                            "so empty it (or build on a host where it is free)")
    os.makedirs(mount, exist_ok=True)
    try:
        run_tool([spack, "-e", env_dir, "concretize", "-f"], "spack concretize")
        run_tool([spack, "-e", env_dir, "install", "--fail-fast"], "spack install")
        copy_tree(mount, root)
    finally:
        shutil.rmtree(mount, ignore_errors=True)
    shutil.copyfile(os.path.join(env_dir, "spack.yaml"), os.path.join(root, META_DIR, "spack.yaml"))
    return {"tools": {"spack": tool_version(spack)}}


# -- metadata ---------------------------------------------------------------------------------------


def env_json(recipe):
    """meta/env.json as the uenv tool reads it: name, version, description, mount, and per view the
    environment variable updates (``env.values.list`` with prepend/append ops, ``env.values.scalar``)."""
    views = {}
    for name, view in sorted(recipe["views"].items()):
        lists = {}
        for op, key in (("prepend", "prepend_path"), ("append", "append_path")):
            for var, values in sorted(view[key].items()):
                lists.setdefault(var, []).append({"op": op, "value": list(values)})
        views[name] = {"description": view["description"], "root": recipe["mount"],
                       "env": {"version": 1, "type": "augment",
                               "values": {"list": lists, "scalar": dict(sorted(view["set"].items()))}}}
    return {"name": recipe["name"], "version": recipe["version"], "description": recipe["description"],
            "mount": recipe["mount"], "views": views}


def file_manifest(root, skip=(MANIFEST_FILE,)):
    """Every file, link and directory of the image: path, kind, size, mode (octal string), sha256 or link target."""
    listing = []
    for relative, kind, mode, size, value in tree_entries(root):
        if relative in skip:
            continue
        entry = {"path": relative, "type": kind, "mode": "%04o" % mode}
        if kind == "file":
            entry.update(size=size, sha256=value)
        elif kind == "link":
            entry["target"] = value
        listing.append(entry)
    return listing


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.chmod(path, 0o644)


def write_meta(root, recipe, provenance):
    meta = os.path.join(root, META_DIR)
    os.makedirs(meta, exist_ok=True)
    os.chmod(meta, 0o755)
    _write_json(os.path.join(root, ENV_FILE), env_json(recipe))
    _write_json(os.path.join(root, RECIPE_FILE), public_recipe(recipe))
    _write_json(os.path.join(root, PROVENANCE_FILE), provenance)
    manifest = file_manifest(root)
    _write_json(os.path.join(root, MANIFEST_FILE), {"files": manifest})
    return manifest


def fix_times(root, epoch):
    """Every entry gets the fixed time (links too), deepest first so that directories keep it."""
    for base, dirs, names in os.walk(root, topdown=False):
        for name in dirs + names:
            os.utime(os.path.join(base, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def write_tar_zst(root, image, epoch, level=None):
    """A tar of ROOT with sorted entries, root owners and the fixed time, compressed with zstd."""
    zstd = require_tool("zstd", "format tar.zst needs it", "zstd")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, kind, mode, size, target in tree_entries(root):
            info = tarfile.TarInfo(relative)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, epoch, 0, 0, "root", "root"
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = size
                with open(os.path.join(root, relative), "rb") as handle:
                    tar.addfile(info, handle)
    argv = [zstd, "-q", "-f", "--no-progress", "-T1", f"-{level or 19}", "-o", image]
    proc = subprocess.run(argv, input=buffer.getvalue(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise EnvBuildError(f"zstd exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")


# -- the build --------------------------------------------------------------------------------------


def build_record_path(dest):
    return dest.rstrip("/") + BUILD_RECORD_SUFFIX


def read_build_record(dest):
    try:
        with open(build_record_path(dest), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def image_digest(dest, image_format):
    """sha256 of the image file, or of a directory image's manifest (what identifies its content)."""
    if image_format == "directory":
        return digest_file(os.path.join(dest, MANIFEST_FILE))[0]
    return digest_file(dest)[0]


def is_current(dest, image_format, digest_of_inputs):
    """The image at DEST was built from these inputs and is intact."""
    record = read_build_record(dest)
    if not record or record.get("inputs_digest") != digest_of_inputs or record.get("format") != image_format:
        return None
    try:
        if image_digest(dest, image_format) != record.get("sha256"):
            return None
    except OSError:
        return None
    return record


def fixed_epoch(recipe, option):
    """The build's time: the option, else the recipe's source_date_epoch, else $SOURCE_DATE_EPOCH, else 0."""
    for value in (option, recipe.get("source_date_epoch"), os.environ.get("SOURCE_DATE_EPOCH")):
        if value is not None and str(value).strip() != "":
            try:
                return int(value)
            except ValueError:
                raise EnvBuildError(f"SOURCE_DATE_EPOCH {value!r} is not a whole number of seconds") from None
    return 0


def build_options(image_format, compression, level, block_size):
    """The options that change the image's bytes (part of the inputs digest)."""
    options = {"format": image_format}
    if image_format == "squashfs":
        options.update(compression=compression, level=level, block_size=block_size)
    elif image_format == "tar.zst":
        options.update(level=level)
    return options


def _install(scratch_result, dest, image_format, scratch):
    """Move the finished image to DEST: one rename for a file; a directory replaces the old one by two renames."""
    if image_format != "directory":
        os.replace(scratch_result, dest)
        fsync_dir(os.path.dirname(dest))
        return
    old = None
    if os.path.lexists(dest):
        old = os.path.join(scratch, "old")
        os.rename(dest, old)
    os.rename(scratch_result, dest)
    fsync_dir(os.path.dirname(dest))


def read_member(dest, image_format, member):
    """The bytes of MEMBER (e.g. meta/env.json) of the image at DEST."""
    if image_format == "directory":
        with open(os.path.join(dest, member), "rb") as handle:
            return handle.read()
    if image_format == "squashfs":
        argv = [require_tool("unsquashfs", "reading the image's metadata needs it", "squashfs-tools"), "-cat", dest, member]
    else:
        argv = ["tar", "--zstd", "-xOf", dest, member]
    proc = subprocess.run(argv, capture_output=True, check=False)
    if proc.returncode != 0:
        raise EnvBuildError(f"cannot read {member} of {dest}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def export_meta(dest, image_format, directory):
    """Copy the image's env.json, manifest.json and provenance.json into DIRECTORY (for attaching them)."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for member in (ENV_FILE, MANIFEST_FILE, PROVENANCE_FILE):
        target = os.path.join(directory, os.path.basename(member))
        data = read_member(dest, image_format, member)
        try:
            with open(target, "rb") as handle:
                same = handle.read() == data
        except OSError:
            same = False
        if not same:
            atomic_write(target, data, mode=0o644)
        paths[os.path.basename(member).split(".")[0]] = target
    return paths


def build(recipe_path, dest, image_format="squashfs", compression="zstd", level=None, block_size="1M",
          source_date_epoch=None, processors=None, force=False, check_mode=False):
    """Build RECIPE_PATH into DEST; return a result dict (changed, sha256, size, meta, ...).

    Nothing is written at DEST unless the whole build succeeded."""
    started = time.monotonic()
    if image_format not in FORMATS:
        raise EnvBuildError(f"format {image_format!r} is not one of {', '.join(FORMATS)}")
    if compression not in COMPRESSIONS:
        raise EnvBuildError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    block = parse_block_size(block_size)
    recipe = load_recipe(recipe_path)
    epoch = fixed_epoch(recipe, source_date_epoch)
    if recipe["backend"] == "spack":
        require_spack(recipe)  # before anything is created
    if image_format == "squashfs":
        require_tool("mksquashfs", "format squashfs needs it", "squashfs-tools")
    dest = os.path.abspath(dest)
    if not os.path.isdir(os.path.dirname(dest)):
        raise EnvBuildError(f"dest {dest}: its directory {os.path.dirname(dest)} does not exist; create it first")
    options = build_options(image_format, compression, level, block)
    digest_of_inputs = inputs_digest(recipe, dict(options, epoch=epoch))
    result = {"path": dest, "format": image_format, "name": recipe["name"], "version": recipe["version"],
              "mount": recipe["mount"], "inputs_digest": digest_of_inputs, "meta": env_json(recipe),
              "recipe_digest": digest_bytes(canonical(public_recipe(recipe)))}
    previous = read_build_record(dest)
    current = None if force else is_current(dest, image_format, digest_of_inputs)
    if current:
        result.update(changed=False, sha256=current["sha256"], size=current["size"], files=current.get("files"),
                      libraries=current.get("libraries", []), tools=current.get("tools", {}),
                      seconds=round(time.monotonic() - started, 3))
        return result
    result.update(changed=True, sha256=None, size=None, before_sha256=(previous or {}).get("sha256"))
    if check_mode:
        return result
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.build-", dir=os.path.dirname(dest))
    try:
        os.chmod(scratch, 0o755)
        root = os.path.join(scratch, "root")
        os.makedirs(root, mode=0o755)
        os.chmod(root, 0o755)
        outcome = {"libraries": [], "tools": {}}
        if recipe["backend"] == "tree":
            # mksquashfs and tar take owners and times from their options; the files themselves stay as they are.
            outcome.update(build_tree(recipe, root, hard_links=image_format != "directory"))
        elif recipe["backend"] == "venv":
            outcome.update(build_venv(recipe, root, epoch))
        else:
            os.makedirs(os.path.join(root, META_DIR))
            outcome.update(build_spack(recipe, root, scratch))
        tools = dict(outcome["tools"])
        if image_format == "squashfs":
            tools["mksquashfs"] = tool_version("mksquashfs", ("-version",))
        elif image_format == "tar.zst":
            tools["zstd"] = tool_version("zstd", ("--version",))
        if recipe["backend"] == "tree" and recipe["tree"]["closure"] and outcome["libraries"]:
            tools["patchelf"] = tool_version("patchelf")
        provenance = {"builder": "sciops.fleet.env_build", "recipe_digest": result["recipe_digest"],
                      "inputs_digest": digest_of_inputs, "backend": recipe["backend"], "options": options,
                      "source_date_epoch": epoch,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
                      "tools": dict(sorted(tools.items())), "libraries": outcome["libraries"]}
        manifest = write_meta(root, recipe, provenance)
        if image_format == "directory":
            fix_times(root, epoch)
        built = root
        if image_format == "squashfs":
            built = os.path.join(scratch, "image.squashfs")
            run_tool(mksquashfs_argv(root, built, compression, level, block, epoch, processors), f"mksquashfs {dest}")
        elif image_format == "tar.zst":
            built = os.path.join(scratch, "image.tar.zst")
            write_tar_zst(root, built, epoch, level)
        if image_format != "directory":
            os.chmod(built, 0o644)
            # The image goes to disk while it is hashed from the page cache: neither waits for the other.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                synced = pool.submit(fsync_file, built)
                sha256 = image_digest(built, image_format)
                synced.result()
        else:
            sha256 = image_digest(root, image_format)
        size = os.path.getsize(built) if image_format != "directory" else sum(e.get("size", 0) for e in manifest)
        _install(built, dest, image_format, scratch)
        record = {"inputs_digest": digest_of_inputs, "sha256": sha256, "size": size, "format": image_format,
                  "files": len(manifest), "libraries": outcome["libraries"], "tools": provenance["tools"],
                  "recipe_digest": result["recipe_digest"]}
        atomic_write(build_record_path(dest), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(sha256=sha256, size=size, files=len(manifest), libraries=outcome["libraries"],
                  tools=provenance["tools"], seconds=round(time.monotonic() - started, 3))
    return result
