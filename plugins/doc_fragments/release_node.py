# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation shared by the modules that keep releases on a node."""

from __future__ import annotations


class ModuleDocFragment:
    """Where a node keeps its releases and their record (declared once in module_utils/_release/module.py)."""

    DOCUMENTATION = r"""
options:
  state_root:
    description:
      - Root of the release trees; the application's releases are in C(<state_root>/<application>/releases/), its
        slots are the links C(current) and C(oldstable) beside them.
    type: path
    default: /var/lib/sciops-fleet
  facts_dir:
    description:
      - Directory of Ansible local facts. The record of an application is C(<facts_dir>/sciops_fleet_<application>.fact),
        read by fact gathering as C(ansible_local.sciops_fleet_<application>) (with C(.) and C(-) in the name as C(_)).
    type: path
    default: /etc/ansible/facts.d
"""
