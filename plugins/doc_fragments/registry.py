# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation shared by every module that talks to an OCI registry."""

from __future__ import annotations


class ModuleDocFragment:
    """Registry connection options (declared once in module_utils/_oras/module.py)."""

    DOCUMENTATION = r"""
options:
  username:
    description:
      - User name for the registry.
      - When O(password) is not given, credentials come from the docker configuration (see O(docker_config)),
        including C(credHelpers) and C(credsStore) credential helpers, and only when the registry asks for them.
    type: str
  password:
    description:
      - Password or token for O(username). Never logged.
    type: str
  docker_config:
    description:
      - A docker C(config.json), or the directory holding it, to read credentials from.
      - Defaults to C($DOCKER_CONFIG/config.json), else C(~/.docker/config.json).
    type: path
  ca_path:
    description:
      - A PEM file of certificate authorities to verify the registry's TLS certificate with, in addition
        to the system's.
    type: path
  validate_certs:
    description:
      - Verify the registry's TLS certificate. Turn off only for a registry you trust on a network you trust.
    type: bool
    default: true
  plain_http:
    description:
      - Talk to the registry over plain HTTP instead of HTTPS. Only for a registry on loopback or a closed
        network; credentials would cross the network in clear text.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for each connection and each read from the registry before the attempt fails.
    type: float
    default: 60
  retries:
    description:
      - How many times a transient failure (connection reset, timeout, HTTP 429 or 5xx) is retried, with
        exponential backoff, before the module fails.
    type: int
    default: 3
notes:
  - References have the form C(registry[:port]/repository[:tag][@digest]), or C(oci-layout:/path/to/dir[:tag][@digest])
    for an OCI image layout directory on the host the module runs on, which works wherever a registry does.
"""
