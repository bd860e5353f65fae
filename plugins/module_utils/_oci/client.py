# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""A registry client for the OCI distribution API, in the Python standard library only.

It authenticates with explicit credentials or the docker ``config.json`` (``_oci/credentials.py``), follows
Basic and Bearer token challenges, verifies TLS by default, retries transient failures with backoff
(``_oci/retry.py``), and downloads every blob through ``_oci/download.py`` ``download_blob``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, List, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.credentials import docker_credentials
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import BlobCache, download_blob
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import (
    AuthError,
    DigestMismatchError,
    NotFoundError,
    OciError,
    SizeMismatchError,
    TlsError,
    TransferError,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.layout import LayoutStore
from ansible_collections.sciops.fleet.plugins.module_utils._oci.retry import RetryPolicy, network_error
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import (
    HOST_RE,
    Reference,
    is_digest,
    parse_reference,
    referrers_tag,
    split_digest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    Descriptor,
    OciStore,
    encode_json,
    filter_referrers,
    manifest_subject,
    parse_manifest,
    referrer_descriptor,
)

USER_AGENT = "sciops.fleet-oci/1"
# The defaults of the registry options timeout and retries (module options and RegistryClient alike).
DEFAULT_TIMEOUT = 60
DEFAULT_RETRIES = 3
# Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
BODY_BLOCK_SIZE = 1024 * 1024
_ACCEPT_MANIFESTS = ", ".join(MANIFEST_MEDIA_TYPES)
_CHALLENGE_PARAM_RE = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_LINK_NEXT_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_MAX_ERROR_BODY = 64 * 1024
_MAX_PAGES = 10000


def _parse_challenge(header):
    """``(scheme, params)`` of the first challenge in a WWW-Authenticate header."""
    header = (header or "").strip()
    scheme, _sep, rest = header.partition(" ")
    params = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        params[match.group(1).lower()] = match.group(2) if match.group(2) is not None else match.group(3)
    return scheme.lower(), params


# HTTP plumbing


class _Response:
    """A finished (non-streamed) response."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body


class _FileSlice:
    """LENGTH bytes of file PATH from OFFSET on, as a readable request body."""

    def __init__(self, path, offset, length):
        # Closed by _send once the request is done (it owns request bodies).
        self._handle = open(path, "rb")  # pylint: disable=consider-using-with
        self._handle.seek(offset)
        self._left = length

    def __iter__(self):
        # An iterable body, not a readable one: http.client would read a readable body in 8 KiB pieces.
        while self._left > 0:
            data = self._handle.read(min(BODY_BLOCK_SIZE, self._left))
            if not data:
                raise OSError(f"{self._handle.name} ended {self._left} bytes early; it changed while being uploaded")
            self._left -= len(data)
            yield data

    def close(self):
        """Close the file."""
        self._handle.close()


def _status_of(response):
    return getattr(response, "status", None) or getattr(response, "code", None)


def _read_body(response, limit, what, strict=True):
    """Read and close a response body of at most LIMIT bytes (STRICT: more is an error, else it is cut)."""
    try:
        data = response.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        if not strict:
            return b""
        raise network_error(exc, f"reading {what}") from None
    finally:
        response.close()
    if len(data) > limit:
        if not strict:
            return data[:limit]
        raise OciError(f"{what}: the registry sent more than {limit} bytes where a manifest or small document was expected")
    return data


def _registry_error_text(body):
    """The registry's own error code and message from an error body, if it sent the standard JSON."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError):
        return body[:200].decode("utf-8", "replace").strip()


def _with_digest(url, digest):
    # Appended as text: re-encoding the registry's opaque upload state could alter it.
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})


