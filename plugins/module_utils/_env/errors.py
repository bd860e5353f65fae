# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The errors of environment builds."""

from __future__ import annotations

from typing import Iterable

from ansible_collections.sciops.fleet.plugins.module_utils._common.errors import FleetError, InvalidDocumentError


class RecipeError(InvalidDocumentError):
    """A recipe is not valid; the message lists every problem, one per field."""

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        super().__init__(f"recipe {source}", problems)


class EnvBuildError(FleetError):
    """A build step failed; the message names the step, the input and what to do."""
