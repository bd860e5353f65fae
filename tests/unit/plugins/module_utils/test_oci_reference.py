# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reference and digest parsing tables."""

from __future__ import annotations

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import InvalidReferenceError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import (
    parse_reference,
    referrers_tag,
    split_digest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes

D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("registry.example.org/deploy/app:1.2", "registry.example.org", "deploy/app", "1.2", None),
    ("127.0.0.1:5000/build/app", "127.0.0.1:5000", "build/app", None, None),
    ("localhost:5000/a/b/c:v1.0-rc.1_x", "localhost:5000", "a/b/c", "v1.0-rc.1_x", None),
    ("localhost/app:latest", "localhost", "app", "latest", None),
    (f"reg.example.org/app@{D256}", "reg.example.org", "app", None, D256),
    (f"reg.example.org/app:1.0@{D512}", "reg.example.org", "app", "1.0", D512),
    ("reg.example.org/my-app__x.y/z--w:1", "reg.example.org", "my-app__x.y/z--w", "1", None),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
    ("oci-layout:/srv/mirror/app:1.2", None, "/srv/mirror/app", "1.2", None),
    ("oci-layout:relative/dir", None, "relative/dir", None, None),
    (f"oci-layout:/srv/a:b/app@{D256}", None, "/srv/a:b/app", None, D256),
])
def test_valid_references(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("app:1.0", "names no registry"),
    ("reg.example.org/App:1", "lower-case"),
    ("reg.example.org/app/:1", "lower-case"),
    ("reg.example.org/-app", "lower-case"),
    ("reg.example.org/app:.hidden", "tag"),
    ("reg.example.org/app:" + "x" * 129, "tag"),
    ("reg.example.org/app@sha256:abc", "64 lower-case hex"),
    ("reg.example.org/app@md5:" + "a" * 32, "unsupported digest algorithm"),
    (f"reg.example.org/app@{D256.upper()}", "unsupported digest algorithm"),
    ("https://reg.example.org/app", "URL scheme"),
    ("reg.example.org/app 1", "white space"),
    ("bad_host.example.org/app", "registry host"),
    ("oci-layout:", "directory path"),
    ("reg.example.org/" + "a" * 260, "255"),
])
def test_invalid_references_say_why(text, reason):
    with pytest.raises(InvalidReferenceError, match=reason) as info:
        parse_reference(text)
    assert repr(text)[1:-1][:40] in str(info.value)


def test_default_registry_and_tag():
    ref = parse_reference("team/app", default_registry="registry.example.org", default_tag="latest")
    assert str(ref) == "registry.example.org/team/app:latest"
    assert parse_reference(f"reg.example.org/app@{D256}", default_tag="latest").tag is None
    assert ref.with_digest(D256).ref == D256 and ref.ref == "latest"


def test_digests_and_the_referrers_tag():
    assert split_digest(D256) == ("sha256", "a" * 64)
    assert digest_bytes(b"{}") == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert referrers_tag(D256) == "sha256-" + "a" * 64
    assert referrers_tag(D512) == "sha512-" + "b" * 64
