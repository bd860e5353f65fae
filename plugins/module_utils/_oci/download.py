# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""The one verified download routine, the content-addressed blob cache and safe file placement.

Every blob that lands on disk in this collection goes through ``download_blob`` (from a registry) or
``place_blob`` (from a local file: cache or image layout). Both write into a temporary file in the
destination directory while hashing, check size and digest, fsync, rename into place and fsync the
directory, so the final name only ever holds complete, verified content.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import queue
import re
import threading
from typing import Any, Callable, Dict, List

from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import (
    commit_file,
    create_temp,
    fsync_dir,
    link_unsupported,
    remove_quietly,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import (
    DigestMismatchError,
    OciError,
    SizeMismatchError,
    TransferError,
    UnsafePathError,
)
from ansible_collections.sciops.fleet.plugins.module_utils._oci.reference import split_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oci.retry import RetryPolicy, network_error
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_file, format_digest, new_hasher

# The annotation that records a file's permission bits, as an octal string such as "0755".
FILE_MODE_ANNOTATION = "io.sciops.fleet.file.mode"
CHUNK_SIZE = 1024 * 1024
WRITEBACK_STEP = 64 * 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _check_inside(root, path, name, dest_dir):
    if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(name, dest_dir, f"it resolves to {path}, outside the destination (through a symlink)")


def name_parts(name: str, dest_dir: str | None = None) -> List[str]:
    """The components of file NAME (relative, '/'-separated), or UnsafePathError when it could leave DEST_DIR."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(name, dest_dir, "the name is empty")
    if "\0" in name:
        raise UnsafePathError(name, dest_dir, "the name contains a NUL byte")
    if name.startswith("/") or os.path.isabs(name):
        raise UnsafePathError(name, dest_dir, "it is an absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafePathError(name, dest_dir, "it contains a '..' component")
    parts = [part for part in parts if part not in ("", ".")]
    if not parts:
        raise UnsafePathError(name, dest_dir, "it names the destination directory itself")
    return parts


def safe_destination(dest_dir: str, name: str, create: bool = True) -> str:
    """The absolute path for file NAME (relative, '/'-separated) under DEST_DIR; parent directories are created
    unless CREATE is false (check mode).

    Rejects empty names, NUL, absolute paths and '..' components, and any name whose parent directory
    resolves (through symlinks) outside DEST_DIR. A symlink at the final name itself is harmless: files are
    renamed over it, never written through it.
    """
    parts = name_parts(name, dest_dir)
    root = os.path.realpath(dest_dir)
    final = os.path.join(root, *parts)
    parent = os.path.dirname(final)
    # Checked before makedirs (which would follow a symlinked parent) and again after it.
    _check_inside(root, os.path.realpath(parent), name, dest_dir)
    if create:
        os.makedirs(parent, exist_ok=True)
        _check_inside(root, os.path.realpath(parent), name, dest_dir)
    if os.path.isdir(final) and not os.path.islink(final):
        raise UnsafePathError(name, dest_dir, "a directory of that name exists")
    return final


def parse_file_mode(text: str | None, name: str | None = None) -> int | None:
    """Permission bits from a recorded octal mode string ("0755", "644"); None when TEXT is None.

    Only the 0777 bits are accepted: set-id and sticky bits are never restored from an artifact.
    """
    if text is None:
        return None
    value = str(text).strip().lower()
    if value.startswith("0o"):
        value = value[2:]
    if not value or len(value) > 4 or any(ch not in "01234567" for ch in value) or int(value, 8) > 0o777:
        raise OciError(
            f"file mode {text!r} recorded for {name or 'a file'} ({FILE_MODE_ANNOTATION}) is not an octal permission "
            f"mode between 0000 and 0777; fix the annotation when pushing",
            name,
        )
    return int(value, 8)


def format_file_mode(mode: int) -> str:
    """The annotation value for permission bits MODE (an int), e.g. "0755"."""
    return f"{mode & 0o777:04o}"


class _RestartFromZero(Exception):
    """The server's answer to a Range request cannot be appended; start over without Range."""


class _Partial:
    """The locked ``.<hex>.partial`` file and the hash of exactly the bytes it holds."""

    def __init__(self, path, digest, size):
        self.path = path
        self.digest = digest
        self.size = size
        self.fd = self._open_locked(path)
        self.hasher = new_hasher(digest)
        self.offset = 0
        # How many bytes came from an earlier attempt; such bytes are not trusted blindly (see download_blob).
        self.kept = 0
        try:
            self._hash_existing()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open_locked(path):
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # Another process may have finished (renamed our inode away) while we waited for the lock.
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _hash_existing(self):
        length = os.fstat(self.fd).st_size
        if length > self.size:
            self.reset()
            return
        os.lseek(self.fd, 0, os.SEEK_SET)
        while self.offset < length:
            chunk = os.read(self.fd, min(CHUNK_SIZE, length - self.offset))
            if not chunk:
                break
            self.hasher.update(chunk)
            self.offset += len(chunk)
        self.kept = self.offset

    def reset(self):
        """Empty the file and start the hash over."""
        os.ftruncate(self.fd, 0)
        self.hasher = new_hasher(self.digest)
        self.offset = self.kept = 0

    def append(self, chunk):
        """Write CHUNK at the current end and hash it."""
        os.lseek(self.fd, self.offset, os.SEEK_SET)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]
        self.hasher.update(chunk)
        start = self.offset
        self.offset += len(chunk)
        if self.offset // WRITEBACK_STEP != start // WRITEBACK_STEP and hasattr(os, "posix_fadvise"):
            # Start writing the last step back to disk now, so that the final fsync has little left to do.
            os.posix_fadvise(self.fd, 0, self.offset, os.POSIX_FADV_DONTNEED)

    def commit(self, final, mode):
        """Rename the verified file to FINAL durably."""
        fd, self.fd = self.fd, None
        commit_file(fd, self.path, final, mode)

    def close(self):
        """Release the lock; the file stays for a later resume."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _HashWriter:
    """Hash and write received chunks on a worker thread while the caller reads the next one.

    hashlib and os.write release the GIL, so on two cores the network read overlaps with hashing and
    writing instead of taking turns with them. A few fixed buffers circulate; memory stays bounded.
    """

    BUFFERS = 4

    def __init__(self, partial):
        self.partial = partial
        self.error = None
        self._free = queue.Queue()
        self._full = queue.Queue()
        for _buffer in range(self.BUFFERS):
            self._free.put(bytearray(CHUNK_SIZE))
        self._thread = threading.Thread(target=self._run, name="blob-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, count = item
            if self.error is None:
                try:
                    self.partial.append(memoryview(buffer)[:count])
                except BaseException as exc:  # pylint: disable=broad-except
                    self.error = exc
            self._free.put(buffer)

    def buffer(self):
        """A free buffer to read into; raises what the writer ran into (disk full, ...)."""
        buffer = self._free.get()
        if self.error is not None:
            self._free.put(buffer)
            raise self.error
        return buffer

    def give_back(self, buffer):
        self._free.put(buffer)

    def submit(self, buffer, count):
        self._full.put((buffer, count))

    def close(self):
        """Wait until every submitted chunk is written; raise the writer's error, if any."""
        self._full.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


