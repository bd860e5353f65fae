# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Promotion with metadata and test results: oras_attach, oras_copy, oras_discover and oras_info against the
real registry (Debian's docker-registry, which has no referrers API, so the referrers tag schema is used),
OCI layout directories, the authenticated registry, and a gated promotion playbook run as AWX runs it.
"""

from __future__ import annotations

import json
import os
import re

import pytest

pytestmark = pytest.mark.registry

PLAYBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "playbooks")
META_TYPE = "application/vnd.sciops.build-meta.v1+json"
RESULT_TYPE = "application/vnd.sciops.test-result.v1+json"
PLAIN = {"plain_http": True, "retries": 1, "timeout": 30}


def requests_since(registry, mark, fragment=""):
    """(method, path) of the access-log lines after the first MARK whose path contains FRAGMENT."""
    found = []
    for line in registry.access_log()[mark:]:
        match = re.search(r'"(\w+) (\S+) HTTP/1\.\d"', line)
        if match and fragment in match.group(2):
            found.append((match.group(1), match.group(2)))
    return found


def uploads_since(registry, mark):
    """Requests after MARK that start, feed or finish a blob upload (a mount is a POST to /blobs/uploads too)."""
    return [r for r in requests_since(registry, mark, "/blobs/uploads") if r[0] in ("POST", "PUT", "PATCH")]


def ok(result):
    assert not result.get("failed"), result
    return result


@pytest.fixture
def files(tmp_path):
    """An environment image, its build metadata and a passing test result."""
    (tmp_path / "env.sqfs").write_bytes(os.urandom(2 * 1024 * 1024 + 3))
    (tmp_path / "env.json").write_text(json.dumps({"name": "app", "version": "1.0", "compiler": "gcc-13"}))
    (tmp_path / "result.json").write_text(json.dumps({"result": "pass", "passed": 118, "failed": 0}))
    (tmp_path / "failed.json").write_text(json.dumps({"result": "fail", "passed": 117, "failed": 1}))
    return tmp_path


def push_with_referrers(run_module, reference, files, result_file="result.json", **options):
    """oras_push the image to REFERENCE, attach metadata and a test result; returns the three digests."""
    image = ok(run_module("oras_push", target=reference, files=[{"path": str(files / "env.sqfs")}],
                          artifact_type="application/vnd.sciops.env.v1", **options))
    meta = ok(run_module("oras_attach", subject=reference, artifact_type=META_TYPE,
                         files=[{"path": str(files / "env.json"), "media_type": "application/json"}], **options))
    result = ok(run_module("oras_attach", subject=reference, artifact_type=RESULT_TYPE,
                           files=[{"path": str(files / result_file), "name": "result.json",
                                   "media_type": "application/json"}], **options))
    assert meta["subject_digest"] == result["subject_digest"] == image["digest"]
    return image["digest"], meta["digest"], result["digest"]


def test_promotion_carries_referrers_and_repeats_without_uploads(registry, run_module, files):
    build = f"{registry.host}/build/app:1.0"
    digest, meta, result = push_with_referrers(run_module, build, files, **PLAIN)

    args = {"source": build, "destination": f"{registry.host}/deploy/app:1.0,stable", "recursive": True, **PLAIN}
    mark = len(registry.access_log())
    check = ok(run_module("oras_copy", check=True, diff=True, **args))
    assert check["changed"] and check["referrers_copied"] == 2
    assert check["diff"]["before"] == {"1.0": "(absent)", "stable": "(absent)", "referrers": []}
    assert requests_since(registry, mark, "/v2/deploy/") and not [
        r for r in requests_since(registry, mark) if r[0] in ("PUT", "POST", "PATCH", "DELETE")]

    mark = len(registry.access_log())
    promoted = ok(run_module("oras_copy", **args))
    assert promoted["changed"] and promoted["digest"] == digest
    assert promoted["reference"] == f"{registry.host}/deploy/app@{digest}"
    assert promoted["tags"] == promoted["tags_moved"] == ["1.0", "stable"]
    assert {r["digest"] for r in promoted["referrers"] if r["copied"]} == {meta, result}
    # Same registry, other repository: every blob (image, empty config, two referrer files) is mounted.
    assert promoted["blobs"] == {"copied": 0, "mounted": 4, "present": 0, "bytes": 0}
    assert not [r for r in uploads_since(registry, mark) if "mount=" not in r[1]]

    found = ok(run_module("oras_discover", subject=f"{registry.host}/deploy/app@{digest}", fetch_content=True, **PLAIN))
    assert found["mechanism"] == "tag_schema"
    assert {(r["digest"], r["artifact_type"]) for r in found["referrers"]} == {(meta, META_TYPE), (result, RESULT_TYPE)}
    [test_result] = [r for r in found["referrers"] if r["artifact_type"] == RESULT_TYPE]
    assert test_result["content"]["result.json"]["result"] == "pass"

    for check_mode in (True, False):
        mark = len(registry.access_log())
        again = ok(run_module("oras_copy", check=check_mode, **args))
        assert not again["changed"] and again["referrers_copied"] == 0 and again["tags_moved"] == []
        assert uploads_since(registry, mark) == [] and not requests_since(registry, mark, "/blobs/")

    stable = ok(run_module("oras_info", reference=f"{registry.host}/deploy/app:stable", list_tags=True, **PLAIN))
    assert stable["digest"] == digest and stable["artifact_type"] == "application/vnd.sciops.env.v1"
    assert stable["config"] == {} and [layer["name"] for layer in stable["layers"]] == ["env.sqfs"]
    assert {"1.0", "stable", f"sha256-{digest.split(':')[1]}"} == set(stable["tags"])


def test_retag_within_a_repository_touches_no_blob(registry, run_module, files):
    reference = f"{registry.host}/build/retag:1.0"
    digest, _meta, _result = push_with_referrers(run_module, reference, files, **PLAIN)
    args = {"source": reference, "destination": f"{registry.host}/build/retag:candidate", "recursive": True, **PLAIN}
    mark = len(registry.access_log())
    runs = [ok(run_module("oras_copy", check=check, **args)) for check in (True, False, True, False)]
    assert [r["changed"] for r in runs] == [True, True, False, False]
    assert runs[1]["blobs"] == {"copied": 0, "mounted": 0, "present": 0, "bytes": 0}
    assert runs[1]["referrers_copied"] == 0 and runs[1]["manifests_copied"] == 1
    assert requests_since(registry, mark, "/blobs/") == []
    assert [m for m, _path in requests_since(registry, mark) if m == "PUT"] == ["PUT"]  # the one new tag
    info = ok(run_module("oras_info", reference=f"{registry.host}/build/retag:candidate", **PLAIN))
    assert info["digest"] == digest


def test_promotion_through_an_oci_layout_and_on_to_another_repository(registry, run_module, files, tmp_path):
    source = f"{registry.host}/build/mirrored:1.0"
    digest, meta, result = push_with_referrers(run_module, source, files, **PLAIN)
    layout = f"oci-layout:{tmp_path / 'mirror'}"

    out = [ok(run_module("oras_copy", check=check, source=source, destination=f"{layout}:1.0", recursive=True, **PLAIN))
           for check in (True, False, True, False)]
    assert [r["changed"] for r in out] == [True, True, False, False]
    assert out[1]["blobs"]["copied"] == 4 and out[1]["blobs"]["bytes"] > 2 * 1024 * 1024
    assert out[1]["transfer"]["bytes_downloaded"] >= out[1]["blobs"]["bytes"]
    assert out[3]["transfer"]["bytes_downloaded"] == 0
    in_layout = ok(run_module("oras_discover", subject=f"{layout}:1.0"))
    assert in_layout["mechanism"] == "layout_index" and {r["digest"] for r in in_layout["referrers"]} == {meta, result}
    assert os.path.isfile(tmp_path / "mirror" / "blobs" / "sha256" / digest.split(":")[1])

    target = f"{registry.host}/site-b/app:1.0"
    mark = len(registry.access_log())
    back = [ok(run_module("oras_copy", check=check, source=f"{layout}:1.0", destination=target, tags=["stable"],
                          recursive=True, **PLAIN)) for check in (True, False, True, False)]
    assert [r["changed"] for r in back] == [True, True, False, False]
    assert back[1]["digest"] == digest and back[1]["tags"] == ["1.0", "stable"]
    assert back[1]["blobs"]["copied"] == 4 and back[1]["transfer"]["blobs_uploaded"] == 4
    puts = [path for method, path in uploads_since(registry, mark) if method == "PUT"]
    assert len(puts) == 4 and all("/v2/site-b/app/blobs/uploads/" in path for path in puts)
    found = ok(run_module("oras_discover", subject=f"{registry.host}/site-b/app:stable", **PLAIN))
    assert {r["digest"] for r in found["referrers"]} == {meta, result} and found["subject_digest"] == digest


def test_copy_between_registries_with_credentials(registry, auth_registry, run_module, files):
    source = f"{registry.host}/build/crossing:1.0"
    digest, meta, result = push_with_referrers(run_module, source, files, **PLAIN)
    creds = {"username": auth_registry.username, "password": auth_registry.password}
    copied = ok(run_module("oras_copy", source=source, destination=f"{auth_registry.host}/deploy/crossing:1.0",
                           recursive=True, **creds, **PLAIN))
    assert copied["changed"] and copied["blobs"]["copied"] == 4 and copied["referrers_copied"] == 2
    found = ok(run_module("oras_discover", subject=f"{auth_registry.host}/deploy/crossing:1.0", **creds, **PLAIN))
    assert {r["digest"] for r in found["referrers"]} == {meta, result} and found["subject_digest"] == digest


def test_attach_and_discover_on_the_authenticated_registry(auth_registry, run_module, files):
    creds = {"username": auth_registry.username, "password": auth_registry.password, **PLAIN}
    reference = f"{auth_registry.host}/build/secured:1.0"
    digest, _meta, result = push_with_referrers(run_module, reference, files, **creds)
    again = ok(run_module("oras_attach", subject=reference, artifact_type=RESULT_TYPE,
                          files=[{"path": str(files / "result.json"), "name": "result.json",
                                  "media_type": "application/json"}], **creds))
    assert not again["changed"] and again["digest"] == result and again["referrers_mechanism"] == "tag_schema"
    found = ok(run_module("oras_discover", subject=reference, artifact_type=RESULT_TYPE, fetch_content=True, **creds))
    assert [r["digest"] for r in found["referrers"]] == [result] and found["subject_digest"] == digest
    assert found["referrers"][0]["content"]["result.json"]["passed"] == 118

    wrong = run_module("oras_discover", subject=reference, username=auth_registry.username,
                       password="wrong-" + auth_registry.password, **PLAIN)
    assert wrong["failed"] and wrong["error_type"] == "AuthError"
    assert auth_registry.host in wrong["msg"] and "refused the credentials" in wrong["msg"]
    assert auth_registry.password not in json.dumps(wrong)
    anonymous = run_module("oras_attach", subject=reference, artifact_type=RESULT_TYPE,
                           files=[{"path": str(files / "result.json")}], docker_config=str(files / "no-config"), **PLAIN)
    assert anonymous["failed"] and "requires authentication" in anonymous["msg"] and auth_registry.host in anonymous["msg"]


def test_the_gate_promotes_only_a_passing_build(registry, run_module, ansible, files, tmp_path):
    build = f"{registry.host}/build/gated:2.0"
    deploy = f"{registry.host}/deploy/gated"
    (files / "old.sqfs").write_bytes(b"the release that is stable now\n")
    old = ok(run_module("oras_push", target=f"{deploy}:stable", files=[{"path": str(files / "old.sqfs")}], **PLAIN))
    digest, _meta, _failed = push_with_referrers(run_module, build, files, result_file="failed.json", **PLAIN)

    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n", encoding="utf-8")
    extravars = {"promote_source": build, "promote_destination": f"{deploy}:2.0,stable", "promote_plain_http": True}
    playbook = os.path.join(PLAYBOOKS, "promote_gated.yml")

    run = ansible(str(inventory), playbook=playbook, extravars=extravars)
    assert run.rc == 0, run
    stable = ok(run_module("oras_info", reference=f"{deploy}:stable", **PLAIN))
    assert stable["digest"] == old["digest"]
    assert ok(run_module("oras_info", reference=f"{deploy}:2.0", **PLAIN))["exists"] is False

    # The tests are run again and pass: the newest result decides.
    ok(run_module("oras_attach", subject=build, artifact_type=RESULT_TYPE,
                  files=[{"path": str(files / "result.json"), "name": "result.json", "media_type": "application/json"}],
                  **PLAIN))
    run = ansible(str(inventory), playbook=playbook, extravars=extravars)
    assert run.rc == 0, run
    promoted = [r for results in run.ok.values() for r in results if "tags_moved" in r]
    assert promoted and promoted[0]["tags_moved"] == ["2.0", "stable"]
    assert ok(run_module("oras_info", reference=f"{deploy}:stable", **PLAIN))["digest"] == digest
    found = ok(run_module("oras_discover", subject=f"{deploy}:stable", artifact_type=RESULT_TYPE, **PLAIN))
    assert found["count"] == 2  # both results travelled with the promotion

    run = ansible(str(inventory), playbook=playbook, extravars=extravars)
    assert run.rc == 0 and "changed=0" in run.stdout, run
