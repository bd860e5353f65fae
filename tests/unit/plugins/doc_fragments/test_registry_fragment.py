# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The registry doc fragment documents the registry options exactly as the shared argument spec declares them."""

from __future__ import annotations

import yaml

from ansible_collections.sciops.fleet.plugins.doc_fragments.registry import ModuleDocFragment
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import REGISTRY_ARGUMENT_SPEC


def test_documented_options_and_defaults_equal_the_argument_spec():
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert set(documented) == set(REGISTRY_ARGUMENT_SPEC)
    for name, spec in REGISTRY_ARGUMENT_SPEC.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
