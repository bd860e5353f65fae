# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Package spec validation and the split of a tree into packages."""

from __future__ import annotations

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._rpm.spec import SpecError, pattern_regex, plan_packages, validate_spec

BASE = {"name": "app", "version": "1.0", "summary": "An app", "license": "MIT", "prefix": "/opt/app"}


def _tree(tmp_path, *paths):
    for path in paths:
        full = tmp_path / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(path)
    return str(tmp_path)


def test_patterns():
    assert pattern_regex("opt/app/lib").match("opt/app/lib/sub/libx.so")
    assert pattern_regex("opt/app/lib/*.so").match("opt/app/lib/libx.so")
    assert not pattern_regex("opt/app/lib/*.so").match("opt/app/lib/sub/libx.so")
    assert pattern_regex("opt/**/*.so").match("opt/app/lib/sub/libx.so")
    assert not pattern_regex("opt/app/li").match("opt/app/lib/x")


def test_every_problem_is_listed_with_its_field():
    with pytest.raises(SpecError) as caught:
        validate_spec({"name": "app", "version": "1.0-1", "epoch": -1,
                       "packages": [{"name": "app", "files": ["/abs"]},
                                    {"name": "app", "files": ["x"], "owns_shared_dirs": "yes"}]})
    problems = caught.value.problems
    assert "spec.summary: is required" in problems and "spec.license: is required" in problems
    assert any(p.startswith("spec.version: '1.0-1' contains '-'") for p in problems)
    assert any(p.startswith("spec.epoch: must be a whole number") for p in problems)
    assert any(p.startswith("spec.packages[0].files[0]: '/abs' is outside the tree") for p in problems)
    assert any(p.startswith("spec.packages[1].name: 'app' is used by another package") for p in problems)
    assert any(p.startswith("spec.packages[1].owns_shared_dirs: must be true or false") for p in problems)


def test_split_owns_each_directory_once(tmp_path):
    tree = _tree(tmp_path, "opt/app/bin/app", "opt/app/lib/libdep.so", "opt/app/lib/libapp.so", "usr/lib/systemd/system/app.service")
    spec = validate_spec(dict(BASE, packages=[
        {"name": "app", "files": ["opt/app/bin", "opt/app/lib/libapp*", "usr/lib/systemd/system/app.service"]},
        {"name": "app-deps", "files": ["opt/app/lib"], "exclude": ["opt/app/lib/libapp*"], "owns_shared_dirs": True}]))
    plan = plan_packages(spec, tree)
    assert plan["app"]["files"] == ["opt/app/bin/app", "opt/app/lib/libapp.so", "usr/lib/systemd/system/app.service"]
    assert plan["app"]["dirs"] == ["opt/app/bin"] and plan["app"]["units"] == ["app.service"]
    assert plan["app-deps"]["dirs"] == ["opt/app", "opt/app/lib"]


def test_split_refuses_overlaps_and_orphans(tmp_path):
    tree = _tree(tmp_path, "opt/app/bin/app", "opt/app/lib/libapp.so", "opt/app/share/x")
    spec = validate_spec(dict(BASE, packages=[{"name": "app", "files": ["opt/app/bin", "opt/app/lib"]},
                                              {"name": "app-deps", "files": ["opt/app/lib"]}]))
    with pytest.raises(SpecError) as caught:
        plan_packages(spec, tree)
    assert "tree: opt/app/lib/libapp.so is in two packages (app, app-deps)" in str(caught.value)
    assert "tree: opt/app/share/x is in no package" in str(caught.value)
