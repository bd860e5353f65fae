# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""read_document: the one reader of JSON or YAML files (release manifests, environment recipes)."""

from __future__ import annotations

import builtins

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import DocumentError, read_document


def test_json_and_yaml_documents_are_read(tmp_path):
    (tmp_path / "a.json").write_text('{"name": "qserv", "version": "1.0"}')
    (tmp_path / "a.yaml").write_text("name: qserv\nversion: '1.0'\n")
    assert read_document(tmp_path / "a.json") == read_document(tmp_path / "a.yaml") == {"name": "qserv", "version": "1.0"}


def test_a_broken_document_says_why(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DocumentError, match="is not valid YAML") as caught:
        read_document(tmp_path / "bad.yaml")
    assert not caught.value.needs_yaml
    with pytest.raises(OSError):
        read_document(tmp_path / "missing.yaml")


def test_without_pyyaml_json_still_reads_and_yaml_asks_for_it(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ImportError("no yaml here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    (tmp_path / "a.json").write_text('{"name": "qserv"}')
    (tmp_path / "a.yaml").write_text("name: qserv\n")
    assert read_document(tmp_path / "a.json") == {"name": "qserv"}
    with pytest.raises(DocumentError, match="needs PyYAML") as caught:
        read_document(tmp_path / "a.yaml")
    assert caught.value.needs_yaml
