# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""References and digests.

Two reference forms are understood:

* a registry reference ``HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]``, for example
  ``registry.example.org/deploy/app:1.2`` or ``127.0.0.1:5000/build/app@sha256:...``;
* an OCI image layout directory ``oci-layout:PATH[:TAG][@DIGEST]``, for example
  ``oci-layout:/srv/mirror/app:1.2``. PATH is a directory path; a tag is only recognised after
  the last ``/``, so a directory name may contain ``:`` only if a tag follows.

Repository names and tags follow the OCI distribution specification grammar; digests must be
``sha256:<64 hex>`` or ``sha512:<128 hex>`` (lower case).
"""

from __future__ import annotations

import re
from typing import Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import DIGEST_ALGORITHMS
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import InvalidReferenceError

LAYOUT_PREFIX = "oci-layout:"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
HOST_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
# Registry references are capped like docker does, so a name we accept is accepted everywhere.
MAX_NAME_LENGTH = 255


def _digest_problem(digest):
    """Why DIGEST is not a valid digest, or None when it is."""
    if not isinstance(digest, str) or ":" not in digest:
        return "a digest looks like sha256:<64 hex digits>"
    algorithm, encoded = digest.split(":", 1)
    length = DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        return f"unsupported digest algorithm {algorithm!r} (use sha256 or sha512)"
    if len(encoded) != length or not _HEX_RE.match(encoded):
        return f"a {algorithm} digest has {length} lower-case hex digits"
    return None


def split_digest(digest: str) -> Tuple[str, str]:
    """Validate DIGEST and return ``(algorithm, hex)``; raise InvalidReferenceError otherwise."""
    problem = _digest_problem(digest)
    if problem:
        raise InvalidReferenceError(str(digest), problem)
    algorithm, encoded = digest.split(":", 1)
    return algorithm, encoded


def is_digest(text: object) -> bool:
    """True when TEXT is a valid digest."""
    return _digest_problem(text) is None


def referrers_tag(digest: str) -> str:
    """The referrers tag schema tag of DIGEST: ``<alg>-<hex>``, hex cut to 64 characters per the spec."""
    algorithm, encoded = split_digest(digest)
    return f"{algorithm}-{encoded[:64]}"


def validate_repository(name: str, text: str | None = None) -> None:
    """Raise InvalidReferenceError unless NAME is a valid repository name."""
    if not REPOSITORY_RE.match(name or ""):
        raise InvalidReferenceError(
            text or name,
            f"repository {name!r} must be lower-case path components of letters and digits, separated by "
            f"'/' and joined inside a component by '.', '_', '__' or '-'",
        )


def validate_tag(tag: str, text: str | None = None) -> None:
    """Raise InvalidReferenceError unless TAG is a valid tag."""
    if not TAG_RE.match(tag or ""):
        raise InvalidReferenceError(
            text or tag, f"tag {tag!r} must be 1 to 128 characters of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        )


class Reference:
    """A parsed reference. For a layout, ``registry`` is None and ``repository`` is the directory path."""

    __slots__ = ("registry", "repository", "tag", "digest")

    def __init__(self, registry: str | None, repository: str, tag: str | None = None,
                 digest: str | None = None) -> None:
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest

    @property
    def is_layout(self) -> bool:
        """True for an ``oci-layout:`` reference."""
        return self.registry is None

    @property
    def ref(self) -> str | None:
        """What to resolve in the repository: the digest when given, else the tag (None when neither)."""
        return self.digest or self.tag

    @property
    def name(self) -> str:
        """The reference without tag and digest."""
        if self.is_layout:
            return f"{LAYOUT_PREFIX}{self.repository}"
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> Reference:
        """A copy pinned to DIGEST (the tag is kept for display)."""
        split_digest(digest)
        return Reference(self.registry, self.repository, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        """A copy with TAG and no digest."""
        validate_tag(tag)
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _split_tag_digest(text, rest):
    """Split REST (a reference without its prefix) into (name, tag, digest)."""
    digest = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
        problem = _digest_problem(digest)
        if problem:
            raise InvalidReferenceError(text, problem)
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        validate_tag(tag, text)
    return rest, tag, digest


def parse_reference(text: str, default_registry: str | None = None, default_tag: str | None = None) -> Reference:
    """Parse TEXT into a Reference.

    A registry reference needs a registry host: the first path component when it contains ``.`` or ``:``
    or is ``localhost``, else DEFAULT_REGISTRY. DEFAULT_TAG is used when neither tag nor digest is given.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError(str(text), "a reference must not be empty")
    if text != text.strip() or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise InvalidReferenceError(text, "a reference must not contain white space or control characters")
    if text.startswith(LAYOUT_PREFIX):
        path, tag, digest = _split_tag_digest(text, text[len(LAYOUT_PREFIX):])
        if not path:
            raise InvalidReferenceError(text, f"{LAYOUT_PREFIX} must be followed by a directory path")
        return Reference(None, path, tag or (None if digest else default_tag), digest)
    if "://" in text:
        raise InvalidReferenceError(text, "write a reference without a URL scheme, as HOST[:PORT]/REPOSITORY[:TAG]")

    name, tag, digest = _split_tag_digest(text, text)
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    elif default_registry:
        registry, repository = default_registry, name
    else:
        raise InvalidReferenceError(
            text, "it names no registry; write it as HOST[:PORT]/REPOSITORY[:TAG], e.g. registry.example.org/team/app:1.0"
        )
    if not HOST_RE.match(registry):
        raise InvalidReferenceError(text, f"{registry!r} is not a valid registry host[:port]")
    validate_repository(repository, text)
    if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(text, f"registry and repository together must not exceed {MAX_NAME_LENGTH} characters")
    return Reference(registry, repository, tag or (None if digest else default_tag), digest)
