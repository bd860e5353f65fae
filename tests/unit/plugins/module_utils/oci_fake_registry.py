# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An in-process OCI registry on 127.0.0.1 for the faults a real registry cannot produce on demand.

It speaks enough of the distribution API for the client (manifests, blobs with Range, uploads, mounts, tag
pagination, optional referrers API) and injects faults: a dropped connection mid-blob, ignored Range,
wrong bytes, error statuses, Basic or Bearer authentication, a redirect for blob downloads.
Integration tests use the real registry (tests/testbed/registry.py); this is only for unit tests.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import socket
import threading
import urllib.parse

_ROUTE = re.compile(r"^/v2/(?P<repo>.+?)/(?P<kind>manifests|blobs|tags|referrers)/(?P<rest>.*)$")


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Fault:
    """Applies to TIMES requests whose method is METHOD and whose path contains PATH, after letting AFTER pass."""

    def __init__(self, method, path, times=1, after=0, status=None, headers=None, drop_after=None, corrupt=False):
        self.method = method
        self.path = path
        self.times = times
        self.after = after
        self.status = status
        self.headers = headers or {}
        self.drop_after = drop_after
        self.corrupt = corrupt

    def matches(self, method, path):
        if self.times <= 0 or method != self.method or self.path not in path:
            return False
        if self.after > 0:
            self.after -= 1
            return False
        return True


class FakeRegistry:
    """Start with ``with FakeRegistry(...) as reg:``; ``reg.host`` is ``127.0.0.1:PORT``.

    AUTH: None, ("basic", user, password) or ("bearer", user, password). IDENTITY_TOKEN is accepted as an
    OAuth2 refresh token by the bearer token endpoint. REFERRERS_API turns on the OCI 1.1 referrers API.
    TAG_PAGE caps the tag list page size so pagination is exercised.
    """

    def __init__(self, auth=None, identity_token=None, referrers_api=False, tag_page=1000, ssl_context=None):
        self.auth = auth
        self.identity_token = identity_token
        self.referrers_api = referrers_api
        self.tag_page = tag_page
        self.blobs = {}
        self.manifests = {}  # (repo, tag or digest) -> (bytes, media type)
        self.uploads = {}
        self.faults = []
        self.requests = []  # (method, path, headers)
        self.tokens = set()
        self.tokens_issued = 0
        self.ignore_range = False
        self.redirect_blobs = False
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = None

    @property
    def host(self):
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def add_blob(self, data):
        self.blobs[sha256(data)] = bytes(data)
        return sha256(data)

    def fault(self, *args, **kwargs):
        self.faults.append(Fault(*args, **kwargs))

    def seen(self, method, fragment):
        """The recorded requests of METHOD whose path contains FRAGMENT."""
        return [r for r in self.requests if r[0] == method and fragment in r[1]]

    def take_fault(self, method, path):
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None


