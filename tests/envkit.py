# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inputs for the environment-build tests: a C program and its own shared library, recipes, image readers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

LIBRARY = r"""
#include <stdio.h>
void greet(const char *who) { printf("hello from libgreet %d, %s\n", 1, who); }
"""
PROGRAM = r"""
void greet(const char *who);
int main(int argc, char **argv) { greet(argc > 1 ? argv[1] : "world"); return 0; }
"""


def compile_greeter(tmp_path, out, rpath=None):
    """Compile the greeter program against libgreet.so.1 (in tmp_path/libsrc) into OUT."""
    src = tmp_path / "main.c"
    src.write_text(PROGRAM)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O1", "-o", str(out), str(src), f"-L{tmp_path / 'libsrc'}", "-lgreet",
                    f"-Wl,-rpath,{rpath or tmp_path / 'libsrc'}"], check=True)


def greeter_recipe(tmp_path, closure=False, extra=None, name="recipe.yaml"):
    """A tree recipe whose stage holds bin/greeter, linked against a libgreet.so.1 that only this test built
    (so no node has it). The library stays in tmp_path/libsrc, outside the stage."""
    lib = tmp_path / "libsrc"
    if not (tmp_path / "stage" / "bin" / "greeter").exists():
        lib.mkdir(exist_ok=True)
        (lib / "greet.c").write_text(LIBRARY)
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libgreet.so.1", "-o", str(lib / "libgreet.so.1"),
                        str(lib / "greet.c")], check=True)
        os.symlink("libgreet.so.1", lib / "libgreet.so")
        compile_greeter(tmp_path, tmp_path / "stage" / "bin" / "greeter")
    recipe = {"name": "greeter", "version": "1.0.0", "mount": "/opt/envs/greeter", "backend": "tree",
              "tree": {"source": "stage", "closure": closure}}
    recipe.update(extra or {})
    path = tmp_path / name
    path.write_text(json.dumps(recipe, indent=1))
    return path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def image_json(image, member):
    """A JSON file read from inside a squashfs image with unsquashfs -cat."""
    out = subprocess.run(["unsquashfs", "-cat", str(image), member], capture_output=True, check=True).stdout
    return json.loads(out)


def unsquashfs_has_utc():
    return "-UTC" in subprocess.run(["unsquashfs", "-help"], capture_output=True, text=True, check=False).stdout + \
        subprocess.run(["unsquashfs", "-help"], capture_output=True, text=True, check=False).stderr


def assert_uenv_meta(meta):
    """META has the fields the uenv tool reads from meta/env.json, with the types it expects:
    name, description, mount (strings), views: {name: {description, env: {values: {list: {VAR: [{op, value: [...]}]},
    scalar: {VAR: str}}}}} with op one of prepend, append, set."""
    assert isinstance(meta.get("name"), str) and meta["name"]
    assert isinstance(meta.get("description"), str)
    assert isinstance(meta.get("mount"), str) and meta["mount"].startswith("/")
    assert isinstance(meta.get("version"), str)
    assert isinstance(meta.get("views"), dict) and meta["views"]
    for name, view in meta["views"].items():
        assert isinstance(name, str) and isinstance(view.get("description"), str)
        values = view["env"]["values"]
        assert isinstance(values["list"], dict) and isinstance(values["scalar"], dict)
        for var, updates in values["list"].items():
            assert var and isinstance(updates, list)
            for update in updates:
                assert update["op"] in ("prepend", "append", "set")
                assert isinstance(update["value"], list) and all(isinstance(v, str) for v in update["value"])
        for var, value in values["scalar"].items():
            assert var and isinstance(value, str)


_GOOD = {"name": "greeter", "version": "1.0.0", "mount": "/opt/envs/greeter", "backend": "tree", "tree": {"source": "stage"}}

# case -> (recipe, texts the error must contain)
BAD_RECIPES = {
    "unknown top-level key": (dict(_GOOD, colour="blue"),
                              ["colour: unknown field; the known ones are schema_version, name, version"]),
    "unknown tree key": (dict(_GOOD, tree={"source": "stage", "closur": True}),
                         ["tree.closur: unknown field; the known ones are source, closure"]),
    "missing source directory": (dict(_GOOD, tree={"source": "no-such-stage"}),
                                 ["tree.source: 'no-such-stage' is not a directory", "fix the path, relative to the recipe"]),
    "missing requirements file": (dict(_GOOD, backend="venv", tree=None, venv={"requirements_file": "missing.txt"}),
                                  ["venv.requirements_file: 'missing.txt' is not a file"]),
    "bad version": (dict(_GOOD, version="v1.0"), ["version: 'v1.0' is not valid (start with a digit"]),
    "bad name and relative mount": (dict(_GOOD, name="Greeter", mount="opt/envs"),
                                    ["name: 'Greeter' is not valid", "mount: 'opt/envs' must be an absolute path"]),
    "unknown backend": (dict(_GOOD, backend="conda"), ["backend: 'conda' is not one of tree, venv, spack"]),
    "bad view variable": (dict(_GOOD, views={"default": {"prepend_path": {"PA TH": ["bin"]}}}),
                          ["views.default.prepend_path.PA TH: is not an environment variable name"]),
}
