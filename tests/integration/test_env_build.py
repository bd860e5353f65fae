# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""env_build with the real mksquashfs: reproducible images, uenv metadata, the ELF closure, clear errors.

The build host is this machine; nothing here needs the fleet (test_env_nodes.py deploys images to nodes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import envkit

pytestmark = pytest.mark.skipif(not shutil.which("mksquashfs"), reason="needs mksquashfs (squashfs-tools)")


def _build(run_module, recipe, dest, **options):
    result = run_module("env_build", recipe=str(recipe), dest=str(dest), **options)
    assert not result.get("failed"), result
    return result


def test_same_recipe_same_bytes_changed_input_new_digest_and_no_rebuild(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, closure=True)
    first = _build(run_module, recipe, tmp_path / "a.squashfs")
    other = _build(run_module, recipe, tmp_path / "b.squashfs")
    assert first["changed"] and other["changed"]
    assert first["sha256"] == other["sha256"]
    assert (tmp_path / "a.squashfs").read_bytes() == (tmp_path / "b.squashfs").read_bytes()

    again = _build(run_module, recipe, tmp_path / "a.squashfs")
    assert again["changed"] is False and again["sha256"] == first["sha256"]
    predicted = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "a.squashfs"), check=True)
    assert predicted["changed"] is False

    # One changed byte of an input gives another image, and a rebuild.
    (tmp_path / "stage" / "share").mkdir()
    (tmp_path / "stage" / "share" / "greeting.txt").write_text("hello\n")
    changed = _build(run_module, recipe, tmp_path / "a.squashfs")
    assert changed["changed"] and changed["sha256"] != first["sha256"]
    (tmp_path / "stage" / "share" / "greeting.txt").write_text("hellO\n")
    predicted = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "a.squashfs"), check=True)
    assert predicted["changed"] is True and predicted["sha256"] is None
    assert envkit.sha256(tmp_path / "a.squashfs") == changed["sha256"]  # check mode built nothing

    # A damaged image is rebuilt even though its inputs did not change.
    _build(run_module, recipe, tmp_path / "a.squashfs")
    with open(tmp_path / "a.squashfs", "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert _build(run_module, recipe, tmp_path / "a.squashfs")["changed"] is True


def test_the_time_comes_from_the_recipe_or_source_date_epoch_never_the_clock(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, extra={"source_date_epoch": 1700000000})
    built = _build(run_module, recipe, tmp_path / "t.squashfs")
    listing = subprocess.run(["unsquashfs", "-ll", "-UTC", str(tmp_path / "t.squashfs")], capture_output=True, text=True,
                             check=True).stdout if envkit.unsquashfs_has_utc() else \
        subprocess.run(["unsquashfs", "-ll", str(tmp_path / "t.squashfs")], capture_output=True, text=True,
                       check=True, env=dict(os.environ, TZ="UTC")).stdout
    stamps = {line.split()[3] for line in listing.splitlines() if line.startswith(("-", "d", "l"))}
    assert stamps == {"2023-11-14"}, listing
    provenance = envkit.image_json(tmp_path / "t.squashfs", "meta/provenance.json")
    assert provenance["time"] == "2023-11-14T22:13:20Z" and provenance["source_date_epoch"] == 1700000000
    assert provenance["inputs_digest"] == built["inputs_digest"]
    assert provenance["recipe_digest"] == built["recipe_digest"]
    assert provenance["tools"]["mksquashfs"].startswith("mksquashfs version")
    # No trace of the build host: its paths, its host name.
    raw = subprocess.run(["unsquashfs", "-cat", str(tmp_path / "t.squashfs"), "meta/provenance.json"],
                         capture_output=True, text=True, check=True).stdout
    assert str(tmp_path) not in raw and os.uname().nodename not in raw


def test_env_json_is_what_uenv_reads_and_unsquashfs_lists_the_manifest(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, closure=True, extra={
        "description": "greeter and its library",
        "views": {"default": {"description": "the greeter on PATH", "prepend_path": {"PATH": ["bin"]},
                              "set": {"GREETER_HOME": "/opt/envs/greeter"}},
                  "develop": {"prepend_path": {"PATH": ["bin"], "LD_LIBRARY_PATH": ["lib"]},
                              "append_path": {"MANPATH": ["share/man"]}}}})
    image = tmp_path / "g.squashfs"
    built = _build(run_module, recipe, image)
    meta = envkit.image_json(image, "meta/env.json")
    envkit.assert_uenv_meta(meta)
    assert meta == built["meta"]
    assert meta["name"] == "greeter" and meta["version"] == "1.0.0" and meta["mount"] == "/opt/envs/greeter"
    assert meta["description"] == "greeter and its library"
    assert meta["views"]["default"]["env"]["values"]["list"]["PATH"] == [{"op": "prepend", "value": ["/opt/envs/greeter/bin"]}]
    assert meta["views"]["default"]["env"]["values"]["scalar"] == {"GREETER_HOME": "/opt/envs/greeter"}
    assert meta["views"]["develop"]["env"]["values"]["list"]["MANPATH"] == [{"op": "append", "value": ["/opt/envs/greeter/share/man"]}]

    listing = subprocess.run(["unsquashfs", "-l", str(image)], capture_output=True, text=True, check=True).stdout
    paths = {line[len("squashfs-root/"):] for line in listing.splitlines() if line.startswith("squashfs-root/")}
    for name in ("meta/env.json", "meta/manifest.json", "meta/provenance.json", "meta/recipe.json",
                 "bin/greeter", "lib/libgreet.so.1"):
        assert name in paths, listing
    manifest = envkit.image_json(image, "meta/manifest.json")["files"]
    by_path = {entry["path"]: entry for entry in manifest}
    # The manifest names every entry of the image but itself, with the digest of what is really there.
    assert set(by_path) == paths - {"meta/manifest.json"}
    unpacked = tmp_path / "unpacked"
    subprocess.run(["unsquashfs", "-q", "-d", str(unpacked), str(image)], capture_output=True, check=True)
    for entry in manifest:
        if entry["type"] == "file":
            assert envkit.sha256(unpacked / entry["path"]) == "sha256:" + entry["sha256"], entry["path"]
            assert (unpacked / entry["path"]).stat().st_size == entry["size"]
            assert "%04o" % ((unpacked / entry["path"]).stat().st_mode & 0o7777) == entry["mode"]
    assert by_path["bin/greeter"]["mode"] == "0755"


def test_the_closure_makes_the_program_independent_of_the_build_hosts_libraries(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, closure=True)
    built = _build(run_module, recipe, tmp_path / "c.squashfs")
    assert built["libraries"] == ["libgreet.so.1"]
    unpacked = tmp_path / "c"
    subprocess.run(["unsquashfs", "-q", "-d", str(unpacked), str(tmp_path / "c.squashfs")], capture_output=True, check=True)
    dynamic = subprocess.run(["readelf", "-d", str(unpacked / "bin" / "greeter")], capture_output=True, text=True,
                             check=True).stdout
    assert "[$ORIGIN/../lib]" in dynamic and str(tmp_path) not in dynamic
    # The library's build directory goes away: the image's program still runs, the staged one does not.
    shutil.rmtree(tmp_path / "libsrc")
    ran = subprocess.run([str(unpacked / "bin" / "greeter"), "test"], capture_output=True, text=True, check=False)
    assert ran.returncode == 0 and ran.stdout == "hello from libgreet 1, test\n", ran
    staged = subprocess.run([str(tmp_path / "stage" / "bin" / "greeter")], capture_output=True, text=True, check=False)
    assert staged.returncode != 0 and "libgreet.so.1" in staged.stderr


def test_tar_zst_and_directory_formats_are_reproducible_too(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, closure=True)
    for fmt, name in (("tar.zst", "e.tar.zst"), ("directory", "e.dir")):
        first = _build(run_module, recipe, tmp_path / f"1-{name}", format=fmt)
        second = _build(run_module, recipe, tmp_path / f"2-{name}", format=fmt)
        assert first["sha256"] == second["sha256"], fmt
        assert _build(run_module, recipe, tmp_path / f"1-{name}", format=fmt)["changed"] is False
    listing = subprocess.run(["tar", "--zstd", "-tvf", str(tmp_path / "1-e.tar.zst")], capture_output=True, text=True,
                             check=True).stdout
    assert "root/root" in listing and "meta/env.json" in listing
    assert json.loads((tmp_path / "1-e.dir" / "meta" / "env.json").read_text())["name"] == "greeter"


def test_compression_and_block_size_are_applied(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path)
    image = tmp_path / "x.squashfs"
    _build(run_module, recipe, image, compression="xz", block_size="128K")
    stats = subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True, text=True, check=True).stdout
    assert "Compression xz" in stats and "Block size 131072" in stats
    bad = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "y.squashfs"), block_size="3M")
    assert bad["failed"] and "block_size '3M' must be a power of two from 4K to 1M" in bad["msg"]