def _content_range_ok(header, offset, size):
    match = _CONTENT_RANGE_RE.match((header or "").strip())
    if not match:
        return False
    start, end, total = match.groups()
    return int(start) == offset and int(end) == size - 1 and total in ("*", str(size))


def _receive(partial, response, what, stats, progress):
    """Append RESPONSE's body (the blob from partial.offset on) to PARTIAL."""
    status = getattr(response, "status", None)
    headers = response.headers
    if partial.offset and status == 206:
        if not _content_range_ok(headers.get("Content-Range"), partial.offset, partial.size):
            raise _RestartFromZero()
        stats["resumed"] = stats.get("resumed", 0) + 1
    elif status == 200:
        # A server that ignores Range sends everything again: start the file over.
        partial.reset()
    else:
        raise TransferError(f"{what}: unexpected HTTP status {status} for a blob download", status=status)
    size = partial.size
    length = headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != size - partial.offset:
        raise SizeMismatchError(what, size, partial.offset + int(length))
    received = partial.offset
    writer = _HashWriter(partial)
    try:
        while received < size:
            buffer = writer.buffer()
            try:
                count = response.readinto(memoryview(buffer)[:min(len(buffer), size - received)])
            except (OSError, http.client.HTTPException) as exc:
                writer.give_back(buffer)
                raise network_error(exc, what) from None
            if not count:
                writer.give_back(buffer)
                raise TransferError(f"{what}: connection closed after {received} of {size} bytes", transient=True)
            writer.submit(buffer, count)
            received += count
            stats["bytes_downloaded"] = stats.get("bytes_downloaded", 0) + count
            if progress is not None:
                progress(received, size)
    finally:
        # Everything received is in the partial file before anyone looks at its offset (resume, verify).
        writer.close()
    if length is None:
        # Without a Content-Length a longer body can only be told from a correct one by reading on.
        try:
            extra = response.read(1)
        except (OSError, http.client.HTTPException):
            extra = b""
        if extra:
            raise SizeMismatchError(what, size, f"more than {size}")


