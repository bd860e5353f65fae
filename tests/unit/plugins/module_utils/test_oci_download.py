# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verified download routine, placement, the blob cache and destination safety, without a network."""

from __future__ import annotations

import email.message
import os
import random
import stat

import pytest

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write
from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import (
    BlobCache,
    RetryPolicy,
    download_blob,
    file_matches,
    parse_file_mode,
    place_blob,
    safe_destination,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import (
    DigestMismatchError,
    OciError,
    SizeMismatchError,
    TransferError,
    UnsafePathError,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file

# Fixed bytes: a test that damages one byte must really change it, whatever the run.
DATA = random.Random(20261122).randbytes(200_000)
DIGEST = digest_bytes(DATA)
NO_WAIT = RetryPolicy(retries=3, backoff=0, sleep=lambda _s: None)


class Response:
    """A blob response: STATUS, headers, and a body that may stop early (a dropped connection)."""

    def __init__(self, status, body, headers=None, cut=None):
        self.status = status
        self.headers = email.message.Message()
        self.headers["Content-Length"] = str(len(body))
        for key, value in (headers or {}).items():
            self.headers[key] = value
        self._body = body[:cut] if cut is not None else body
        self._pos = 0

    def read(self, size):
        chunk = self._body[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk

    def readinto(self, buffer):
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self):
        pass


class Server:
    """FETCH for download_blob: answers from a script of behaviours and records the offsets asked for."""

    def __init__(self, data=DATA, script=()):
        self.data = data
        self.script = list(script)
        self.offsets = []

    def __call__(self, offset):
        self.offsets.append(offset)
        behaviour = self.script.pop(0) if self.script else "ok"
        if behaviour == "unavailable":
            raise TransferError("HTTP 503", status=503, transient=True)
        if behaviour == "cut":
            return Response(200 if not offset else 206, self.data[offset:], self._range(offset), cut=50_000)
        if behaviour == "ignore-range" or not offset:
            return Response(200, self.data)
        if behaviour == "bad-range":
            return Response(206, self.data[offset + 1:], {"Content-Range": f"bytes {offset + 1}-{len(self.data) - 1}/{len(self.data)}"})
        return Response(206, self.data[offset:], self._range(offset))

    def _range(self, offset):
        return {"Content-Range": f"bytes {offset}-{len(self.data) - 1}/{len(self.data)}"} if offset else {}


def partial_path(directory, digest=DIGEST):
    return os.path.join(directory, f".{digest.split(':')[1]}.partial")


def test_download_writes_the_verified_file_and_nothing_else(tmp_path):
    stats = {}
    progress = []
    path = download_blob(Server(), str(tmp_path), "sub/dir/blob.bin", DIGEST, len(DATA), retry=NO_WAIT, stats=stats,
                         progress=lambda done, total: progress.append((done, total)))
    assert path == str(tmp_path / "sub" / "dir" / "blob.bin")
    assert digest_file(path) == (DIGEST, len(DATA))
    assert os.listdir(tmp_path / "sub" / "dir") == ["blob.bin"]
    assert stats == {"bytes_downloaded": len(DATA), "blobs_downloaded": 1}
    assert progress[-1] == (len(DATA), len(DATA))


def test_cut_transfers_resume_where_they_stopped(tmp_path):
    server = Server(script=["cut", "unavailable", "cut", "ok"])
    stats = {}
    download_blob(server, str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT, stats=stats)
    assert server.offsets == [0, 50_000, 50_000, 100_000]
    assert digest_file(str(tmp_path / "blob"))[0] == DIGEST
    assert stats["retries"] == 3 and stats["resumed"] == 2 and stats["bytes_downloaded"] == len(DATA)


def test_wrong_content_range_restarts_from_zero(tmp_path):
    server = Server(script=["cut", "bad-range", "ok"])
    download_blob(server, str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert server.offsets == [0, 50_000, 0]
    assert digest_file(str(tmp_path / "blob"))[0] == DIGEST


def test_range_ignored_restarts_from_zero(tmp_path):
    stats = {}
    download_blob(Server(script=["cut", "ignore-range"]), str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT, stats=stats)
    assert digest_file(str(tmp_path / "blob"))[0] == DIGEST
    assert stats["bytes_downloaded"] == 50_000 + len(DATA) and "resumed" not in stats


def test_giving_up_keeps_the_partial_file_for_the_next_run(tmp_path):
    with pytest.raises(TransferError, match="gave up after 2 attempts"):
        download_blob(Server(script=["cut", "cut"]), str(tmp_path), "blob", DIGEST, len(DATA),
                      retry=RetryPolicy(1, 0, sleep=lambda _s: None))
    assert os.path.getsize(partial_path(tmp_path)) == 100_000
    assert not (tmp_path / "blob").exists()
    server = Server()
    download_blob(server, str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert server.offsets == [100_000]
    assert digest_file(str(tmp_path / "blob"))[0] == DIGEST and not os.path.exists(partial_path(tmp_path))


def test_damaged_leftover_is_discarded_for_one_clean_download(tmp_path):
    with open(partial_path(tmp_path), "wb") as handle:
        handle.write(b"\0" * 1000)  # not the blob's first bytes
    server = Server()
    download_blob(server, str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert server.offsets == [1000, 0]
    assert digest_file(str(tmp_path / "blob"))[0] == DIGEST


def test_complete_leftover_needs_no_request(tmp_path):
    with open(partial_path(tmp_path), "wb") as handle:
        handle.write(DATA)
    server = Server()
    download_blob(server, str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert server.offsets == []


def test_digest_mismatch_deletes_everything_and_raises(tmp_path):
    wrong = bytes(reversed(DATA))
    with pytest.raises(DigestMismatchError) as info:
        download_blob(Server(data=wrong), str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert info.value.expected == DIGEST and info.value.actual == digest_bytes(wrong)
    assert os.listdir(tmp_path) == []


def test_longer_body_than_the_descriptor_is_a_size_mismatch(tmp_path):
    with pytest.raises(SizeMismatchError):
        download_blob(Server(data=DATA + b"x"), str(tmp_path), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert os.listdir(tmp_path) == []


def test_mode_is_applied_before_the_file_appears(tmp_path):
    path = download_blob(Server(), str(tmp_path), "tool", DIGEST, len(DATA), retry=NO_WAIT, mode=0o750)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750


def test_empty_blob(tmp_path):
    empty = digest_bytes(b"")
    path = download_blob(Server(data=b""), str(tmp_path), "empty", empty, 0, retry=NO_WAIT)
    assert os.path.getsize(path) == 0


# -- destinations -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, reason", [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("../escape", "'..'"),
    ("a/../../escape", "'..'"),
    ("a\0b", "NUL"),
    ("./", "destination directory itself"),
])
def test_unsafe_names_are_refused(tmp_path, name, reason):
    with pytest.raises(UnsafePathError, match=reason):
        safe_destination(str(tmp_path), name)


def test_symlinked_directory_cannot_lead_a_write_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the destination"):
        download_blob(Server(), str(dest), "link/blob", DIGEST, len(DATA), retry=NO_WAIT)
    with pytest.raises(UnsafePathError):
        safe_destination(str(dest), "link/new/dir/file")
    assert os.listdir(outside) == []


def test_symlink_at_the_final_name_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "blob").symlink_to(outside)
    download_blob(Server(), str(dest), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert outside.read_text() == "keep"
    assert not os.path.islink(dest / "blob") and digest_file(str(dest / "blob"))[0] == DIGEST


def test_symlinked_destination_itself_is_fine(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "current").symlink_to(real)
    download_blob(Server(), str(tmp_path / "current"), "blob", DIGEST, len(DATA), retry=NO_WAIT)
    assert (real / "blob").exists()


@pytest.mark.parametrize("text, mode", [("0755", 0o755), ("644", 0o644), ("0o600", 0o600), (None, None)])
def test_file_modes_parse(text, mode):
    assert parse_file_mode(text) == mode


@pytest.mark.parametrize("text", ["4755", "rwx", "", "0999", "12345"])
def test_unsafe_or_malformed_file_modes_are_refused(text):
    with pytest.raises(OciError, match="io.sciops.fleet.file.mode"):
        parse_file_mode(text, "bin/tool")


# -- local placement and the cache --------------------------------------------------------------


def test_cache_places_by_hard_link_and_never_fetches_twice(tmp_path):
    cache = BlobCache(str(tmp_path / "cache"))
    server = Server()
    cached = cache.download(server, DIGEST, len(DATA), retry=NO_WAIT)
    again = cache.download(server, DIGEST, len(DATA), retry=NO_WAIT)
    assert cached == again == cache.path_for(DIGEST) and server.offsets == [0]
    placed = cache.place(DIGEST, str(tmp_path / "dest"), "blob", len(DATA), link=True)
    assert os.stat(placed).st_ino == os.stat(cached).st_ino
    assert cache.place(DIGEST, str(tmp_path / "dest"), "blob", len(DATA), link=True) == placed


def test_cache_places_an_independent_copy_by_default(tmp_path):
    cache = BlobCache(str(tmp_path / "cache"))
    cached = cache.download(Server(), DIGEST, len(DATA), retry=NO_WAIT)
    placed = cache.place(DIGEST, str(tmp_path / "dest"), "blob", len(DATA))
    assert os.stat(placed).st_ino != os.stat(cached).st_ino
    with open(placed, "r+b") as handle:  # a user edits the pulled file in place
        handle.write(bytes([DATA[0] ^ 0xFF]))
    assert cache.has(DIGEST, len(DATA), verify=True)


def test_cache_copies_when_the_mode_differs(tmp_path):
    cache = BlobCache(str(tmp_path / "cache"))
    source = tmp_path / "blob"
    source.write_bytes(DATA)
    cached = cache.put_from(str(source), DIGEST, len(DATA))
    placed = cache.place(DIGEST, str(tmp_path / "dest"), "tool", len(DATA), mode=0o700)
    assert os.stat(placed).st_ino != os.stat(cached).st_ino
    assert stat.S_IMODE(os.stat(placed).st_mode) == 0o700 and digest_file(placed)[0] == DIGEST


def test_damaged_cache_entry_is_detected_and_dropped(tmp_path):
    cache = BlobCache(str(tmp_path / "cache"))
    source = tmp_path / "blob"
    source.write_bytes(DATA)
    cached = cache.put_from(str(source), DIGEST, len(DATA), verify=True)
    assert cache.has(DIGEST, len(DATA), verify=True)
    with open(cached, "r+b") as handle:
        handle.write(bytes([DATA[0] ^ 0xFF]))
    assert cache.has(DIGEST, len(DATA)) is True  # size alone cannot tell
    assert cache.has(DIGEST, len(DATA), verify=True) is False
    assert not os.path.exists(cached)


def test_verified_copy_refuses_a_corrupt_source(tmp_path):
    source = tmp_path / "blob"
    source.write_bytes(DATA[:-1] + b"?")
    with pytest.raises(DigestMismatchError):
        place_blob(str(source), str(tmp_path / "dest"), "blob", DIGEST, len(DATA))
    assert os.listdir(tmp_path / "dest") == []


def test_file_matches_only_the_exact_content(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    assert file_matches(str(path), DIGEST, len(DATA))
    assert not file_matches(str(path), DIGEST, len(DATA) + 1)
    assert not file_matches(str(tmp_path / "absent"), DIGEST)
    path.write_bytes(DATA[:-1] + b"?")
    assert not file_matches(str(path), DIGEST, len(DATA))


def test_atomic_write_uses_normal_permissions_and_leaves_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "f"), b"new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
    atomic_write(str(tmp_path / "f"), b"newer", mode=0o600)
    assert (tmp_path / "f").read_bytes() == b"newer" and os.listdir(tmp_path) == ["f"]
