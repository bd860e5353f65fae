# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A manifest file whose config vars YAML turns into other numbers: 010 (YAML 1.1 octal) is 8, 0x1F is 31, 1_000 is
1000. validate_release keeps integers "as written", but what was written is already lost: the rendered config gets
port = 8. Issue 12 item 1: refuse a number where text is wanted, naming the field."""

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import read_document
from ansible_collections.sciops.fleet.plugins.module_utils._release.manifest import ReleaseError, validate_release

pytest.importorskip("yaml")

MANIFEST = """schema_version: 1
application: app
version: "1.0"
protocol: "1"
artifacts:
  - name: bin
    reference: registry.example.org/b/bin@sha256:{digest}
configs:
  - source: bin/app.conf.in
    dest: etc/app.conf
    vars: {{port: {port}}}
"""


@pytest.mark.parametrize("written", ["010", "0x1F", "1_000", "0o17"])
def test_a_config_var_that_yaml_reads_as_another_number_is_refused_naming_it(tmp_path, written):
    path = tmp_path / "release.yaml"
    path.write_text(MANIFEST.format(digest="a" * 64, port=written))
    data = read_document(str(path))
    try:
        release = validate_release(data, str(path))
    except ReleaseError as exc:
        assert "configs[0].vars.port" in str(exc)
        return
    assert release["configs"][0]["vars"]["port"] == written, \
        f"port: {written} in the manifest is rendered as {release['configs'][0]['vars']['port']!r}"
