# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Typed errors of the OCI distribution code.

Every message names what failed (registry, reference or file) and what the user can do about it.
No message ever contains a password, token or Authorization header.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError


class OciError(FleetError):
    """Base of the registry and OCI errors; ``reference`` is what failed, where one is known."""

    def __init__(self, message: str, reference: str | None = None) -> None:
        super().__init__(message)
        self.reference = reference


class AuthError(OciError):
    """The registry answered 401 or 403."""

    def __init__(self, registry: str, reference: str | None = None, status: int = 401, had_credentials: bool = False,
                 username: str | None = None) -> None:
        target = reference or registry
        if status == 403:
            who = f" for user {username!r}" if username else ""
            message = (
                f"registry {registry} denied access to {target}{who} (HTTP 403): the credentials were accepted "
                f"but lack permission for this action; ask the registry administrator for access to the repository"
            )
        elif had_credentials:
            who = f" of user {username!r}" if username else ""
            message = (
                f"registry {registry} refused the credentials{who} for {target} (HTTP 401); check the username and "
                f"password, or the entry for {registry} in the docker config.json / credential helper"
            )
        else:
            message = (
                f"registry {registry} requires authentication for {target} (HTTP 401) and no credentials were "
                f"found for it; pass username and password, or log in so that the docker config.json has "
                f"an entry for {registry}"
            )
        super().__init__(message, reference)
        self.registry = registry
        self.status = status


class NotFoundError(OciError):
    """The manifest, blob, tag or layout does not exist (HTTP 404)."""

    def __init__(self, reference: str, what: str = "manifest", detail: str | None = None) -> None:
        extra = f": {detail}" if detail else ""
        message = f"{what} {reference} not found{extra}; check the repository name, tag and digest"
        super().__init__(message, reference)


class DigestMismatchError(OciError):
    """Content does not hash to the digest it was addressed by."""

    def __init__(self, what: str, expected: str, actual: str, reference: str | None = None) -> None:
        message = (
            f"{what} has digest {actual} but {expected} was expected; the content was discarded. "
            f"Retry; if it happens again the source (registry, layout or cache) holds corrupt data"
        )
        super().__init__(message, reference)
        self.expected = expected
        self.actual = actual


class SizeMismatchError(OciError):
    """Content is not as long as its descriptor says."""

    def __init__(self, what: str, expected: int, actual: int | str, reference: str | None = None) -> None:
        message = (
            f"{what} is {actual} bytes but its descriptor says {expected}; the content was discarded. "
            f"Check that the manifest and the blob belong together"
        )
        super().__init__(message, reference)
        self.expected = expected
        self.actual = actual


class TransferError(OciError):
    """A network failure: timeout, dropped connection, 5xx or 429 (after retries when transient)."""

    def __init__(self, message: str, reference: str | None = None, status: int | None = None, transient: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(message, reference)
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


class TlsError(OciError):
    """TLS verification or handshake failed."""

    def __init__(self, registry: str, detail: str) -> None:
        message = (
            f"TLS connection to registry {registry} failed: {detail}; give the CA certificate that signed the "
            f"registry's certificate (ca_file), or, for a test registry only, turn certificate validation off"
        )
        super().__init__(message, registry)
        self.registry = registry


class InvalidReferenceError(OciError):
    """A reference, repository name, tag or digest does not follow the OCI grammar."""

    def __init__(self, text: str, reason: str) -> None:
        message = f"invalid reference {text!r}: {reason}"
        super().__init__(message, text)


class UnsafePathError(OciError):
    """A file name from an artifact would be written outside its destination."""

    def __init__(self, name: Any, dest: str | None, reason: str) -> None:
        message = (
            f"refusing to write {name!r} under {dest}: {reason}; the artifact's file names "
            f"(org.opencontainers.image.title) must be relative paths inside the destination"
        )
        super().__init__(message, name)
        self.name = name
        self.dest = dest
