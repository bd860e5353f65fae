# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module documents itself, and every task in its EXAMPLES is a valid call of that module.

The options come from ansible-doc (doc fragments merged), as a user reads them; each example task's
arguments are validated against them the way AnsibleModule validates arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(REPO, "plugins", "modules"))
                 if name.endswith(".py") and not name.startswith("_"))
PLACEHOLDERS = {"str": "x", "path": "/x", "bool": True, "int": 1, "float": 1.0, "dict": {}, "list": [], "raw": "x"}


@pytest.fixture(scope="module")
def docs():
    ansible_doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    out = subprocess.run([ansible_doc, "--json", "-t", "module", *[f"sciops.fleet.{m}" for m in MODULES]],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _spec(options):
    spec = {}
    for name, option in (options or {}).items():
        entry = {"type": option.get("type", "str")}
        for key in ("required", "default", "choices", "elements", "aliases"):
            if key in option:
                entry[key] = option[key]
        if option.get("suboptions"):
            entry["options"] = _spec(option["suboptions"])
        spec[name] = entry
    return spec


def _untemplated(value, option):
    """Replace Jinja2 expressions (which Ansible renders before the module sees them) with a value of the type."""
    if isinstance(value, str) and "{{" in value:
        return PLACEHOLDERS.get(option.get("type", "str"), "x")
    if isinstance(value, list) and option.get("suboptions"):
        return [{k: _untemplated(v, option["suboptions"].get(k, {})) for k, v in item.items()} if isinstance(item, dict) else item
                for item in value]
    return value


@pytest.mark.parametrize("module", MODULES)
def test_the_module_has_a_manual_page(docs, module):
    doc = docs[f"sciops.fleet.{module}"]
    assert doc["doc"]["short_description"] and doc["doc"]["description"]
    assert doc["examples"].lstrip().startswith("---")
    for name, entry in (doc.get("return") or {}).items():
        assert {"description", "returned", "type"} <= set(entry), f"{module} return value {name} is incomplete"
    assert {"check_mode", "diff_mode", "idempotent"} <= set(doc["doc"].get("attributes") or {})


@pytest.mark.parametrize("module", MODULES)
def test_every_example_is_a_valid_call(docs, module):
    doc = docs[f"sciops.fleet.{module}"]
    options = doc["doc"].get("options") or {}
    tasks = yaml.safe_load(doc["examples"])
    calls = [task[f"sciops.fleet.{module}"] for task in tasks if f"sciops.fleet.{module}" in task]
    assert calls, f"{module} has no example that calls it by its FQCN"
    validator = ArgumentSpecValidator(_spec(options))
    for call in calls:
        args = {key: _untemplated(value, options.get(key, {})) for key, value in call.items()}
        result = validator.validate(args)
        assert not result.error_messages, f"{module} example {call} is invalid: {result.error_messages}"