def download_blob(fetch: Callable[[int], Any], dest_dir: str, name: str, digest: str, size: int,
                  retry: RetryPolicy | None = None, mode: int | None = None,
                  progress: Callable[[int, int], None] | None = None, stats: Dict[str, int] | None = None,
                  what: str | None = None) -> str:
    """Download a blob to DEST_DIR/NAME, verified; return the final path.

    FETCH(offset) opens the blob at byte OFFSET (sending ``Range: bytes=OFFSET-`` when OFFSET > 0) and returns a
    response with ``status``, ``headers.get()``, ``read(n)`` and ``close()``; it raises TransferError with
    ``transient=True`` for failures worth retrying. Timeouts are FETCH's (the client's per-request timeout).

    Bytes go to ``.<hex>.partial`` next to the final name, locked against a concurrent download of the same
    blob. An interrupted download keeps that file and the next attempt (in this call after a backoff, or in a
    later run) resumes it with Range; a 200 answer or a wrong Content-Range restarts from zero. On a digest or
    size mismatch the partial file is deleted and DigestMismatchError / SizeMismatchError raised; the final
    name never holds unverified bytes. MODE (permission bits) is applied before the rename. STATS (a dict)
    counts bytes_downloaded, blobs_downloaded, retries and resumed. PROGRESS(done, total) is called per chunk.
    """
    _algorithm, encoded = split_digest(digest)
    what = what or f"blob {digest}"
    retry = retry or RetryPolicy()
    stats = stats if stats is not None else {}
    final = safe_destination(dest_dir, name)
    partial = _Partial(os.path.join(os.path.dirname(final), f".{encoded}.partial"), digest, int(size))
    try:
        failures = 0
        while True:
            if partial.offset < partial.size:
                try:
                    response = fetch(partial.offset)
                    try:
                        _receive(partial, response, what, stats, progress)
                    finally:
                        response.close()
                except _RestartFromZero:
                    partial.reset()
                    continue
                except TransferError as exc:
                    failures += 1
                    if not exc.transient or failures > retry.retries:
                        if exc.transient:
                            exc.message = (
                                f"{exc.message}; gave up after {failures} attempts. The {partial.offset} bytes received "
                                f"are kept in {partial.path} and the next attempt resumes from there"
                            )
                        raise
                    stats["retries"] = stats.get("retries", 0) + 1
                    retry.wait(failures, exc)
                    continue
            actual = format_digest(partial.hasher)
            if actual == digest:
                partial.commit(final, mode)
                stats["blobs_downloaded"] = stats.get("blobs_downloaded", 0) + 1
                return final
            if partial.kept:
                # Bytes kept from an earlier run may be stale or damaged: one clean download before giving up.
                partial.reset()
                continue
            raise DigestMismatchError(what, digest, actual)
    except (DigestMismatchError, SizeMismatchError):
        remove_quietly(partial.path)
        raise
    finally:
        if partial.fd is not None and partial.offset == 0:
            remove_quietly(partial.path)  # nothing worth resuming: leave no empty file behind
        partial.close()


