# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recipe validation, spack.yaml generation and uenv metadata, without building anything."""

from __future__ import annotations

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._env.errors import EnvBuildError, RecipeError
from ansible_collections.sciops.fleet.plugins.module_utils._env.image import parse_block_size
from ansible_collections.sciops.fleet.plugins.module_utils._env.metadata import env_json
from ansible_collections.sciops.fleet.plugins.module_utils._env.recipe import validate_recipe
from ansible_collections.sciops.fleet.plugins.module_utils._env.spack import spack_yaml

SPACK = {"name": "hpc", "version": "24.7", "mount": "/user-environment", "backend": "spack",
         "spack": {"specs": ["hdf5@1.14 +mpi", "cmake"], "compilers": ["gcc@12"],
                   "packages": {"mpich": {"externals": [{"spec": "mpich@4.1", "prefix": "/usr"}], "buildable": False}},
                   "views": {"default": {"link": "roots"}, "develop": {"link": "all", "exclude": ["cmake"]}}}}


def test_spack_yaml_has_the_specs_compilers_packages_and_views_under_the_mount():
    recipe = validate_recipe(SPACK)
    document = spack_yaml(recipe)["spack"]
    assert document["specs"] == ["hdf5@1.14 +mpi", "cmake"]
    assert document["packages"]["all"]["require"] == ["%gcc@12"]
    assert document["packages"]["mpich"]["buildable"] is False
    assert document["view"] == {"default": {"root": "/user-environment/views/default", "link": "roots"},
                                "develop": {"root": "/user-environment/views/develop", "link": "all", "exclude": ["cmake"]}}
    assert document["config"]["install_tree"]["root"] == "/user-environment/store"
    assert document["concretizer"]["unify"] is True


def test_several_compilers_become_one_of_requirements_and_views_reach_env_json():
    data = dict(SPACK, spack=dict(SPACK["spack"], compilers=["gcc@12", "nvhpc@24.3"]))
    recipe = validate_recipe(data)
    assert spack_yaml(recipe)["spack"]["packages"]["all"]["require"] == [{"one_of": ["%gcc@12", "%nvhpc@24.3"]}]
    meta = env_json(recipe)
    assert sorted(meta["views"]) == ["default", "develop"]
    assert meta["views"]["develop"]["env"]["values"]["list"]["PATH"] == [
        {"op": "prepend", "value": ["/user-environment/views/develop/bin"]}]


def test_every_wrong_field_is_named_at_once(tmp_path):
    bad = {"name": "Hpc", "version": "latest", "mount": "relative", "backend": "spack", "colour": 1,
           "spack": {"specs": [], "compiler": ["gcc"]}, "tree": {"source": "x"}}
    with pytest.raises(RecipeError) as caught:
        validate_recipe(bad, "hpc.yaml", str(tmp_path))
    message = str(caught.value)
    assert message.startswith("recipe hpc.yaml is not valid: ")
    for text in ("colour: unknown field", "name: 'Hpc' is not valid", "version: 'latest' is not valid",
                 "mount: 'relative' must be an absolute path", "spack.compiler: unknown field",
                 "spack.specs: is required", "tree: belongs to the tree backend"):
        assert text in message, message


def test_a_venv_recipe_gets_a_default_view_with_virtual_env(tmp_path):
    recipe = validate_recipe({"name": "tool", "version": "1.0", "mount": "/opt/tool", "backend": "venv",
                              "venv": {"requirements": ["cowsay==6.1"]}}, "r", str(tmp_path))
    view = env_json(recipe)["views"]["default"]
    assert view["env"]["values"]["scalar"] == {"VIRTUAL_ENV": "/opt/tool"}
    assert view["env"]["values"]["list"]["PATH"] == [{"op": "prepend", "value": ["/opt/tool/bin"]}]


@pytest.mark.parametrize("value,size", [("1M", 1048576), ("128K", 131072), ("4096", 4096), (65536, 65536)])
def test_block_sizes(value, size):
    assert parse_block_size(value) == size


@pytest.mark.parametrize("value", ["2M", "1000", "big", "2K"])
def test_bad_block_sizes(value):
    with pytest.raises(EnvBuildError, match="block_size"):
        parse_block_size(value)
