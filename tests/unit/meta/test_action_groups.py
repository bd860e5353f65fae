# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry action group names exactly the modules that take the shared registry options, so that
``module_defaults: {group/sciops.fleet.registry: ...}`` reaches every one of them."""

import importlib
import pathlib

import yaml

from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import REGISTRY_ARGUMENT_SPEC

ROOT = pathlib.Path(__file__).resolve().parents[3]


def _modules_taking_registry_options():
    names = set()
    for path in sorted((ROOT / "plugins" / "modules").glob("*.py")):
        module = importlib.import_module(f"ansible_collections.sciops.fleet.plugins.modules.{path.stem}")
        doc = yaml.safe_load(module.DOCUMENTATION)
        fragments = doc.get("extends_documentation_fragment") or []
        if "sciops.fleet.registry" in fragments or all(o in (doc.get("options") or {}) for o in REGISTRY_ARGUMENT_SPEC):
            names.add(f"sciops.fleet.{path.stem}")
    return names


def test_the_registry_group_lists_every_module_with_the_registry_options_and_no_other():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    group = set(runtime["action_groups"]["registry"])
    expected = _modules_taking_registry_options()
    assert expected, "no module documents the registry options: the check would prove nothing"
    assert group == expected, f"missing from the group: {sorted(expected - group)}; not taking them: {sorted(group - expected)}"
