# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shape of plugins/module_utils, read from the source with ``ast`` (nothing is imported).

The rules (CONTRIBUTING.md explains why):

(a) no import cycle among module_utils modules;
(b) a domain package (``_common``, ``_oci``, ...; a sub-package such as ``_release/kinds`` belongs to its
    parent) uses only the public names of another domain: it imports no name starting with ``_`` from it,
    no module of it whose file (or sub-package) name starts with ``_``, and reads no ``module._name`` of it;
    plugins outside module_utils (modules, action, filter, ...) likewise use only public names;
(c) ``_common`` is the base: it imports no other domain;
(d) a module_utils file holds one concept: no ``# --`` or ``# ==`` banner lines that split it into sections.

Each rule is checked per domain, so that a finding in one domain can be marked (xfail) without hiding the others.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Dict, List, NamedTuple, Optional, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGINS = os.path.join(REPO, "plugins")
PACKAGE = "ansible_collections.sciops.fleet.plugins"
MODULE_UTILS = PACKAGE + ".module_utils"
DOMAINS = ("_common", "_oci", "_oras", "_release", "_systemd", "_env", "_rpm")
BASE_DOMAIN = "_common"
# Plugins outside module_utils (modules, action, filter, ...) are checked as one more group.
OTHER_PLUGINS = "plugins"
BANNER_RE = re.compile(r"^\s*#\s?(?:--|==)[-=]*(?:\s|$)")
RULES = ("cycles", "private-names", "common-is-base", "one-concept")


class Import(NamedTuple):
    """One use of a module_utils module by a plugin file: the module, the names taken from it, where."""

    importer: str
    target: str
    names: List[str]
    private_attributes: List[str]
    line: int


class Source(NamedTuple):
    """A plugin file: its module name, path, and what it imports from module_utils."""

    name: str
    path: str
    imports: List[Import]


def module_name(plugins: str, path: str) -> str:
    """The dotted name Ansible imports the file at PATH (under PLUGINS) as."""
    parts = os.path.relpath(path, plugins)[:-len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE] + parts)


def domain_of(name: str) -> str:
    """The domain package of module_utils module NAME, or OTHER_PLUGINS for the rest of plugins/."""
    if not name.startswith(MODULE_UTILS + "."):
        return OTHER_PLUGINS
    return name[len(MODULE_UTILS) + 1:].split(".")[0]


