# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Mount point links: an environment image's ``mount_point`` (``/opt/envs/qserv``) is a link the node makes to
``<app>/current/<artifact>``, so it follows ``current``. The node replaces only links it made itself, which it
keeps in ``<app>/.mount-links.json``."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._release.errors import NodeError
from ansible_collections.sciops.fleet.plugins.module_utils._release.state import AppState

MOUNT_LINKS_RECORD = ".mount-links.json"


def _new_link(target: str, base: str) -> str:
    """A new link to TARGET at BASE or BASE.<n>, whichever is free: what is there already is not ours to remove."""
    for attempt in range(100):
        path = base if attempt == 0 else f"{base}.{attempt}"
        try:
            os.symlink(target, path)
            return path
        except FileExistsError:
            continue
    raise NodeError(f"cannot make a link beside {base}: {base} and the next 99 names are taken; remove them")


def _record_path(state: AppState) -> str:
    return os.path.join(state.app_dir, MOUNT_LINKS_RECORD)


def made_links(state: AppState) -> Dict[str, str]:
    """The mount point links this node created for STATE's application: {link: target}."""
    try:
        with open(_record_path(state), encoding="utf-8") as handle:
            links = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NodeError(f"the record of mount point links {_record_path(state)} cannot be read ({exc}); check the "
                        "links it should list and rewrite it as a JSON mapping of link to target") from None
    if not isinstance(links, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in links.items()):
        raise NodeError(f"the record of mount point links {_record_path(state)} is not a JSON mapping of link to "
                        "target; check the links it should list and rewrite it")
    return links


def _save(state: AppState, links: Dict[str, str]) -> None:
    os.makedirs(state.app_dir, exist_ok=True)
    atomic_write(_record_path(state), (json.dumps(links, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)


def link_mount_points(state: AppState, artifacts: List[Dict[str, Any]], check_mode: bool = False) -> bool:
    """Link each of ARTIFACTS' mount_point to ``<app>/current/<name>``; refuse a path the node did not make.
    True when a link was (or would be) made."""
    changed = False
    created = made_links(state)
    for artifact in artifacts:
        if not artifact.get("mount_point"):
            continue
        link, target = artifact["mount_point"], os.path.join(state.app_dir, "current", artifact["name"])
        ours = link in created
        if os.path.islink(link) and os.readlink(link) == target:
            if not ours and not check_mode:  # made before links were recorded: it is ours, it names our current
                created[link] = target
                _save(state, created)
            continue
        if os.path.lexists(link) and not (ours and os.path.islink(link)):
            kind = "link" if os.path.islink(link) else "directory" if os.path.isdir(link) else "file"
            why = "this node made a link there, which was since replaced" if ours else \
                f"this node did not create it (it is not in {_record_path(state)})"
            raise NodeError(f"mount_point {link} of artifact {artifact['name']} exists as a {kind} and {why}; it is "
                            f"left as it is: move it away so that it can point to {target}, or publish the release "
                            "with another mount_point")
        changed = True
        if check_mode:
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # Recorded before it is made: a link left by a kill in between is still known as ours.
        created[link] = target
        _save(state, created)
        tmp = _new_link(target, f"{link}.tmp-{os.getpid()}")
        os.replace(tmp, link)
        fsync_dir(os.path.dirname(link))
    return changed
