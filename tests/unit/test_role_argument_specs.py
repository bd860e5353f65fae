# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's options are documented in meta/argument_specs.yml, in step with defaults/main.yml: each default
is a documented option, and a documented default is the value the role really has (``ansible-doc -t role``
shows the spec, the role runs with defaults/main.yml)."""

from __future__ import annotations

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(path for path in (ROOT / "roles").iterdir() if path.is_dir())


def _load(path: pathlib.Path) -> dict:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_defaults_and_argument_specs_agree(role: pathlib.Path) -> None:
    defaults = _load(role / "defaults" / "main.yml")
    specs = _load(role / "meta" / "argument_specs.yml").get("argument_specs")
    if not specs:
        assert not defaults, f"{role.name} has defaults but no meta/argument_specs.yml documenting them"
        return
    options = {}
    for entry_point in specs.values():
        options.update((entry_point or {}).get("options") or {})
    undocumented = sorted(set(defaults) - set(options))
    assert not undocumented, f"{role.name}: defaults/main.yml sets {undocumented}, which meta/argument_specs.yml does not document"
    wrong = {name: (spec["default"], defaults.get(name, "(not in defaults/main.yml)"))
             for name, spec in options.items() if "default" in spec and defaults.get(name, object()) != spec["default"]}
    assert not wrong, f"{role.name}: documented default vs defaults/main.yml: {wrong}"


def test_the_roles_were_found() -> None:
    assert ROLES, "no role under roles/: the check would prove nothing"
