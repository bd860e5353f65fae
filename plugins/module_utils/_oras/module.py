# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What every ORAS module shares: the registry options (declared once), opening a store, failing well."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.client import DEFAULT_RETRIES, DEFAULT_TIMEOUT, open_store
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import Reference, parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import OciStore

# Documented in plugins/doc_fragments/registry.py; validate-modules checks the two agree.
REGISTRY_ARGUMENT_SPEC = {
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "docker_config": {"type": "path"},
    "ca_path": {"type": "path"},
    "validate_certs": {"type": "bool", "default": True},
    "plain_http": {"type": "bool", "default": False},
    "timeout": {"type": "float", "default": DEFAULT_TIMEOUT},
    "retries": {"type": "int", "default": DEFAULT_RETRIES},
}


def registry_argument_spec(**options: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The module's own OPTIONS merged with the shared registry options."""
    spec = {name: dict(value) for name, value in REGISTRY_ARGUMENT_SPEC.items()}
    spec.update(options)
    return spec


def registry_options(params: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments for RegistryClient from the module's parameters."""
    return {
        "username": params.get("username"),
        "password": params.get("password"),
        "docker_config": params.get("docker_config"),
        "ca_file": params.get("ca_path"),
        "validate_certs": params.get("validate_certs", True),
        "plain_http": params.get("plain_http", False),
        "timeout": params.get("timeout") or DEFAULT_TIMEOUT,
        "retries": params.get("retries") if params.get("retries") is not None else DEFAULT_RETRIES,
    }


def open_reference(params: Mapping[str, Any], text: str, option: str, create_layout: bool = False,
                   default_tag: str | None = None) -> Tuple[Reference, OciStore]:
    """Parse reference TEXT (from module option OPTION) and open its store: ``(reference, store)``."""
    try:
        reference = parse_reference(text, default_tag=default_tag)
    except OciError as exc:
        raise OciError(f"{option}: {exc}") from None
    return reference, open_store(reference, create_layout=create_layout, **registry_options(params))


def split_target(target: str, extra_tags: Iterable[str]) -> Tuple[str, List[str]]:
    """``registry/repo:tag1,tag2`` -> (``registry/repo:tag1``, [tag1, tag2, *extra_tags])."""
    head, _sep, more = target.partition(",")
    tags = [t.strip() for t in more.split(",") if t.strip()] if more else []
    return head, tags + [t for t in extra_tags if t not in tags]
