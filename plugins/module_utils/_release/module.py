# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""What the release modules share: where a node keeps releases (options declared once), release ids."""

from __future__ import annotations

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import is_digest, parse_reference
from ansible_collections.sciops.fleet.plugins.module_utils._oras.module import registry_argument_spec
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import DEFAULT_FACTS_DIR, DEFAULT_STATE_ROOT

# Documented in plugins/doc_fragments/release_node.py.
NODE_ARGUMENT_SPEC = {
    "state_root": {"type": "path", "default": DEFAULT_STATE_ROOT},
    "facts_dir": {"type": "path", "default": DEFAULT_FACTS_DIR},
}


def node_argument_spec(registry=False, **options):
    """The module's OPTIONS with the node options, and the registry options when REGISTRY."""
    spec = registry_argument_spec() if registry else {}
    spec.update({name: dict(value) for name, value in NODE_ARGUMENT_SPEC.items()})
    spec.update(options)
    return spec


def release_digest(text, option="release"):
    """The release id in TEXT: a digest, or a reference pinned by digest."""
    if is_digest(text):
        return text
    try:
        digest = parse_reference(text).digest
    except OciError as exc:
        raise OciError(f"{option}: {exc}") from None
    if not digest:
        raise OciError(f"{option}: {text!r} names no digest; give the release id (sha256:...) or REGISTRY/REPOSITORY@sha256:...")
    return digest
