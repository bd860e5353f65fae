# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The main job on the embedded default (`make demo`): no registry server, no root, three local nodes."""

from __future__ import annotations

import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_demo_publishes_rolls_out_upgrades_reports_and_rolls_back(ansible, tmp_path):
    demo = tmp_path / "demo"
    run = ansible(os.path.join(REPO, "inventories", "demo"), playbook=os.path.join(REPO, "playbooks", "demo.yml"),
                  extravars={"demo_dir": str(demo)})
    assert run.rc == 0, run
    upgrade = json.loads((demo / "status-after-upgrade.json").read_text(encoding="utf-8"))
    rollback = json.loads((demo / "status-after-rollback.json").read_text(encoding="utf-8"))
    assert [(n["node"], n["version"], n["health"]) for n in upgrade["nodes"]] == [
        ("node-a", "2.0.0", "good"), ("node-b", "2.0.0", "good"), ("node-c", "2.0.0", "good")]
    assert [(n["node"], n["version"]) for n in rollback["nodes"]] == [("node-a", "1.0.0"), ("node-b", "1.0.0"), ("node-c", "1.0.0")]
    assert len({n["release_id"] for n in upgrade["nodes"]}) == 1
    for node in ("node-a", "node-b", "node-c"):
        program = demo / "nodes" / node / "state" / "hello" / "current" / "app" / "bin" / "hello"
        assert subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout == f"hello 1.0.0 from {node}\n"
    assert "<table" in (demo / "status-after-rollback.html").read_text(encoding="utf-8")