@pytest.mark.parametrize("case", sorted(envkit.BAD_RECIPES))
def test_a_bad_recipe_is_refused_with_a_clear_error_and_no_image(run_module, tmp_path, case):
    envkit.greeter_recipe(tmp_path)  # the stage and library that good fields point at
    data, expected = envkit.BAD_RECIPES[case]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(json.dumps(data))
    dest = tmp_path / "out" / "bad.squashfs"
    dest.parent.mkdir()
    result = run_module("env_build", recipe=str(recipe), dest=str(dest))
    assert result["failed"], result
    for text in expected:
        assert text in result["msg"], result["msg"]
    assert os.listdir(dest.parent) == []  # no image, no record, no scratch


def test_a_build_that_fails_midway_leaves_the_previous_image(run_module, tmp_path):
    recipe = envkit.greeter_recipe(tmp_path, closure=True)
    image = tmp_path / "keep.squashfs"
    good = _build(run_module, recipe, image)
    # A new program that needs a library no directory holds: the closure step fails after the copy began.
    envkit.compile_greeter(tmp_path, tmp_path / "stage" / "bin" / "orphan", rpath="/nonexistent")
    (tmp_path / "libsrc" / "libgreet.so.1").rename(tmp_path / "libgreet.so.1.away")
    failed = run_module("env_build", recipe=str(recipe), dest=str(image))
    assert failed["failed"] and "no library found for libgreet.so.1" in failed["msg"]
    assert "tree.library_path" in failed["msg"]
    assert envkit.sha256(image) == good["sha256"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".keep.squashfs.build-")]  # no scratch left


def test_spack_yaml_is_written_and_spack_runs_only_where_it_is(run_module, tmp_path):
    recipe = tmp_path / "spack.yaml.recipe"
    recipe.write_text(json.dumps({"name": "hdf5", "version": "1.14.3", "mount": "/user-environment", "backend": "spack",
                                  "spack": {"specs": ["hdf5@1.14.3 +mpi"], "compilers": ["gcc@12"]}}))
    (tmp_path / "out").mkdir()
    result = run_module("env_build", recipe=str(recipe), dest=str(tmp_path / "out" / "hdf5.squashfs"))
    if shutil.which("spack"):
        assert not result.get("failed"), result
    else:
        assert result["failed"]
        assert "'spack', which is not on this build host's PATH; install Spack there" in result["msg"]
        assert os.listdir(tmp_path / "out") == []