def short(name: str) -> str:
    """NAME without the collection's package, for messages."""
    return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def _dotted(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.Module, importer: str, is_package: bool, known: Set[str]) -> List[Import]:
    """What the module IMPORTER (parsed as TREE) takes from module_utils; KNOWN holds every plugin module name."""
    found: List[Import] = []
    bound: Dict[str, int] = {}  # local name of an imported module -> index in found
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                package = importer if is_package else importer.rsplit(".", 1)[0]
                for _level in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{node.module}" if node.module else package
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known and submodule.startswith(MODULE_UTILS):
                    bound[alias.asname or alias.name] = len(found)
                    found.append(Import(importer, submodule, [], [], node.lineno))
                elif base.startswith(MODULE_UTILS):
                    found.append(Import(importer, base, [alias.name], [], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(MODULE_UTILS):
                    bound[alias.asname or alias.name] = len(found)
                    found.append(Import(importer, alias.name, [], [], node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            index = bound.get(_dotted(node.value) or "")
            if index is not None:
                found[index].private_attributes.append(node.attr)
    return found


def scan(plugins: str) -> Dict[str, Source]:
    """Every .py file under PLUGINS, by module name, with its module_utils imports."""
    paths = []
    for base, dirs, files in os.walk(plugins):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        paths += [os.path.join(base, name) for name in sorted(files) if name.endswith(".py")]
    known = {module_name(plugins, path) for path in paths}
    sources = {}
    for path in paths:
        name = module_name(plugins, path)
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        is_package = os.path.basename(path) == "__init__.py"
        sources[name] = Source(name, path, _imports(tree, name, is_package, known))
    return sources


def _cycles(sources: Dict[str, Source]) -> List[List[str]]:
    """The import cycles among module_utils modules: one list of modules per strongly connected component."""
    graph = {name: sorted({i.target for i in source.imports if i.target in sources})
             for name, source in sources.items() if name.startswith(MODULE_UTILS)}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:
        # Tarjan's algorithm; module_utils is small enough for the recursion.
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, []):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycle_path(sources: Dict[str, Source], members: List[str]) -> List[str]:
    """One cycle through the first of MEMBERS (a strongly connected component), as module names."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted({i.target for i in sources[node].imports if i.target in inside}):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    return members


def findings(plugins: str) -> Dict[str, Dict[str, List[str]]]:
    """``{rule: {domain: [message, ...]}}`` for the plugins tree at PLUGINS."""
    sources = scan(plugins)
    found: Dict[str, Dict[str, List[str]]] = {rule: {} for rule in RULES}

    def add(rule: str, domain: str, message: str) -> None:
        found[rule].setdefault(domain, []).append(message)

    for members in _cycles(sources):
        path = " -> ".join(short(m) for m in _cycle_path(sources, members))
        for domain in sorted({domain_of(m) for m in members}):
            add("cycles", domain, f"import cycle: {path}")

    for source in sources.values():
        importer_domain = domain_of(source.name)
        where = os.path.relpath(source.path, os.path.dirname(plugins))
        for item in source.imports:
            target_domain = domain_of(item.target)
            if target_domain == importer_domain:
                continue
            if importer_domain == BASE_DOMAIN:
                add("common-is-base", BASE_DOMAIN,
                    f"{where}:{item.line}: imports {short(item.target)}; _common is the base and imports no other domain")
            inner = item.target[len(MODULE_UTILS) + 1:].split(".")[1:]
            private_parts = [part for part in inner if _is_private(part)]
            if private_parts:
                add("private-names", importer_domain,
                    f"{where}:{item.line}: imports the private module {short(item.target)} of {target_domain}")
            for name in item.names + item.private_attributes:
                if _is_private(name):
                    add("private-names", importer_domain,
                        f"{where}:{item.line}: uses the private name {name} of {short(item.target)}")

    for source in sources.values():
        if not source.name.startswith(MODULE_UTILS + "."):
            continue
        with open(source.path, encoding="utf-8") as handle:
            banners = [number for number, line in enumerate(handle, 1) if BANNER_RE.match(line)]
        if banners:
            where = os.path.relpath(source.path, os.path.dirname(plugins))
            add("one-concept", domain_of(source.name),
                f"{where}: banner lines {', '.join(map(str, banners))} split it into sections; give each concept a module")
    return found


@pytest.fixture(name="repo_findings", scope="module")
def fixture_repo_findings() -> Dict[str, Dict[str, List[str]]]:
    return findings(PLUGINS)


def _cases() -> List[object]:
    groups = {"cycles": DOMAINS, "private-names": DOMAINS + (OTHER_PLUGINS,), "common-is-base": (BASE_DOMAIN,),
              "one-concept": DOMAINS}
    return [pytest.param(rule, group, id=f"{rule}-{group}") for rule in RULES for group in groups[rule]]


@pytest.mark.parametrize("rule, group", _cases())
def test_module_utils_rule(repo_findings: Dict[str, Dict[str, List[str]]], rule: str, group: str) -> None:
    offenders = repo_findings[rule].get(group, [])
    assert not offenders, f"{rule} in {group}:\n" + "\n".join(offenders)


def test_every_module_utils_package_is_a_domain() -> None:
    """A file directly in module_utils, or a package the rules do not know, would escape the per-domain cases."""
    root = os.path.join(PLUGINS, "module_utils")
    strays = sorted(entry for entry in os.listdir(root)
                    if entry not in DOMAINS and entry not in ("__init__.py", "__pycache__"))
    assert not strays, f"not in a domain package ({', '.join(DOMAINS)}): {', '.join(strays)}"
    assert {domain_of(name) for name in scan(PLUGINS)} >= set(DOMAINS)


# The checker fails where it should: made-up trees with one offence each.


def _tree(tmp_path, files: Dict[str, str]) -> str:
    plugins = tmp_path / "plugins"
    for relative, text in files.items():
        path = plugins / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(plugins).parents:
            init = plugins / parent / "__init__.py"
            if parent.parts and not init.exists():
                init.write_text("")
        path.write_text(text)
    return str(plugins)


def _from(module: str, *names: str) -> str:
    return f"from {MODULE_UTILS}.{module} import {', '.join(names)}\n"


CLEAN = {
    "module_utils/_common/errors.py": "class FleetError(Exception):\n    pass\n",
    "module_utils/_oci/store.py": _from("_common.errors", "FleetError") + "def _helper():\n    pass\n",
    "module_utils/_oci/client.py": _from("_oci.store", "_helper") + "from . import store\n",
    "module_utils/_release/kinds/files.py": _from("_oci.store", "FleetError") + "# a comment -- not a banner\n",
    "modules/thing.py": _from("_oci.client", "store"),
}


def test_a_clean_tree_has_no_findings(tmp_path) -> None:
    found = findings(_tree(tmp_path, CLEAN))
    assert found == {rule: {} for rule in RULES}


def test_a_cycle_is_found(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{"module_utils/_oci/store.py": "from . import client\n"}))
    assert findings(plugins)["cycles"] == {
        "_oci": ["import cycle: module_utils._oci.client -> module_utils._oci.store -> module_utils._oci.client"]}


def test_a_cycle_across_domains_is_reported_in_each(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{"module_utils/_oci/store.py": _from("_release.kinds", "files")}))
    assert sorted(findings(plugins)["cycles"]) == ["_oci", "_release"]


def test_a_private_name_from_another_domain_is_found(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{"module_utils/_release/node.py": _from("_oci.store", "_helper")}))
    assert findings(plugins)["private-names"] == {
        "_release": ["plugins/module_utils/_release/node.py:1: uses the private name _helper of module_utils._oci.store"]}


def test_a_private_module_of_another_domain_is_found(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{
        "module_utils/_oci/_wire.py": "",
        "module_utils/_env/build.py": f"import {MODULE_UTILS}._oci._wire as wire\n",
    }))
    assert findings(plugins)["private-names"] == {
        "_env": ["plugins/module_utils/_env/build.py:1: imports the private module module_utils._oci._wire of _oci"]}


def test_a_private_attribute_of_another_domains_module_is_found(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{
        "module_utils/_rpm/build.py": _from("_oci", "store") + "store._helper()\n",
        "modules/other.py": _from("_oci", "store as s") + "s._helper()\n",
    }))
    assert findings(plugins)["private-names"] == {
        "_rpm": ["plugins/module_utils/_rpm/build.py:1: uses the private name _helper of module_utils._oci.store"],
        "plugins": ["plugins/modules/other.py:1: uses the private name _helper of module_utils._oci.store"],
    }


def test_common_importing_another_domain_is_found(tmp_path) -> None:
    plugins = _tree(tmp_path, dict(CLEAN, **{"module_utils/_common/fs.py": _from("_oci.store", "FleetError")}))
    assert findings(plugins)["common-is-base"] == {
        "_common": ["plugins/module_utils/_common/fs.py:1: imports module_utils._oci.store; "
                    "_common is the base and imports no other domain"]}


def test_banner_sections_are_found(tmp_path) -> None:
    text = "A = 1\n\n\n# -- the tree ----\n\nB = 2\n\n    # ==========\n"
    plugins = _tree(tmp_path, dict(CLEAN, **{"module_utils/_rpm/spec.py": text}))
    assert findings(plugins)["one-concept"] == {
        "_rpm": ["plugins/module_utils/_rpm/spec.py: banner lines 4, 8 split it into sections; give each concept a module"]}
