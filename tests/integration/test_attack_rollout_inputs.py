# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attacks on the rollout's input as an operator types it (issue 12, item 5): batch sizes given as a string with
-e key=value or a survey."""

from __future__ import annotations

import pytest

from test_rollout import PLAYBOOK, _publish, _versions, clean_app  # noqa: F401  pylint: disable=unused-import

pytestmark = [pytest.mark.fleet, pytest.mark.registry]


def _run(ansible, fleet, release, check=False, **extra):
    extravars = {"rollout_release": release, "rollout_plain_http": True}
    extravars.update(extra)
    return ansible(fleet.inventory_path, playbook=PLAYBOOK, extravars=extravars, check=check,
                   envvars={"ANSIBLE_TIMEOUT": "5"})


def test_a_batch_of_zero_nodes_is_refused_not_run_as_every_node_at_once(registry, fleet, ansible, run_module, tmp_path, clean_app):
    # "0" passes the check ^[0-9]+%?$, and Ansible's serial takes a size <= 0 as "all remaining hosts": the canary
    # batch of -e rollout_batches=0,1,100% is the whole fleet.
    v1 = _publish(registry, run_module, tmp_path, "1.0.0")
    run = _run(ansible, fleet, v1["reference"], check=True, rollout_batches="0,1,100%")
    # Observed: rc 0 and "batch 1: <every node>" - one batch of all nodes.
    assert f"batch 1: {', '.join(fleet.names)} " not in run.stdout, run.stdout[-3000:]
    assert run.rc == 2 and "rollout_batches must be a list of batch sizes" in run.stdout, run
