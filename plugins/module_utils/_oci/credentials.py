# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Registry credentials from a docker ``config.json``: ``credHelpers``, ``credsStore`` and ``auths``, read the way
docker reads them. The registry client asks for them only when a registry challenges it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.parse
from typing import Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import OciError

CREDENTIAL_HELPER_TIMEOUT = 30


def _config_path(docker_config):
    """The config.json to read: DOCKER_CONFIG (file or directory), else $DOCKER_CONFIG, else ~/.docker."""
    path = docker_config or os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    return path


def _auths_key_host(key):
    """The host part of an ``auths`` key, which may be a bare host or a URL such as https://host/v1/."""
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0]


def _run_credential_helper(helper, registry, config_path):
    """``(username, secret)`` from ``docker-credential-HELPER get``, or None when it has nothing for REGISTRY."""
    command = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [command, "get"], input=registry.encode(), capture_output=True,
            timeout=CREDENTIAL_HELPER_TIMEOUT, check=False,
        )
    except FileNotFoundError:
        raise OciError(
            f"credential helper {command}, named for {registry} in {config_path}, is not installed (not on PATH); "
            f"install it or remove it from the config"
        ) from None
    except subprocess.TimeoutExpired:
        raise OciError(f"credential helper {command} did not answer for {registry} within {CREDENTIAL_HELPER_TIMEOUT}s") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        if "credentials not found" in output.lower():
            return None
        first_line = output.strip().splitlines()[0][:200] if output.strip() else f"exit status {result.returncode}"
        raise OciError(f"credential helper {command} failed for {registry}: {first_line}")
    try:
        data = json.loads(result.stdout)
        return data.get("Username") or "", data["Secret"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise OciError(f"credential helper {command} gave an answer for {registry} that is not the expected JSON") from None


def docker_credentials(registry: str,
                       docker_config: str | None = None) -> Tuple[str | None, str | None, str | None, str] | None:
    """Credentials for REGISTRY from a docker config.json: ``(username, password, identity_token, source)`` or None.

    Order as in docker: ``credHelpers[registry]``, else ``credsStore``, else the ``auths`` entry (``auth`` is
    base64 ``user:password``; ``identitytoken`` is an OAuth2 refresh token). A helper that reports the user
    name ``<token>`` returns an identity token.
    """
    path = _config_path(docker_config)
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OciError(f"cannot read docker config {path}: {exc}; fix or remove the file") from None
    if not isinstance(config, dict):
        raise OciError(f"docker config {path} is not a JSON object")
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    if helper:
        found = _run_credential_helper(helper, registry, path)
        if found:
            username, secret = found
            if username == "<token>":
                return None, None, secret, f"docker-credential-{helper}"
            return username, secret, None, f"docker-credential-{helper}"
    for key, entry in (config.get("auths") or {}).items():
        if _auths_key_host(key) != registry or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return entry.get("username"), None, entry["identitytoken"], path
        if entry.get("auth"):
            try:
                username, _sep, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise OciError(f"the auths entry for {registry} in {path} is not base64 of user:password") from None
            return username, password, None, path
        if entry.get("username") and entry.get("password"):
            return entry["username"], entry["password"], None, path
    return None
