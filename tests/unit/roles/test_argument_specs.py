# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every role's ``meta/argument_specs.yml`` and ``defaults/main.yml`` say the same about its variables.

Ansible takes a role variable's value from ``defaults/main.yml``; the ``default`` of an option in the spec is what
``ansible-doc -t role`` shows. The two are written by hand, so they drift apart unless something compares them.
prometheus.prometheus checks in CI that both name the same variables; here the values are compared too:

- every variable of ``defaults/main.yml`` is an option of the entry point ``main``;
- an option with a ``default`` in the spec (of any entry point: they all read the one ``defaults/main.yml``) is in
  ``defaults/main.yml`` with the same value, of the same type;
- a variable of ``defaults/main.yml`` whose option has no ``default`` in the spec is ``required``: its value is a
  placeholder the role's own check refuses (``rollout_release: ""``), which the spec cannot show as the default of
  a required option.

An optional option with no default in either file (a role tests it with ``is defined``) agrees with itself.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
ROLES = sorted(path for path in (ROOT / "roles").iterdir() if path.is_dir())


def _same(left, right):
    """Equal and of the same type, all the way down (so that 1 differs from true, "3" from 3)."""
    if type(left) is not type(right):  # pylint: disable=unidiomatic-typecheck
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right))
    return left == right


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def disagreements(role):
    """What ROLE's defaults/main.yml and meta/argument_specs.yml disagree on, one sentence each."""
    spec_path = role / "meta" / "argument_specs.yml"
    if not spec_path.is_file():
        return [f"{role.name}: no meta/argument_specs.yml"]
    entry_points = (_load(spec_path) or {}).get("argument_specs") or {}
    if "main" not in entry_points:
        return [f"{role.name}: meta/argument_specs.yml has no entry point main"]
    defaults_path = role / "defaults" / "main.yml"
    defaults = (_load(defaults_path) if defaults_path.is_file() else None) or {}
    main = entry_points["main"].get("options") or {}
    found = []
    for name in defaults:
        if name not in main:
            found.append(f"{role.name}: {name} is in defaults/main.yml but not an option of the entry point main")
    for entry_point, spec in entry_points.items():
        for name, option in (spec.get("options") or {}).items():
            if "default" in option:
                if name not in defaults:
                    found.append(f"{role.name}: {name} has the default {option['default']!r} in the spec ({entry_point}) "
                                 "but is not in defaults/main.yml")
                elif not _same(defaults[name], option["default"]):
                    found.append(f"{role.name}: {name} is {defaults[name]!r} in defaults/main.yml but "
                                 f"{option['default']!r} in the spec ({entry_point})")
            elif entry_point == "main" and name in defaults and not option.get("required"):
                found.append(f"{role.name}: {name} is {defaults[name]!r} in defaults/main.yml but has no default in the spec")
    return found


def test_every_role_is_checked():
    names = [role.name for role in ROLES]
    assert "rollout" in names and "_switch" in names, names


@pytest.mark.parametrize("role", ROLES, ids=[role.name for role in ROLES])
def test_the_spec_and_the_defaults_of_the_role_agree(role):
    assert disagreements(role) == []


def _role(tmp_path, defaults, spec):
    role = tmp_path / "roles" / "example"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text(defaults, encoding="utf-8")
    (role / "meta" / "argument_specs.yml").write_text(spec, encoding="utf-8")
    return role


SPEC = """
argument_specs:
  main:
    options:
      example_name: {type: str, required: true}
      example_port: {type: int, default: 7000}
      example_tags: {type: list, default: [a, b]}
      example_extra: {type: dict}
  install:
    options:
      example_name: {type: str, required: true}
"""
# Another entry point reads the same defaults/main.yml.
SPEC_WITH_INSTALL_PORT = SPEC + """      example_port: {type: int, default: 8000}
"""


def test_a_role_whose_files_agree_passes(tmp_path):
    role = _role(tmp_path, "example_name: ''\nexample_port: 7000\nexample_tags: [a, b]\n", SPEC)
    assert disagreements(role) == []


@pytest.mark.parametrize(("defaults", "spec", "expected"), [
    pytest.param("example_port: 7000\nexample_tags: [a, b]\nexample_other: 1\n", SPEC,
                 "example_other is in defaults/main.yml but not an option of the entry point main", id="undocumented"),
    pytest.param("example_tags: [a, b]\n", SPEC,
                 "example_port has the default 7000 in the spec (main) but is not in defaults/main.yml",
                 id="spec-default-only"),
    pytest.param("example_port: 7001\nexample_tags: [a, b]\n", SPEC,
                 "example_port is 7001 in defaults/main.yml but 7000 in the spec (main)", id="other-value"),
    pytest.param("example_port: '7000'\nexample_tags: [a, b]\n", SPEC,
                 "example_port is '7000' in defaults/main.yml but 7000 in the spec (main)", id="other-type"),
    pytest.param("example_port: 7000\nexample_tags: [a, c]\n", SPEC,
                 "example_tags is ['a', 'c'] in defaults/main.yml but ['a', 'b'] in the spec (main)", id="other-item"),
    pytest.param("example_port: 7000\nexample_tags: [a, b]\nexample_extra: {}\n", SPEC,
                 "example_extra is {} in defaults/main.yml but has no default in the spec", id="defaults-only"),
    pytest.param("example_port: 7000\nexample_tags: [a, b]\n", SPEC_WITH_INSTALL_PORT,
                 "example_port is 7000 in defaults/main.yml but 8000 in the spec (install)", id="other-entry-point"),
])
def test_a_disagreement_fails_naming_the_variable(tmp_path, defaults, spec, expected):
    role = _role(tmp_path, defaults, spec)
    assert disagreements(role) == [f"example: {expected}"]


def test_a_role_without_a_spec_fails(tmp_path):
    role = tmp_path / "roles" / "example"
    (role / "defaults").mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text("example_port: 7000\n", encoding="utf-8")
    assert disagreements(role) == ["example: no meta/argument_specs.yml"]


def test_true_is_not_one():
    assert not _same(True, 1) and not _same(1, 1.0) and _same({"a": [1, "b"]}, {"a": [1, "b"]})
