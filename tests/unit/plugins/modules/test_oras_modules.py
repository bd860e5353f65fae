# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""oras_copy, oras_attach, oras_discover and oras_info run as Ansible runs them, on OCI image layouts.

Each change is run four times: check mode (changed), apply (changed), check mode (not changed), apply (not changed).
"""

from __future__ import annotations

import json

import pytest

RESULT_TYPE = "application/vnd.sciops.test-result.v1+json"


@pytest.fixture
def pushed(tmp_path, run_module):
    """oci-layout:BUILD:1.0 holding env.sqfs, pushed with oras_push."""
    (tmp_path / "env.sqfs").write_bytes(b"squashfs\n" * 1000)
    build = f"oci-layout:{tmp_path / 'build'}"
    result = run_module("oras_push", target=f"{build}:1.0", files=[{"path": str(tmp_path / "env.sqfs")}])
    assert result["changed"], result
    return build, result["digest"]


def four_runs(run_module, name, **args):
    runs = [run_module(name, check=True, diff=True, **args), run_module(name, **args),
            run_module(name, check=True, diff=True, **args), run_module(name, **args)]
    for result in runs:
        assert not result.get("failed"), result
    assert [r["changed"] for r in runs] == [True, True, False, False], runs
    return runs


def test_copy_into_a_new_layout_in_four_runs(tmp_path, run_module, pushed):
    build, digest = pushed
    deploy = f"oci-layout:{tmp_path / 'deploy'}"
    runs = four_runs(run_module, "oras_copy", source=f"{build}:1.0", destination=f"{deploy}:1.0,stable", tags=["2024"])
    check, apply, _check, again = runs
    assert check["diff"]["before"] == {"1.0": "(absent)", "stable": "(absent)", "2024": "(absent)"}
    assert check["diff"]["after"] == {"1.0": digest, "stable": digest, "2024": digest}
    assert apply["tags"] == ["1.0", "stable", "2024"] and apply["reference"] == f"{deploy}@{digest}"
    assert apply["blobs"]["copied"] == 2 and again["blobs"]["copied"] == 0
    info = run_module("oras_info", reference=f"{deploy}:stable", list_tags=True)
    assert info["digest"] == digest and info["tags"] == ["1.0", "2024", "stable"]


def test_a_destination_without_tag_takes_the_source_tag(tmp_path, run_module, pushed):
    build, digest = pushed
    result = run_module("oras_copy", source=f"{build}:1.0", destination=f"oci-layout:{tmp_path / 'deploy'}")
    assert result["changed"] and result["tags"] == ["1.0"] and result["digest"] == digest
    by_digest = run_module("oras_copy", source=f"{build}@{digest}", destination=f"oci-layout:{tmp_path / 'bydigest'}")
    assert by_digest["changed"] and by_digest["tags"] == [] and by_digest["reference"].endswith(digest)


def test_check_mode_does_not_create_the_destination_layout(tmp_path, run_module, pushed):
    build, _digest = pushed
    result = run_module("oras_copy", check=True, source=f"{build}:1.0", destination=f"oci-layout:{tmp_path / 'new'}:1.0")
    assert result["changed"] and not (tmp_path / "new").exists()


def test_attach_discover_in_four_runs(tmp_path, run_module, pushed):
    build, digest = pushed
    (tmp_path / "result.json").write_text(json.dumps({"result": "pass", "passed": 12}))
    args = {"subject": f"{build}:1.0", "artifact_type": RESULT_TYPE,
            "files": [{"path": str(tmp_path / "result.json"), "media_type": "application/json"}],
            "annotations": {"io.sciops.run": 7}}
    check, apply, _check, again = four_runs(run_module, "oras_attach", **args)
    assert check["diff"]["before"]["referrer"] == "(absent)" and again["digest"] == apply["digest"]
    assert apply["subject_digest"] == digest and apply["referrers_mechanism"] == "layout_index"
    found = run_module("oras_discover", subject=f"{build}:1.0", fetch_content=True, annotations={"io.sciops.run": "7"})
    assert found["count"] == 1 and found["mechanism"] == "layout_index"
    assert found["referrers"][0]["content"] == {"result.json": {"result": "pass", "passed": 12}}
    assert run_module("oras_discover", subject=f"{build}@{digest}", artifact_type="other/type")["count"] == 0


def test_info_of_a_missing_tag_and_bad_input(tmp_path, run_module, pushed):
    build, _digest = pushed
    assert run_module("oras_info", reference=f"{build}:nope")["exists"] is False
    strict = run_module("oras_info", reference=f"{build}:nope", ignore_missing=False)
    assert strict["failed"] and "not found" in strict["msg"]
    missing_layout = run_module("oras_info", reference=f"oci-layout:{tmp_path / 'absent'}:1.0")
    assert missing_layout["failed"] and "oci-layout" in missing_layout["msg"]
    no_tag = run_module("oras_copy", source=f"{build}", destination=f"oci-layout:{tmp_path / 'x'}:1")
    assert no_tag["failed"] and "names no tag or digest" in no_tag["msg"]
    no_subject = run_module("oras_attach", subject=f"{build}:nope", artifact_type=RESULT_TYPE,
                            files=[{"path": str(tmp_path / "env.sqfs")}])
    assert no_subject["failed"] and "nope" in no_subject["msg"]