def _make_handler(reg):  # noqa: C901 - one dispatcher for a small fake
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, status, body=b"", headers=None, head=False):
            self.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body and not head:
                self.wfile.write(body)

        def _error(self, status, code, head=False):
            body = json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}).encode()
            self._send(status, body, {"Content-Type": "application/json"}, head=head)

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _authorized(self, repo):
            if reg.auth is None:
                return True
            scheme, user, password = reg.auth
            header = self.headers.get("Authorization") or ""
            if scheme == "basic":
                if header == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode():
                    return True
                self._send(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            if header.startswith("Bearer ") and header[7:] in reg.tokens:
                return True
            challenge = f'Bearer realm="http://{reg.host}/token",service="fake",scope="repository:{repo}:pull"'
            self._send(401, b"{}", {"WWW-Authenticate": challenge})
            return False

        def _token(self, method):
            _scheme, user, password = reg.auth
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if method == "POST":
                form = dict(urllib.parse.parse_qsl(self._body().decode()))
                ok = reg.identity_token and form.get("refresh_token") == reg.identity_token
            else:
                expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                ok = self.headers.get("Authorization") == expected and "scope" in query
            if not ok:
                self._send(401, b"{}")
                return
            reg.tokens_issued += 1
            token = f"token-{reg.tokens_issued}"
            reg.tokens.add(token)
            key = "access_token" if method == "POST" else "token"
            self._send(200, json.dumps({key: token}).encode(), {"Content-Type": "application/json"})

        def _dispatch(self, method):
            reg.requests.append((method, self.path, dict(self.headers)))
            path = urllib.parse.urlsplit(self.path).path
            fault = reg.take_fault(method, self.path)
            if fault is not None and fault.status:
                self._body()
                self._send(fault.status, b'{"errors":[]}', fault.headers, head=method == "HEAD")
                return
            if path == "/token":
                self._token(method)
                return
            if path.startswith("/storage/"):
                self._blob(method, path[len("/storage/"):], fault)
                return
            if path == "/v2/":
                if self._authorized(""):
                    self._send(200, b"{}")
                return
            match = _ROUTE.match(path)
            if not match:
                self._send(404, b"404 page not found\n")
                return
            repo, kind, rest = match.group("repo", "kind", "rest")
            if not self._authorized(repo):
                return
            getattr(self, f"_{kind}")(method, repo, rest, fault)

        def _manifests(self, method, repo, ref, _fault):
            head = method == "HEAD"
            if method in ("GET", "HEAD"):
                found = reg.manifests.get((repo, ref))
                if not found:
                    self._error(404, "MANIFEST_UNKNOWN", head)
                    return
                data, media_type = found
                self._send(200, data, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)}, head=head)
            elif method == "PUT":
                data = self._body()
                media_type = self.headers.get("Content-Type")
                reg.manifests[(repo, ref)] = reg.manifests[(repo, sha256(data))] = (data, media_type)
                headers = {"Docker-Content-Digest": sha256(data), "Location": f"/v2/{repo}/manifests/{sha256(data)}"}
                subject = json.loads(data).get("subject")
                if reg.referrers_api and subject:
                    headers["OCI-Subject"] = subject["digest"]
                self._send(201, b"", headers)
            elif method == "DELETE":
                digest = ref
                gone = [key for key, value in reg.manifests.items() if key[0] == repo and sha256(value[0]) == digest]
                for key in gone:
                    del reg.manifests[key]
                self._send(202 if gone else 404)

        def _blobs(self, method, repo, rest, fault):
            if rest.startswith("uploads"):
                self._uploads(method, repo, rest[len("uploads"):].strip("/"))
                return
            if reg.redirect_blobs and method == "GET":
                self._send(307, b"", {"Location": f"/storage/{rest}"})
                return
            self._blob(method, rest, fault)

        def _blob(self, method, digest, fault):
            head = method == "HEAD"
            data = reg.blobs.get(digest)
            if data is None:
                self._error(404, "BLOB_UNKNOWN", head)
                return
            if fault is not None and fault.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            start = 0
            status = 200
            headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
            rng = self.headers.get("Range")
            if rng and not reg.ignore_range and not head:
                start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            if fault is not None and fault.drop_after is not None and not head:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[:fault.drop_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._send(status, body, headers, head=head)

        def _uploads(self, method, repo, upload_id):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            if method == "POST":
                self._body()
                mount = query.get("mount")
                if mount and mount in reg.blobs and any(k[0] == query.get("from") for k in reg.manifests):
                    self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{mount}", "Docker-Content-Digest": mount})
                    return
                new_id = str(len(reg.uploads) + 1)
                reg.uploads[new_id] = bytearray()
                self._send(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/{new_id}?_state=a%2Bb%3D", "Range": "0-0"})
            elif method == "PATCH":
                buf = reg.uploads[upload_id]
                start = int(self.headers["Content-Range"].split("-")[0])
                if start != len(buf):
                    self._error(416, "BLOB_UPLOAD_INVALID")
                    return
                buf.extend(self._body())
                self._send(202, b"", {"Location": f"/v2/{repo}/blobs/uploads/{upload_id}?_state=x", "Range": f"0-{len(buf) - 1}"})
            elif method == "PUT":
                assert query.get("_state") in ("a+b=", "x"), query
                buf = reg.uploads.pop(upload_id)
                buf.extend(self._body())
                if sha256(bytes(buf)) != query.get("digest"):
                    self._error(400, "DIGEST_INVALID")
                    return
                reg.blobs[query["digest"]] = bytes(buf)
                self._send(201, b"", {"Location": f"/v2/{repo}/blobs/{query['digest']}"})
            elif method == "GET":
                buf = reg.uploads[upload_id]
                self._send(204, b"", {"Location": f"/v2/{repo}/blobs/uploads/{upload_id}?_state=x", "Range": f"0-{max(len(buf) - 1, 0)}"})
            elif method == "DELETE":
                reg.uploads.pop(upload_id, None)
                self._send(204)

        def _tags(self, method, repo, _rest, _fault):
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
            tags = sorted({ref for (r, ref) in reg.manifests if r == repo and not ref.startswith("sha256:")})
            if not tags:
                self._error(404, "NAME_UNKNOWN", method == "HEAD")
                return
            page = min(int(query.get("n", 1000)), reg.tag_page)
            if "last" in query:
                tags = [t for t in tags if t > query["last"]]
            headers = {"Content-Type": "application/json"}
            if len(tags) > page:
                headers["Link"] = f'</v2/{repo}/tags/list?n={page}&last={tags[page - 1]}>; rel="next"'
            self._send(200, json.dumps({"name": repo, "tags": tags[:page]}).encode(), headers)

        def _referrers(self, method, repo, digest, _fault):
            if not reg.referrers_api:
                self._send(404, b"404 page not found\n")
                return
            found = {}
            for (r, _ref), (data, media_type) in reg.manifests.items():
                manifest = json.loads(data)
                if r == repo and (manifest.get("subject") or {}).get("digest") == digest:
                    found[sha256(data)] = {"mediaType": media_type, "digest": sha256(data), "size": len(data),
                                           "artifactType": manifest.get("artifactType")}
            index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": list(found.values())}
            self._send(200, json.dumps(index).encode(), {"Content-Type": "application/vnd.oci.image.index.v1+json"}, head=method == "HEAD")

        def do_GET(self):  # noqa: N802 - http.server naming
            self._dispatch("GET")

        def do_HEAD(self):  # noqa: N802
            self._dispatch("HEAD")

        def do_PUT(self):  # noqa: N802
            self._dispatch("PUT")

        def do_POST(self):  # noqa: N802
            self._dispatch("POST")

        def do_PATCH(self):  # noqa: N802
            self._dispatch("PATCH")

        def do_DELETE(self):  # noqa: N802
            self._dispatch("DELETE")

    return Handler