class RegistryClient(OciStore):  # pylint: disable=too-many-instance-attributes
    """A client for one registry (``host[:port]``). See OciStore for the operations.

    Credentials: USERNAME/PASSWORD when given, else the docker config (DOCKER_CONFIG: a config.json or
    its directory; default ``$DOCKER_CONFIG`` or ``~/.docker``), read only when the registry asks for them.
    TLS is verified (against CA_FILE when given) unless VALIDATE_CERTS is false; PLAIN_HTTP uses http://.
    TIMEOUT applies to each connect and read; RETRIES/BACKOFF bound the retries of transient failures.
    """

    def __init__(self, registry: str, username: str | None = None, password: str | None = None,
                 docker_config: str | None = None, ca_file: str | None = None, validate_certs: bool = True,
                 plain_http: bool = False, timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 backoff: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        if not HOST_RE.match(registry or ""):
            raise OciError(f"{registry!r} is not a registry host[:port]")
        self.registry = registry
        self.base_url = f"{'http' if plain_http else 'https'}://{registry}"
        self.username = username
        self._password = password
        self._identity_token = None
        self._docker_config = docker_config
        self._credentials_loaded = password is not None
        # Where the credentials came from (for messages and module results); never the secret itself.
        self.credentials_source = "parameters" if password is not None else None
        self.timeout = timeout
        self.retry = RetryPolicy(retries, backoff)
        self.chunk_size = int(chunk_size)
        self._basic = None
        self._bearer = {}
        self._referrers_api = None
        handlers = []
        if not plain_http:
            context = ssl.create_default_context(cafile=ca_file)
            if not validate_certs:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, username={self.username!r})"

    def _url(self, repo, kind, ref=""):
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    def _name(self, repo, ref=None):
        if not ref:
            return f"{self.registry}/{repo}"
        return f"{self.registry}/{repo}{'@' if is_digest(ref) else ':'}{ref}"

    def _credentials(self):
        if not self._credentials_loaded:
            self._credentials_loaded = True
            found = docker_credentials(self.registry, self._docker_config)
            if found:
                self.username, self._password, self._identity_token, self.credentials_source = found
        return self.username, self._password, self._identity_token

    def _basic_header(self):
        username, password, _token = self._credentials()
        if password is None:
            return None
        return "Basic " + base64.b64encode(f"{username or ''}:{password}".encode()).decode()

    def _authenticate(self, challenge, repo, actions, extra_scopes, what):
        """Answer a 401 challenge: set up Basic, or fetch a Bearer token for the needed scopes."""
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            self._basic = self._basic_header()
            if self._basic is None:
                raise AuthError(self.registry, what, 401, had_credentials=False)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise OciError(f"registry {self.registry} asked for an unsupported authentication scheme {scheme!r} for {what}")
        scopes = (params.get("scope") or "").split()
        if repo:
            scopes.append(f"repository:{repo}:{actions}")
        scopes.extend(extra_scopes)
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", scope) for scope in dict.fromkeys(scopes)]
        username, password, identity_token = self._credentials()
        if identity_token:
            form = query + [("grant_type", "refresh_token"), ("refresh_token", identity_token), ("client_id", USER_AGENT)]
            response = self._send("POST", params["realm"], {"Content-Type": "application/x-www-form-urlencoded"},
                                  urllib.parse.urlencode(form).encode(), None)
        else:
            url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
            response = self._send("GET", url, {}, None, self._basic_header())
        status = _status_of(response)
        body = _read_body(response, MAX_MANIFEST_SIZE, f"token for {what}")
        if status in (401, 403):
            raise AuthError(self.registry, what, 401, had_credentials=bool(password or identity_token), username=username)
        if status != 200:
            raise TransferError(f"token service {params['realm']} of registry {self.registry} answered HTTP {status}",
                                what, status=status, transient=status >= 500 or status == 429)
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise OciError(f"token service {params['realm']} of registry {self.registry} sent no token")
        self._bearer[(repo, actions)] = token

    def _auth_header(self, repo, actions):
        if self._basic:
            return self._basic
        token = self._bearer.get((repo, actions))
        if token is None and actions == "pull":
            token = self._bearer.get((repo, "pull,push"))  # a push token allows pulling as well
        return f"Bearer {token}" if token else None

    def _send(self, method, url, headers, body, auth):
        """One HTTP exchange; returns the response (also for error statuses). BODY: bytes or a callable opening one."""
        data = body() if callable(body) else body
        request = urllib.request.Request(url, data=data, method=method, headers={"User-Agent": USER_AGENT, **headers})
        if auth:
            # Unredirected: a blob redirect to object storage must not carry our credentials along.
            request.add_unredirected_header("Authorization", auth)
        self.stats["requests"] += 1
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            return exc
        except urllib.error.URLError as exc:
            raise self._connection_error(exc.reason, url) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc, url) from None
        finally:
            if callable(body) and hasattr(data, "close"):
                data.close()

    def _connection_error(self, reason, url):
        if isinstance(reason, ssl.SSLError):
            detail = str(reason)
            if "WRONG_VERSION_NUMBER" in detail or "record layer failure" in detail:
                detail += " (the registry may serve plain HTTP: then set plain_http)"
            return TlsError(self.registry, detail)
        if isinstance(reason, socket.gaierror):
            return TransferError(f"cannot resolve the host of registry {self.registry} ({reason}); check its name", url)
        if isinstance(reason, ConnectionRefusedError):
            return TransferError(
                f"cannot connect to registry {self.registry}: connection refused; check that it runs and the host and port",
                url, transient=True,
            )
        if isinstance(reason, BaseException):
            return network_error(reason, f"request to registry {self.registry} ({url})")
        return TransferError(f"request to registry {self.registry} ({url}) failed: {reason}", url, transient=True)

    def _status_error(self, status, headers, body, what):
        if status == 401:
            had_credentials = self._password is not None or self._identity_token is not None
            return AuthError(self.registry, what, 401, had_credentials=had_credentials, username=self.username)
        if status == 403:
            return AuthError(self.registry, what, 403, had_credentials=True, username=self.username)
        if status == 404:
            return NotFoundError(what, detail=f"registry {self.registry} answered 404 ({_registry_error_text(body)})")
        detail = _registry_error_text(body)
        if status == 429 or status >= 500:
            retry_after = headers.get("Retry-After")
            return TransferError(
                f"registry {self.registry} answered HTTP {status} for {what}" + (f" ({detail})" if detail else ""),
                what, status=status, transient=True,
                retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        if status == 405:
            return OciError(f"registry {self.registry} does not allow this operation on {what} (HTTP 405, {detail}); "
                            f"deleting may be disabled in its configuration", what)
        return OciError(f"registry {self.registry} rejected the request for {what}: HTTP {status} {detail}", what)

    def _request(self, method, url, what, repo=None, actions="pull", headers=None, body=None, expect=(200,),
                 stream=False, retry=True, extra_scopes=(), limit=MAX_MANIFEST_SIZE):
        """Send a request with authentication and retries; return a _Response, or the open response when STREAM."""
        attempt = 0
        fresh_auth = False
        while True:
            auth = self._auth_header(repo, actions)
            try:
                response = self._send(method, url, dict(headers or {}), body, auth)
                status = _status_of(response)
                if status == 401 and not fresh_auth:
                    challenge = response.headers.get("WWW-Authenticate")
                    response.close()
                    self._authenticate(challenge, repo, actions, extra_scopes, what)
                    fresh_auth = True
                    continue
                if status in expect:
                    if stream:
                        return response
                    return _Response(status, response.headers, _read_body(response, limit, what))
                error_body = _read_body(response, _MAX_ERROR_BODY, what, strict=False)
                raise self._status_error(status, response.headers, error_body, what)
            except TransferError as exc:
                if not (retry and exc.transient and attempt < self.retry.retries):
                    raise
                attempt += 1
                self.stats["retries"] += 1
                self.retry.wait(attempt, exc)

    def resolve(self, repo: str, ref: str) -> Descriptor:
        what = f"manifest {self._name(repo, ref)}"
        response = self._request("HEAD", self._url(repo, "manifests", ref), what, repo, headers={"Accept": _ACCEPT_MANIFESTS})
        digest = ref if is_digest(ref) else response.headers.get("Docker-Content-Digest")
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        size = response.headers.get("Content-Length")
        if not is_digest(digest) or not media_type or not (size or "").isdigit():
            # Some registries answer HEAD sparsely: the manifest itself is authoritative.
            data, digest, media_type = self.get_manifest(repo, ref)
            size = len(data)
        return Descriptor(media_type, digest, int(size))

    def get_manifest(self, repo: str, ref: str) -> Tuple[bytes, str, str]:
        what = f"manifest {self._name(repo, ref)}"
        response = self._request("GET", self._url(repo, "manifests", ref), what, repo, headers={"Accept": _ACCEPT_MANIFESTS})
        data = response.body
        claimed = ref if is_digest(ref) else response.headers.get("Docker-Content-Digest")
        algorithm = split_digest(claimed)[0] if is_digest(claimed) else "sha256"
        digest = digest_bytes(data, algorithm)
        if is_digest(claimed) and claimed != digest:
            raise DigestMismatchError(what, claimed, digest)
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        if media_type not in MANIFEST_MEDIA_TYPES:
            media_type = parse_manifest(data, what).get("mediaType") or media_type
        return data, digest, media_type

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        algorithm = split_digest(ref)[0] if is_digest(ref) else "sha256"
        digest = digest_bytes(data, algorithm)
        what = f"manifest {self._name(repo, ref)}"
        if is_digest(ref) and ref != digest:
            raise DigestMismatchError(what, ref, digest)
        manifest = parse_manifest(data, what)
        response = self._request("PUT", self._url(repo, "manifests", ref), what, repo, "pull,push",
                                 headers={"Content-Type": media_type}, body=bytes(data), expect=(201,))
        self.stats["manifests_uploaded"] += 1
        subject = manifest_subject(manifest, what)
        if subject is not None and not response.headers.get("OCI-Subject"):
            # The registry did not index the subject itself (no referrers API): keep the tag schema index.
            self.add_referrer_to_tag_index(repo, subject.digest, referrer_descriptor(data, digest, media_type))
        return digest

    def delete_manifest(self, repo: str, ref: str) -> None:
        digest = ref if is_digest(ref) else self.resolve(repo, ref).digest
        self._request("DELETE", self._url(repo, "manifests", digest), f"manifest {self._name(repo, digest)}", repo,
                      "delete", expect=(200, 202))

    def list_tags(self, repo: str) -> List[str]:
        url = f"{self.base_url}/v2/{repo}/tags/list?n=1000"
        tags = []
        for page in range(_MAX_PAGES):
            response = self._request("GET", url, f"tag list of {self._name(repo)}", repo, expect=(200, 404))
            if response.status == 404:
                if page == 0:
                    return []
                raise NotFoundError(self._name(repo), "repository", "it disappeared while its tags were listed")
            try:
                tags.extend(json.loads(response.body).get("tags") or [])
            except (ValueError, AttributeError):
                raise OciError(f"registry {self.registry} sent a tag list for {repo} that is not JSON") from None
            url = self._next_page(response, url)
            if url is None:
                break
        return tags

    def _next_page(self, response, current):
        match = _LINK_NEXT_RE.search(response.headers.get("Link") or "")
        if not match:
            return None
        url = urllib.parse.urljoin(current, match.group(1))
        return None if url == current else url

    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self._request("HEAD", self._url(repo, "blobs", digest), f"blob {self._name(repo, digest)}", repo,
                                 expect=(200, 404))
        return response.status == 200

    def _upload_location(self, response, what):
        location = response.headers.get("Location")
        if not location:
            raise OciError(f"registry {self.registry} started an upload for {what} but sent no Location")
        return urllib.parse.urljoin(self.base_url + "/", location)

    def _upload_progress(self, location, repo, what):
        """``(location, bytes received)`` of an upload session, from its status."""
        response = self._request("GET", location, what, repo, "pull,push", expect=(204,), retry=False)
        match = re.match(r"^0-(\d+)$", (response.headers.get("Range") or "").strip())
        # Distribution reports an empty session as "0-0" too; resending one byte is harmless.
        received = int(match.group(1)) + 1 if match and int(match.group(1)) > 0 else 0
        return self._upload_location(response, what), received

    def _upload(self, repo, source, digest, size, what):
        """One upload session: POST, then one PUT or PATCH chunks and a closing PUT."""
        start = self._request("POST", f"{self.base_url}/v2/{repo}/blobs/uploads/", what, repo, "pull,push",
                              headers={"Content-Length": "0"}, body=b"", expect=(202,), retry=False)
        location = self._upload_location(start, what)

        def piece(offset, length):
            if isinstance(source, (bytes, bytearray, memoryview)):
                return bytes(source[offset:offset + length])
            return lambda: _FileSlice(source, offset, length)

        octet = {"Content-Type": "application/octet-stream"}
        if size <= self.chunk_size:
            self._request("PUT", _with_digest(location, digest), what, repo, "pull,push",
                          headers={**octet, "Content-Length": str(size)}, body=piece(0, size), expect=(201,), retry=False)
            return
        offset = 0
        failures = 0
        while offset < size:
            length = min(self.chunk_size, size - offset)
            try:
                response = self._request(
                    "PATCH", location, what, repo, "pull,push", body=piece(offset, length), expect=(202,), retry=False,
                    headers={**octet, "Content-Length": str(length), "Content-Range": f"{offset}-{offset + length - 1}"},
                )
            except TransferError as exc:
                failures += 1
                if not exc.transient or failures > self.retry.retries:
                    raise
                self.stats["retries"] += 1
                self.retry.wait(failures, exc)
                # Continue from what the registry actually holds rather than sending the whole blob again.
                location, offset = self._upload_progress(location, repo, what)
                continue
            location = self._upload_location(response, what)
            offset += length
        self._request("PUT", _with_digest(location, digest), what, repo, "pull,push",
                      headers={**octet, "Content-Length": "0"}, body=b"", expect=(201,), retry=False)

    def push_blob(self, repo: str, source: str | bytes, digest: str, size: int) -> bool:
        what = f"blob {self._name(repo, digest)}"
        split_digest(digest)
        actual_size = len(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.path.getsize(source)
        if actual_size != int(size):
            raise SizeMismatchError(f"content for {what}" if isinstance(source, bytes) else f"file {source}", size, actual_size)
        if self.blob_exists(repo, digest):
            self.stats["blobs_skipped"] += 1
            return False
        attempt = 0
        while True:
            try:
                self._upload(repo, source, digest, int(size), what)
                break
            except TransferError as exc:
                # A lost answer to the final PUT may hide a finished upload.
                if exc.transient and self.blob_exists(repo, digest):
                    break
                if not exc.transient or attempt >= self.retry.retries:
                    raise
                attempt += 1
                self.stats["retries"] += 1
                self.retry.wait(attempt, exc)
        self.stats["blobs_uploaded"] += 1
        self.stats["bytes_uploaded"] += int(size)
        return True

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Mount blob DIGEST from FROM_REPO into REPO on this registry; False when the registry declined (202)."""
        what = f"blob {self._name(repo, digest)} (mount from {from_repo})"
        url = f"{self.base_url}/v2/{repo}/blobs/uploads/?" + urllib.parse.urlencode({"mount": digest, "from": from_repo})
        response = self._request("POST", url, what, repo, "pull,push", headers={"Content-Length": "0"}, body=b"",
                                 expect=(201, 202), extra_scopes=(f"repository:{from_repo}:pull",))
        if response.status == 201:
            self.stats["blobs_mounted"] += 1
            return True
        # 202: the registry opened an ordinary upload session instead; close it, the caller uploads.
        location = response.headers.get("Location")
        if location:
            try:
                self._request("DELETE", urllib.parse.urljoin(self.base_url + "/", location), what, repo, "pull,push",
                              expect=(200, 204, 404), retry=False)
            except OciError:
                pass
        return False

    def open_blob(self, repo: str, digest: str, offset: int = 0) -> Any:
        """The open response for blob DIGEST from byte OFFSET (a Range request when OFFSET > 0); one attempt."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self._request("GET", self._url(repo, "blobs", digest), f"blob {self._name(repo, digest)}", repo,
                             headers=headers, expect=(200, 206), stream=True, retry=False)

    def read_blob(self, repo: str, digest: str, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        what = f"blob {self._name(repo, digest)}"
        data = self._request("GET", self._url(repo, "blobs", digest), what, repo, limit=max_size).body
        actual = digest_bytes(data, split_digest(digest)[0])
        if actual != digest:
            raise DigestMismatchError(what, digest, actual)
        self.stats["bytes_downloaded"] += len(data)
        return data

    def fetch_blob_to(self, repo: str, descriptor: Descriptor, dest_dir: str, name: str, mode: int | None = None,
                      progress: Callable[[int, int], None] | None = None, cache: BlobCache | None = None,
                      link: bool = False) -> str:
        what = f"blob {self._name(repo, descriptor.digest)}"

        def fetch(offset):
            return self.open_blob(repo, descriptor.digest, offset)

        options = {"retry": self.retry, "progress": progress, "stats": self.stats, "what": what}
        if cache is None:
            return download_blob(fetch, dest_dir, name, descriptor.digest, descriptor.size, mode=mode, **options)
        if cache.has(descriptor.digest, descriptor.size, verify=link):
            self.stats["blobs_skipped"] += 1
        else:
            cache.download(fetch, descriptor.digest, descriptor.size, **options)
        return cache.place(descriptor.digest, dest_dir, name, descriptor.size, mode=mode, link=link)

    @property
    def referrers_mechanism(self) -> str | None:
        """How referrers were found: ``api`` (OCI 1.1 referrers API), ``tag_schema``, or None before a lookup."""
        if self._referrers_api is None:
            return None
        return "api" if self._referrers_api else "tag_schema"

    def referrers(self, repo: str, digest: str, artifact_type: str | None = None) -> List[Descriptor]:
        split_digest(digest)
        if self._referrers_api is not False:
            found = self._referrers_from_api(repo, digest, artifact_type)
            if found is not None:
                return found
        try:
            data, _digest, _media_type = self.get_manifest(repo, referrers_tag(digest))
        except NotFoundError:
            return []
        where = f"referrers index {self._name(repo, referrers_tag(digest))}"
        index = parse_manifest(data, where)
        return filter_referrers([Descriptor.from_dict(m, where) for m in index.get("manifests") or []], artifact_type)

    def _referrers_from_api(self, repo, digest, artifact_type):
        """Referrers from the OCI 1.1 API, or None when the registry does not have it (404)."""
        url = self._url(repo, "referrers", digest)
        if artifact_type:
            url += "?" + urllib.parse.urlencode({"artifactType": artifact_type})
        found = []
        filtered = False
        where = f"referrers of {self._name(repo, digest)}"
        for _page in range(_MAX_PAGES):
            response = self._request("GET", url, where, repo, headers={"Accept": OCI_INDEX}, expect=(200, 404))
            if response.status == 404:
                self._referrers_api = False
                return None
            self._referrers_api = True
            found.extend(Descriptor.from_dict(m, where) for m in parse_manifest(response.body, where).get("manifests") or [])
            filtered = "artifacttype" in (response.headers.get("OCI-Filters-Applied") or "").lower()
            url = self._next_page(response, url)
            if url is None:
                break
        return found if filtered else filter_referrers(found, artifact_type)

    def add_referrer_to_tag_index(self, repo: str, subject_digest: str, descriptor: Descriptor) -> bool:
        """List DESCRIPTOR in the referrers tag schema index of SUBJECT_DIGEST; False when it was listed already."""
        tag = referrers_tag(subject_digest)
        try:
            data, _digest, _media_type = self.get_manifest(repo, tag)
            index = parse_manifest(data, f"referrers index {self._name(repo, tag)}")
        except NotFoundError:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        manifests = index.get("manifests") or []
        if any(isinstance(m, dict) and m.get("digest") == descriptor.digest for m in manifests):
            return False
        index["manifests"] = manifests + [descriptor.to_dict()]
        self.put_manifest(repo, tag, encode_json(index), OCI_INDEX)
        return True


def open_store(reference: Reference | str, create_layout: bool = False, **registry_options: Any) -> OciStore:
    """The store a reference lives in: a LayoutStore for ``oci-layout:``, else a RegistryClient.

    REFERENCE is a Reference or its text. REGISTRY_OPTIONS go to RegistryClient (username, password,
    docker_config, ca_file, validate_certs, plain_http, timeout, retries, backoff).
    """
    if isinstance(reference, str):
        reference = parse_reference(reference)
    if reference.is_layout:
        return LayoutStore(reference.repository, create=create_layout)
    return RegistryClient(reference.registry, **registry_options)
