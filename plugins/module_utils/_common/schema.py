# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The schema checker the documents users write share (release manifests, recipes, package specs): it collects
every problem as ``field: what is wrong, and what to write instead`` so that one error lists them all."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

# Names of applications, environments and artifacts, and their versions (1.4.0~rc1 sorts before 1.4.0).
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+~_-]{0,63}$")


def not_a_string(value: object) -> str:
    """Why VALUE, which should be text, is refused: YAML read a number or boolean, or it is not text at all."""
    if isinstance(value, (bool, int, float)):
        # YAML reads an unquoted 1.10 as 1.1, 010 as 8 and yes as true: the text written is lost, so refuse it.
        return (f"must be a string, not the {type(value).__name__} {value!r} that YAML read; quote it "
                "(e.g. version: \"1.10\", protocol: \"010\") so that it stays as written")
    return f"must be a string, not {type(value).__name__}; quote it if it is meant as text"


class Checker:
    """Collects problems as ``field: what is wrong, and what to write instead``."""

    def __init__(self) -> None:
        self.problems = []

    def add(self, field: str, message: str) -> None:
        self.problems.append(f"{field}: {message}")

    def keys(self, data: Mapping[str, Any], allowed: Sequence[str], field: str) -> None:
        for key in data:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                self.add(where, f"unknown field; the known ones are {', '.join(allowed)}")

    def string(self, data: Mapping[str, Any], key: str, field: str, pattern: re.Pattern[str] | None = None, hint: str = "",
               required: bool = True) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.add(field, "is required")
            return None
        if not isinstance(value, str):
            self.add(field, not_a_string(value))
            return None
        if pattern is not None and not pattern.match(value):
            self.add(field, f"{value!r} is not valid{hint}")
            return None
        return value

    def number(self, data: Mapping[str, Any], key: str, field: str, minimum: float = 0,
               integer: bool = True) -> int | float | None:
        value = data.get(key)
        if value is None:
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            self.add(field, f"must be a {'whole ' if integer else ''}number of at least {minimum}, not {value!r}")
            return None
        return value

    def string_list(self, data: Mapping[str, Any], key: str, field: str) -> List[str]:
        value = data.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            numbers = [v for v in value if isinstance(v, (bool, int, float))] if isinstance(value, list) else []
            quote = f" (quote {', '.join(repr(v) for v in numbers)}: YAML read a number or boolean)" if numbers else ""
            self.add(field, "must be a list of non-empty strings" + quote)
            return []
        return value

    def mapping_list(self, data: Mapping[str, Any], key: str, field: str,
                     required: bool = False) -> List[Tuple[int, Dict[str, Any]]]:
        value = data.get(key)
        if value is None:
            if required:
                self.add(field, "is required: a list with at least one entry")
            return []
        if not isinstance(value, list) or (required and not value):
            self.add(field, "must be a list" + (" with at least one entry" if required else ""))
            return []
        good = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.add(f"{field}[{index}]", f"must be a mapping, not {type(item).__name__}")
            else:
                good.append((index, item))
        return good
