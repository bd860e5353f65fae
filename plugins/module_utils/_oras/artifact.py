# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Artifacts made of files: describe local files as layers, push them as one manifest, pull them back.

Used by oras_push, oras_attach (a referrer is an artifact with a subject) and oras_pull, and by the
rollout's artifact fetch. A manifest is built deterministically (no timestamps, canonical JSON), so the
same files give the same digest and a second push changes nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from ansible_collections.sciops.fleet.plugins.module_utils._oci.download import (
    FILE_MODE_ANNOTATION,
    BlobCache,
    file_matches,
    format_file_mode,
    name_parts,
    parse_file_mode,
    safe_destination,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.fs import atomic_write, fsync_dir
from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import NotFoundError, OciError
from ansible_collections.sciops.fleet.plugins.module_utils._common.hashing import digest_bytes, digest_file, digest_stream, tree_digest
from ansible_collections.sciops.fleet.plugins.module_utils._oci.store import (
    EMPTY_JSON,
    IMAGE_LAYER_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    OCI_EMPTY,
    OCI_MANIFEST,
    TITLE_ANNOTATION,
    Descriptor,
    OciStore,
    build_manifest,
    parse_manifest,
)
from ansible_collections.sciops.fleet.plugins.module_utils._common.archive import extract_tar

DEFAULT_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
# OCI image spec 1.1: a manifest with the empty config MUST carry an artifactType; this is what the ORAS CLI writes.
UNKNOWN_ARTIFACT_TYPE = "application/vnd.unknown.artifact.v1"
# The oras CLI pushes a directory as one gzip tar layer with these annotations and unpacks it on pull.
UNPACK_ANNOTATION = "io.deis.oras.content.unpack"
UNPACKED_DIGEST_ANNOTATION = "io.deis.oras.content.digest"
# In a pull's destination: what each unpacked directory was unpacked from, and its tree then.
UNPACKED_RECORD = ".sciops-unpacked.json"
# In a pull's destination: the untitled layers of a container image, by position (see plan_pull).
LAYERS_DIRECTORY = ".layers"


class LocalFile:
    """A file to push: where it is, the name it gets in the artifact, and its descriptor."""

    __slots__ = ("path", "descriptor")

    def __init__(self, path: str, descriptor: Descriptor) -> None:
        self.path = path
        self.descriptor = descriptor


def describe_file(path: str, name: str | None = None, media_type: str | None = None,
                  annotations: Mapping[str, str] | None = None, record_mode: bool = True) -> LocalFile:
    """A LocalFile for PATH: hashed, titled NAME (default: its base name), its permission bits recorded."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise OciError(f"cannot read file {path!r} to push: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise OciError(f"{path!r} is not a regular file; push files, or a directory with 'directory'")
    title = name or os.path.basename(path)
    # A name no pull would accept is refused here, before anything is sent.
    name_parts(title, "the artifact")
    digest, size = digest_file(path)
    notes = dict(annotations or {})
    notes[TITLE_ANNOTATION] = title
    if record_mode:
        notes[FILE_MODE_ANNOTATION] = format_file_mode(stat.S_IMODE(info.st_mode))
    return LocalFile(path, Descriptor(media_type or DEFAULT_LAYER_MEDIA_TYPE, digest, size, annotations=notes))


def describe_directory(directory: str, media_type: str | None = None, record_mode: bool = True) -> List[LocalFile]:
    """LocalFiles for every regular file below DIRECTORY, titled by relative path, in sorted order.

    Symbolic links and special files are refused rather than followed: what is pushed is what is listed.
    """
    if not os.path.isdir(directory):
        raise OciError(f"directory {directory!r} to push does not exist or is not a directory")
    files = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for entry in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, entry)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            if os.path.islink(path) or not os.path.isfile(path):
                raise OciError(f"{path!r} is a symbolic link or special file; only regular files can be pushed")
            files.append(describe_file(path, relative, media_type, record_mode=record_mode))
    if not files:
        raise OciError(f"directory {directory!r} holds no file to push")
    files.sort(key=lambda f: f.descriptor.title)
    return files


def check_unique_titles(files: Iterable[LocalFile]) -> None:
    """Refuse two files with the same name in one artifact: the second would overwrite the first on pull."""
    seen = {}
    for item in files:
        title = item.descriptor.title
        if title in seen:
            raise OciError(f"two files would be stored as {title!r}: {seen[title]!r} and {item.path!r}; give one a different 'name'")
        seen[title] = item.path


def empty_config() -> Descriptor:
    """The descriptor of the empty JSON config ORAS artifacts carry."""
    return Descriptor(OCI_EMPTY, digest_bytes(EMPTY_JSON), len(EMPTY_JSON))


def current_digest(store: OciStore, repo: str | None, ref: str) -> str | None:
    """The digest REF points to, or None when it does not exist."""
    try:
        return store.resolve(repo, ref).digest
    except NotFoundError:
        return None


def push_artifact(store: OciStore, repo: str | None, tags: Iterable[str], files: Sequence[LocalFile],
                  config_path: str | None = None, config_media_type: str | None = None,
                  artifact_type: str | None = None, annotations: Mapping[str, str] | None = None,
                  subject: Descriptor | None = None, check_mode: bool = False) -> Dict[str, Any]:
    """Push FILES (LocalFiles) as one manifest and point every tag in TAGS at it.

    Blobs already in the store are not sent again. Returns a dict: digest, size, media_type, changed,
    before (tag -> digest or None), uploaded (blob digests sent), and manifest (the bytes).
    With no TAGS the manifest is stored by digest only (a referrer).
    """
    check_unique_titles(files)
    if config_path:
        config_digest, config_size = digest_file(config_path)
        config = Descriptor(config_media_type, config_digest, config_size)
    else:
        config = empty_config()
        artifact_type = artifact_type or UNKNOWN_ARTIFACT_TYPE
    manifest = build_manifest([f.descriptor for f in files], config=config, subject=subject,
                              artifact_type=artifact_type, annotations=annotations)
    digest = digest_bytes(manifest)
    refs = list(tags) or [digest]
    before = {ref: current_digest(store, repo, ref) for ref in refs}
    changed = any(value != digest for value in before.values())
    uploaded = []
    if changed and not check_mode:
        blobs = [(f.path, f.descriptor) for f in files] + [(config_path or EMPTY_JSON, config)]
        for source, descriptor in blobs:
            if store.push_blob(repo, source, descriptor.digest, descriptor.size):
                uploaded.append(descriptor.digest)
        for ref in refs:
            if before[ref] != digest:
                store.put_manifest(repo, ref, manifest, OCI_MANIFEST)
    return {"digest": digest, "size": len(manifest), "media_type": OCI_MANIFEST, "changed": changed,
            "before": before, "uploaded": uploaded, "manifest": manifest}


def load_manifest(store: OciStore, repo: str | None, ref: str, what: str) -> Tuple[Dict[str, Any], str, str]:
    """``(manifest dict, digest, media_type)`` of REF; an index is refused with a message saying what to do."""
    data, digest, media_type = store.get_manifest(repo, ref)
    manifest = parse_manifest(data, what)
    if media_type in INDEX_MEDIA_TYPES or "manifests" in manifest:
        raise OciError(f"{what} is an index of several manifests ({digest}); name one of them by digest")
    return manifest, digest, media_type


def is_unpack_layer(descriptor: Descriptor) -> bool:
    """True for a directory layer as the oras CLI pushes it: a tar archive to unpack under its title."""
    return str(descriptor.annotations.get(UNPACK_ANNOTATION, "")).lower() == "true"


def _unpacked_record(dest):
    try:
        with open(os.path.join(dest, UNPACKED_RECORD), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _unpack_state(dest, name, path, descriptor):
    entry = _unpacked_record(dest).get(name)
    if not isinstance(entry, dict) or entry.get("digest") != descriptor.digest:
        return "fetch"
    if not os.path.isdir(path) or os.path.islink(path) or tree_digest(path) != entry.get("tree"):
        return "fetch"
    return "present"


def image_layer_name(number: int, descriptor: Descriptor, what: str) -> str:
    """The file name of untitled layer NUMBER of a container image in a pull's destination: a fixed name from its
    position, never one from the manifest. Layers that are not tar changesets (non-distributable, foreign or of
    another type) are refused."""
    media_type = descriptor.media_type
    if media_type not in IMAGE_LAYER_MEDIA_TYPES:
        foreign = "nondistributable" in str(media_type) or "foreign" in str(media_type)
        kind = "a non-distributable (foreign) layer" if foreign else "not an image layer"
        raise OciError(f"{what}, layer {number} ({descriptor.digest}) has media type {media_type!r}: {kind}, which "
                       f"this collection does not pull; rebuild the image with layers of the types {', '.join(IMAGE_LAYER_MEDIA_TYPES)}")
    return f"{LAYERS_DIRECTORY}/{number:04d}"


def plan_pull(manifest: Mapping[str, Any], dest: str, what: str, create: bool = True,
              unpack: bool = False, layers: bool = False) -> Tuple[List[Dict[str, Any]], List[str]]:
    """What pulling MANIFEST into DEST means, file by file.

    Returns ``(files, skipped)``: files is a list of dicts (name, path, descriptor, mode, state, unpack) where
    state is ``present`` (content and mode already right), ``mode`` (content right, mode to fix) or ``fetch``;
    skipped lists the digests of layers without a file name, which ORAS clients do not write either. With UNPACK,
    a directory layer of the oras CLI is a directory DEST/<title>. With LAYERS, an untitled layer is a layer of a
    container image, pulled to DEST/.layers/NNNN (its position; see image_layer_name), and its dict has the keys
    layer (the position) and media_type too.
    """
    files, skipped, seen = [], [], set()
    for number, layer in enumerate(manifest.get("layers") or []):
        descriptor = Descriptor.from_dict(layer, f"{what}, layer {number}")
        name = descriptor.title
        if not name and layers:
            name = image_layer_name(number, descriptor, what)
            if name in seen:
                raise OciError(f"{what} names the file {name!r} as a title; refusing to let one layer overwrite another")
            seen.add(name)
            path = safe_destination(dest, name, create=create)
            state = "present" if file_matches(path, descriptor.digest, descriptor.size) else "fetch"
            files.append({"name": name, "path": path, "descriptor": descriptor, "mode": None, "state": state, "unpack": None,
                          "layer": number, "media_type": descriptor.media_type})
            continue
        if not name:
            skipped.append(descriptor.digest)
            continue
        if name in seen:
            raise OciError(f"{what} names the file {name!r} twice; refusing to let one layer overwrite another")
        seen.add(name)
        if unpack and is_unpack_layer(descriptor):
            parts = name_parts(name, dest)
            # The archive is downloaded beside the directory, under a name checked like any file name.
            archive = safe_destination(dest, "/".join(parts[:-1] + [f".{parts[-1]}.oras-layer"]), create=create)
            path = os.path.join(os.path.dirname(archive), parts[-1])
            files.append({"name": name, "path": path, "descriptor": descriptor, "mode": None, "unpack": archive,
                          "state": _unpack_state(dest, name, path, descriptor)})
            continue
        path = safe_destination(dest, name, create=create)
        mode = parse_file_mode(descriptor.annotations.get(FILE_MODE_ANNOTATION), name)
        if not file_matches(path, descriptor.digest, descriptor.size):
            state = "fetch"
        elif mode is not None and stat.S_IMODE(os.stat(path).st_mode) != mode:
            state = "mode"
        else:
            state = "present"
        files.append({"name": name, "path": path, "descriptor": descriptor, "mode": mode, "state": state, "unpack": None})
    return files, skipped


def _check_tar_digest(archive, expected, where):
    """The oras CLI records the digest of the uncompressed tar; check it when it is there."""
    if not expected or not expected.startswith("sha256:"):
        return
    try:
        with gzip.open(archive, "rb") as handle:
            found = digest_stream(handle)[0]
    except (OSError, EOFError) as exc:
        raise OciError(f"{where} is not a gzip tar archive: {exc}") from None
    if found != expected:
        raise OciError(f"{where}: its uncompressed tar has digest {found}, not the {expected} "
                       f"its {UNPACKED_DIGEST_ANNOTATION} annotation records; push the directory again")


def unpack_layer(dest: str, item: Mapping[str, Any], archive: str, what: str) -> None:
    """Unpack the verified directory layer ARCHIVE of ITEM into DEST/<title>, replacing what was there only once the
    whole tree is extracted; record what it was unpacked from. Members are held to the data policy of extract_tar
    and must lie under the title, as the oras CLI writes them."""
    name, descriptor, final = item["name"], item["descriptor"], item["path"]
    where = f"{what}, directory layer {name!r} ({descriptor.digest})"
    parent = os.path.dirname(final)
    leaf = os.path.basename(final)
    staging = tempfile.mkdtemp(prefix=f".{leaf}.unpack-", dir=parent)
    old = None
    try:
        _check_tar_digest(archive, descriptor.annotations.get(UNPACKED_DIGEST_ANNOTATION), where)
        extract_tar(archive, staging, name=where, inside=f"the destination {dest}")
        # The archive names its members <title>/...: the tree is at staging/<title>, and nothing may lie beside it.
        level = staging
        for part in name_parts(name, dest):
            entries = os.listdir(level)
            if entries != [part]:
                stray = sorted(set(entries) - {part}) or ["nothing"]
                raise OciError(f"{where} holds {', '.join(stray)} where only the directory {name!r} may be; "
                               "push the directory with the oras CLI or with directory layers named after it")
            level = os.path.join(level, part)
        if os.path.islink(level) or not os.path.isdir(level):
            raise OciError(f"{where} holds no directory {name!r}")
        if os.path.lexists(final):
            old = tempfile.mkdtemp(prefix=f".{leaf}.old-", dir=parent)
            os.rename(final, os.path.join(old, leaf))
        os.rename(level, final)
        fsync_dir(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        os.unlink(archive)
    record = _unpacked_record(dest)
    record[name] = {"digest": descriptor.digest, "tree": tree_digest(final)}
    atomic_write(os.path.join(dest, UNPACKED_RECORD), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _pulled(item):
    """The entry of ITEM (from plan_pull) in pull_artifact's files."""
    entry = {"name": item["name"], "path": item["path"], "digest": item["descriptor"].digest,
             "size": item["descriptor"].size, "state": item["state"], "unpacked": bool(item["unpack"])}
    if "layer" in item:
        entry.update(layer=item["layer"], media_type=item["media_type"])
    return entry


def pull_artifact(store: OciStore, repo: str | None, ref: str, dest: str, what: str, cache: BlobCache | None = None,
                  expected_digest: str | None = None, check_mode: bool = False, link: bool = False,
                  unpack: bool = False, layers: bool = False) -> Dict[str, Any]:
    """Place every named file of the artifact REF in DEST, verified; fetch only what is missing or different.

    LINK hard-links files to the CACHE's entries where possible (for trees never written to, see fetch_blob_to).
    UNPACK unpacks the directory layers of the oras CLI into DEST/<title>/ (see unpack_layer). LAYERS pulls the
    untitled layers of a container image too, to DEST/.layers/NNNN (see plan_pull); their entries in files, in
    manifest order, also have layer (the position) and media_type.

    Returns a dict: digest, media_type, artifact_type, annotations, changed, files (name, path, digest,
    size, state), skipped.
    """
    manifest, digest, media_type = load_manifest(store, repo, ref, what)
    if expected_digest and digest != expected_digest:
        raise OciError(f"{what} resolves to {digest}, not to the expected {expected_digest}; "
                       "the tag has moved or the wrong reference was given")
    if not check_mode:
        os.makedirs(dest, exist_ok=True)
    files, skipped = plan_pull(manifest, dest, what, create=not check_mode, unpack=unpack, layers=layers)
    for item in files:
        if check_mode or item["state"] == "present":
            continue
        if item["unpack"]:
            archive = store.fetch_blob_to(repo, item["descriptor"], os.path.dirname(item["unpack"]),
                                          os.path.basename(item["unpack"]), cache=cache)
            unpack_layer(dest, item, archive, what)
        elif item["state"] == "mode":
            os.chmod(item["path"], item["mode"])
        else:
            store.fetch_blob_to(repo, item["descriptor"], dest, item["name"], mode=item["mode"], cache=cache, link=link)
    return {
        "digest": digest,
        "media_type": media_type,
        "artifact_type": manifest.get("artifactType") or (manifest.get("config") or {}).get("mediaType"),
        "annotations": manifest.get("annotations") or {},
        "changed": any(item["state"] != "present" for item in files),
        "files": [_pulled(item) for item in files],
        "skipped": skipped,
    }
