# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every external program the collection and its tests run is installed by the project's own setup.

A fresh Debian 12 machine has only what `tools/install-system-deps.sh`, `make venv` and the test nodes' root
(`tests/testbed/noderoot.py` NODE_PACKAGES) put there. The scanner below finds the programs the code runs; the tables
below name the ones it cannot see, and where each program comes from. tools/check-fresh-machine.sh checks on a
real fresh tree that the script's table is installed.
"""

from __future__ import annotations

import ast
import os
import re

import pytest
import yaml

import testbed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCANNED = ("plugins", "roles", "playbooks", "tests", "tools", "bench", "molecule", "extensions")
INSTALL_SCRIPT = os.path.join(REPO, "tools", "install-system-deps.sh")

# Debian 12's essential packages and the Priority: required ones that `debootstrap --variant=minbase` installs:
# every Debian machine has them. Keep it short: a program belongs here only when it comes with one of these.
BASE = {
    "sh": "dash (essential)", "bash": "bash (essential)", "tar": "tar (essential)",
    "cp": "coreutils (essential)", "mv": "coreutils (essential)", "rm": "coreutils (essential)",
    "ln": "coreutils (essential)", "mkdir": "coreutils (essential)", "touch": "coreutils (essential)",
    "test": "coreutils (essential)", "cat": "coreutils (essential)", "sleep": "coreutils (essential)",
    "chroot": "coreutils (essential)", "timeout": "coreutils (essential)", "mktemp": "coreutils (essential)",
    "id": "coreutils (essential)", "env": "coreutils (essential)", "tail": "coreutils (essential)",
    "sed": "sed (essential)", "grep": "grep (essential)", "awk": "mawk (required)",
    "sort": "coreutils (essential)", "hostname": "hostname (essential)", "getent": "libc-bin (essential)",
    "apt-get": "apt (required: minbase installs it)",
    "mount": "mount (required)", "umount": "mount (required)",
    "findmnt": "util-linux (essential)", "nsenter": "util-linux (essential)", "flock": "util-linux (essential)",
}

# Programs that run only inside the test nodes (node-side modules), from a package of the node root.
NODE_ONLY = {
    "systemctl": "systemd", "journalctl": "systemd", "systemd-escape": "systemd", "visudo": "sudo",
}

# Programs of the venv (requirements.txt): program -> distribution.
VENV = {
    "ansible": "ansible-core", "ansible-playbook": "ansible-core", "ansible-doc": "ansible-core",
    "ansible-galaxy": "ansible-core", "ansible-test": "ansible-core", "ansible-lint": "ansible-lint",
    "molecule": "molecule", "pytest": "pytest",
}

# Names the code looks for but does not need, with the reason.
NOT_NEEDED = {
    "gpg2": "a fallback name for gpg on distributions without gpg",
    "chromium-browser": "the name of chromium on some other distributions",
    "fusermount": "the FUSE 2 name, a fallback for fusermount3",
    "spack": "neither in Debian nor on PyPI: the spack backend's test runs only where spack is installed",
}

# What the scanner cannot see: programs named in shell scripts and the Makefile, in module options' defaults,
# and in argv lists built in pieces. Every shell script under SCANNED must have an entry here.
UNSEEN = {
    "Makefile": ["bash", "git", "tar", "sed", "ln", "mkdir", "rm", "test", "grep", "touch",
                 "ansible-playbook", "ansible-test", "ansible-lint", "ansible-galaxy", "ansible-doc", "molecule",
                 "pytest"],
    "tools/install-system-deps.sh": ["bash", "apt-get", "id", "sort"],
    "tools/check-fresh-machine.sh": ["bash", "debootstrap", "chroot", "timeout", "findmnt", "flock", "mount",
                                     "umount", "cp", "mktemp", "sed", "awk", "grep", "tail", "getent", "env"],
    "plugins/connection/nspawn.py": ["nsenter", "machinectl"],
    "plugins/modules/rpm_build.py": ["rpmbuild", "rpmsign", "gpg"],
    "plugins/modules/rpm_repo.py": ["createrepo_c"],
    "plugins/modules/service_unit.py": ["systemctl", "journalctl", "systemd-analyze"],
    "plugins/modules/nspawn_container.py": ["systemctl", "journalctl", "systemd-analyze", "systemd-nspawn"],
    "plugins/module_utils/_rpm/packages.py": ["rpm"],
    "plugins/module_utils/_systemd/mount.py": ["systemctl", "journalctl", "systemd-analyze"],
    "tests/testbed/fleet.py": ["ssh"],
}

# Calls whose first argument is a program name (or an argv list that starts with one).
_ARGV_CALLS = {"run", "Popen", "check_output", "check_call", "call", "run_command", "_run", "run_tool"}
_NAME_CALLS = {"which", "get_bin_path", "require_tool", "tool_version"}  # the first argument names a program
_NAMES_CALLS = {"_require"}  # every argument names a program
_ARGV_NAMES = re.compile(r"(^|_)(argv|cmd|command)$")
_YAML_COMMAND = re.compile(r"ansible\.builtin\.(?:command|shell):\s*(?:argv:\s*\[\s*)?\"?([A-Za-z0-9_./-]+)")
_COMMAND_MODULES = ("ansible.builtin.command", "ansible.builtin.shell", "command", "shell")
_PROGRAM = re.compile(r"^/?[A-Za-z0-9_./+-]*[A-Za-z0-9_+-]$")


def _program(value):
    """The program name of a literal argv[0] (a path's base name), or None for what is not a program."""
    if not isinstance(value, str) or not _PROGRAM.match(value) or value.startswith("-"):
        return None
    if "/" in value and not value.startswith(("/bin/", "/usr/bin/", "/sbin/", "/usr/sbin/")):
        return None  # a program of the test itself, or a node's release
    return os.path.basename(value)


def _first_literal(node):
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        node = node.elts[0]
    if isinstance(node, ast.Constant):
        return _program(node.value)
    return None


def _python_programs(path):
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    found = set()
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in _ARGV_CALLS and node.args:
                found.add(_first_literal(node.args[0]))
            elif name in _NAME_CALLS and node.args:
                found.add(_first_literal(node.args[0]))
            elif name in _NAMES_CALLS:
                found.update(_first_literal(arg) for arg in node.args)
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            if any(isinstance(t, ast.Name) and _ARGV_NAMES.search(t.id) for t in node.targets):
                found.add(_first_literal(node.value))
    # Plays embedded in Python strings.
    found.update(_program(m.group(1)) for m in _YAML_COMMAND.finditer(source))
    found.discard(None)
    return found


def _yaml_programs(path):
    with open(path, encoding="utf-8") as handle:
        try:
            documents = list(yaml.safe_load_all(handle))
        except yaml.YAMLError:
            return set()
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key in _COMMAND_MODULES:
                if key not in node:
                    continue
                value = node[key]
                if isinstance(value, dict):
                    value = value.get("argv") or value.get("cmd")
                if isinstance(value, str):
                    value = value.split()
                if value:
                    found.add(_program(value[0]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(documents)
    found.discard(None)
    return found


def scan():
    """{program: [files that run it]} for every program the scanned trees run, plus UNSEEN."""
    programs = {}
    for top in SCANNED:
        for directory, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".cache")]
            for name in files:
                path = os.path.join(directory, name)
                if name.endswith(".py"):
                    found = _python_programs(path)
                elif name.endswith((".yml", ".yaml")):
                    found = _yaml_programs(path)
                else:
                    continue
                for program in found:
                    programs.setdefault(program, []).append(os.path.relpath(path, REPO))
    for where, names in UNSEEN.items():
        for program in names:
            programs.setdefault(program, []).append(where)
    return programs


def want_table(text):
    """The command -> package table of install-system-deps.sh."""
    block = re.search(r"declare -A WANT=\((.*?)\n\)", text, re.S)
    assert block, "tools/install-system-deps.sh has no `declare -A WANT=(...)` table"
    return dict(re.findall(r"^\s*\[([^]]+)\]=(\S+)\s*$", block.group(1), re.M))


def requirements():
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as handle:
        return {re.split(r"[=<>\[; ]", line.strip())[0].lower() for line in handle if line.strip() and line[0] != "#"}


def unprovided(programs, want, node_packages, distributions):
    """The programs that nothing of the project's setup installs: {program: files that run it}."""
    missing = {}
    for program, where in sorted(programs.items()):
        if program in want or program in BASE or program in NOT_NEEDED:
            continue
        if program == "python3":  # install-system-deps.sh installs python3-venv (and so python3) when it is missing
            continue
        if NODE_ONLY.get(program) in node_packages:
            continue
        if VENV.get(program, "").lower() in distributions:
            continue
        missing[program] = sorted(set(where))
    return missing


@pytest.fixture(scope="module")
def programs():
    return scan()


def test_every_program_the_collection_and_its_tests_run_is_installed_by_the_project_setup(programs):
    with open(INSTALL_SCRIPT, encoding="utf-8") as handle:
        want = want_table(handle.read())
    missing = unprovided(programs, want, set(testbed.NODE_PACKAGES), requirements())
    assert not missing, (
        "programs that a fresh machine lacks (add each to the WANT table of tools/install-system-deps.sh, or, if "
        "it runs only on nodes, to NODE_PACKAGES in tests/testbed/noderoot.py and NODE_ONLY here):\n"
        + "\n".join(f"  {p}: run by {', '.join(w)}" for p, w in missing.items()))


def test_a_program_missing_from_the_install_table_is_found(programs):
    with open(INSTALL_SCRIPT, encoding="utf-8") as handle:
        text = handle.read()
    without = re.sub(r"^\s*\[fusermount3\]=fuse3\n", "", text, flags=re.M)
    assert without != text
    missing = unprovided(programs, want_table(without), set(testbed.NODE_PACKAGES), requirements())
    assert "fusermount3" in missing and "roles/build_env/tasks/main.yml" in missing["fusermount3"], missing


def test_the_scanner_sees_the_programs_run_by_roles_modules_and_tests(programs):
    seen = dict(programs)
    assert "roles/build_env/tasks/main.yml" in seen["squashfuse"]
    assert "plugins/module_utils/_env/closure.py" in seen["patchelf"]
    assert "plugins/module_utils/_systemd/mount.py" in seen["systemd-escape"]
    assert "tests/integration/test_oras_interop.py" in seen["skopeo"]
    assert "tests/testbed/noderoot.py" in seen["debootstrap"]
    assert "tests/integration/test_nspawn_machines.py" in seen["hostname"]


def test_every_shell_script_has_its_programs_listed():
    scripts = []
    for top in SCANNED:
        for directory, _dirs, files in os.walk(os.path.join(REPO, top)):
            scripts += [os.path.relpath(os.path.join(directory, f), REPO) for f in files if f.endswith(".sh")]
    assert scripts and set(scripts) <= set(UNSEEN), f"list the programs of {sorted(set(scripts) - set(UNSEEN))} in UNSEEN"


def test_the_node_only_and_venv_tables_name_packages_the_setup_installs():
    assert set(NODE_ONLY.values()) <= set(testbed.NODE_PACKAGES)
    assert {d.lower() for d in VENV.values()} <= requirements()
