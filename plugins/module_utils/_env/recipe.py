# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The environment recipe: what an image is built from, validated into its canonical form.

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
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import DocumentError, read_document
from ansible_collections.sciops.fleet.plugins.module_utils._common.schema import NAME_RE, VERSION_RE, Checker
from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError, RecipeError

SCHEMA_VERSION = 1
BACKENDS = ("tree", "venv", "spack")

_TOP_KEYS = ("schema_version", "name", "version", "description", "mount", "source_date_epoch", "backend",
             "tree", "venv", "spack", "views")
_TREE_KEYS = ("source", "closure", "library_path", "exclude_libraries")
_VENV_KEYS = ("requirements", "requirements_file", "python", "pip_args", "files")
_SPACK_KEYS = ("specs", "compilers", "packages", "views", "mirrors", "spack_command")
_VIEW_KEYS = ("description", "prepend_path", "append_path", "set")
_SPACK_VIEW_KEYS = ("link", "exclude", "projections", "link_type")
_ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _mapping(check: Checker, data: Dict[str, Any], key: str, field: str) -> Dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        check.add(field, f"must be a mapping, not {type(value).__name__}")
        return {}
    return value


def _bool(check: Checker, data: Dict[str, Any], key: str, field: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        check.add(field, f"must be true or false, not {value!r}")
        return default
    return value


def _existing(check: Checker, base: str, value: str, field: str, want_dir: bool) -> str:
    path = os.path.normpath(os.path.join(base, value))
    if want_dir and not os.path.isdir(path):
        check.add(field, f"{value!r} is not a directory (looked for {path}); create it or fix the path, relative to the recipe")
    elif not want_dir and not os.path.isfile(path):
        check.add(field, f"{value!r} is not a file (looked for {path}); create it or fix the path, relative to the recipe")
    return path


def _validate_views(check: Checker, data: Dict[str, Any], mount: str | None) -> Dict[str, Any]:
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


def validate_recipe(data: Any, source: str = "(given)", base_dir: str = ".") -> Dict[str, Any]:
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


def default_views(recipe: Dict[str, Any]) -> Dict[str, Any]:
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


def load_recipe(path: str) -> Dict[str, Any]:
    """Read and validate the recipe file PATH (YAML or JSON)."""
    try:
        data = read_document(path)  # a build host without PyYAML can still read a JSON recipe
    except OSError as exc:
        raise EnvBuildError(f"recipe {path} cannot be read: {exc.strerror}; give the path of an existing recipe file") from None
    except DocumentError as exc:
        raise RecipeError(path, [str(exc)]) from None
    return validate_recipe(data, path, os.path.dirname(os.path.abspath(path)))


def public_recipe(recipe: Any) -> Any:
    """The recipe without the resolved (host-specific) paths: what goes into the image and its digest."""
    if isinstance(recipe, dict):
        return {k: public_recipe(v) for k, v in recipe.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(recipe, list):
        return [public_recipe(v) for v in recipe]
    return recipe
