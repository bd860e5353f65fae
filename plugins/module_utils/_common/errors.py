# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The one error hierarchy of sciops.fleet: every error the collection raises on purpose is a FleetError.

``str(error)`` is a complete message for the user: it names the input (registry, reference, file, field) and
says what to do. ``details`` holds what a module adds to its failure result besides the message.

The domains derive their own types from these (``_oci.errors.OciError``, ``_systemd.unit.UnitError``, ...), so a
module catches FleetError once and fails with ``_common.module.fail_from``.
"""

from __future__ import annotations

from typing import Any, Iterable


class FleetError(Exception):
    """Base of every error sciops.fleet raises on purpose."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidDocumentError(FleetError):
    """A document a user wrote (release manifest, recipe, package spec) is not valid: the message lists every
    problem, one per field, as ``field: what is wrong, and what to write instead``."""

    def __init__(self, what: str, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{what} is not valid: {'; '.join(self.problems)}", problems=self.problems)


class DocumentError(FleetError):
    """A file that is neither JSON nor YAML. ``needs_yaml`` is true when it is not JSON and PyYAML is missing."""

    def __init__(self, message: str, needs_yaml: bool = False) -> None:
        super().__init__(message)
        self.needs_yaml = needs_yaml


class CommandError(FleetError):
    """A program the collection runs could not be started, or failed."""


class ArchiveError(FleetError):
    """An archive (tarball) is not safe to extract, or cannot be read: the message names the archive and member."""

    def __init__(self, message: str, archive: str | None = None, member: str | None = None) -> None:
        super().__init__(message)
        self.archive = archive
        self.member = member