def file_matches(path: str, digest: str, size: int | None = None) -> bool:
    """True when PATH is a regular file holding exactly blob DIGEST (and SIZE): nothing to transfer."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return False
        if size is not None and os.path.getsize(path) != int(size):
            return False
        return digest_file(path, split_digest(digest)[0])[0] == digest
    except OSError:
        return False


def _verified_copy(src, final, digest, size, mode, what):
    """Copy SRC to FINAL through a temp file while hashing; raise on size or digest mismatch."""
    fd, tmp = create_temp(os.path.dirname(final), prefix=f".{os.path.basename(final)}.copy-")
    try:
        hasher = new_hasher(digest)
        copied = 0
        with open(src, "rb") as handle:
            while True:
                chunk = handle.read(CHUNK_SIZE)
                if not chunk:
                    break
                hasher.update(chunk)
                copied += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        if size is not None and copied != int(size):
            raise SizeMismatchError(what, size, copied)
        if format_digest(hasher) != digest:
            raise DigestMismatchError(what, digest, format_digest(hasher))
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    commit_file(fd, tmp, final, mode)


def place_blob(src: str, dest_dir: str, name: str, digest: str, size: int | None = None, mode: int | None = None,
               link: bool = False, what: str | None = None) -> str:
    """Place the local file SRC holding blob DIGEST at DEST_DIR/NAME atomically; return the final path.

    With LINK, a hard link is made when SRC is on the same file system and MODE is None or already SRC's mode
    (the link shares SRC's inode, so SRC is trusted as verified). Otherwise SRC is copied through a temp file
    while hashing and the copy is verified before the rename.
    """
    what = what or f"blob {digest} from {src}"
    split_digest(digest)
    final = safe_destination(dest_dir, name)
    directory = os.path.dirname(final)
    if link:
        src_stat = os.stat(src)
        if os.path.lexists(final) and not os.path.islink(final) and os.path.samefile(src, final):
            return final
        if (mode is None or (src_stat.st_mode & 0o7777) == mode) and (size is None or src_stat.st_size == int(size)):
            tmp = os.path.join(directory, f".{os.path.basename(final)}.link-{os.urandom(6).hex()}")
            try:
                os.link(src, tmp)
            except OSError as exc:
                if not link_unsupported(exc):
                    raise
            else:
                try:
                    os.replace(tmp, final)
                finally:
                    remove_quietly(tmp)
                fsync_dir(directory)
                return final
    _verified_copy(src, final, digest, size, mode, what)
    return final


class BlobCache:
    """A content-addressed blob store on local disk: ``ROOT/blobs/<algorithm>/<hex>``.

    A digest that is present is never transferred again. Entries are copied to destinations (verified on the
    way), or hard-linked when the caller asks for it.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def path_for(self, digest: str) -> str:
        """Where DIGEST is (or would be) stored."""
        algorithm, encoded = split_digest(digest)
        return os.path.join(self.root, "blobs", algorithm, encoded)

    def has(self, digest: str, size: int | None = None, verify: bool = False) -> bool:
        """True when DIGEST is cached (with SIZE when given); VERIFY re-hashes it. A damaged entry is removed."""
        path = self.path_for(digest)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return False
        if size is not None and stat.st_size != int(size):
            remove_quietly(path)
            return False
        if verify and digest_file(path, digest.split(":", 1)[0])[0] != digest:
            remove_quietly(path)
            return False
        return True

    def _directory(self, digest):
        directory = os.path.dirname(self.path_for(digest))
        os.makedirs(directory, exist_ok=True)
        return directory

    def put_from(self, path: str, digest: str, size: int | None = None, verify: bool = False) -> str:
        """Add file PATH as DIGEST and return the cache path: a hard link to PATH (trusted as verified) when
        possible, else a verified copy; VERIFY always copies and verifies (for untrusted sources)."""
        if self.has(digest, size):
            return self.path_for(digest)
        name = os.path.basename(self.path_for(digest))
        return place_blob(path, self._directory(digest), name, digest, size, link=not verify)

    def download(self, fetch: Callable[[int], Any], digest: str, size: int, **kwargs: Any) -> str:
        """Download DIGEST into the cache with download_blob (same arguments) unless present; return its path."""
        if self.has(digest, size):
            return self.path_for(digest)
        return download_blob(fetch, self._directory(digest), os.path.basename(self.path_for(digest)), digest, size, **kwargs)

    def place(self, digest: str, dest_dir: str, name: str, size: int | None = None, mode: int | None = None,
              link: bool = False) -> str:
        """Place cached DIGEST at DEST_DIR/NAME (see place_blob): a verified copy, or with LINK a hard link.

        A hard link shares the cache entry's inode, so a pulled file edited in place would damage the cache;
        use it only for trees that are never written to (immutable release directories).
        """
        return place_blob(self.path_for(digest), dest_dir, name, digest, size, mode=mode, link=link)
