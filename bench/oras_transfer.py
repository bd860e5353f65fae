# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""oras_pull and oras_push against curl, on the same blob and the same real registry, side by side.

    .venv/bin/python bench/oras_transfer.py [--size-mib 512] [--rounds 3]

Baselines: ``curl -o`` of the blob URL (no digest check, no fsync) for the pull, and a monolithic
``curl -T`` upload with the digest already known for the push. The module runs as Ansible runs it (a
Python process with its arguments in a file), in a fresh destination without cache, so every round
transfers the whole blob. Peak memory is the module process's maximum resident set size (wait4).
Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import testbed  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = os.path.join(REPO, "build", "collections")


def run_measured(argv, env=None):
    """Run ARGV; return (seconds, peak RSS in MiB) of that process alone."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # pylint: disable=consider-using-with
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:4]} failed: {out[-2000:]!r} {err[-2000:]!r}")
    return elapsed, usage.ru_maxrss / 1024.0, out


def run_module(name, args, workdir):
    path = os.path.join(workdir, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    elapsed, rss, out = run_measured(
        [sys.executable, "-m", f"ansible_collections.sciops.fleet.plugins.modules.{name}", path], env)
    result = json.loads(out)
    if result.get("failed"):
        raise RuntimeError(result.get("msg"))
    return elapsed, rss, result


def curl_upload(registry, repo, path, digest):
    request = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = registry.url + location
    sep = "&" if "?" in location else "?"
    return run_measured(["curl", "-sSf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                         "-T", path, f"{location}{sep}digest={digest}"])


def delete_blob(registry, repo, digest):
    request = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/{digest}", method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=30):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sciops-bench-oras-")
    registry = testbed.Registry(os.path.join(work, "registry"))
    os.makedirs(registry.state_dir)
    try:
        registry.up(owner=os.getpid())
        src = os.path.join(work, "src")
        os.makedirs(src)
        blob = os.path.join(src, "image.sqfs")
        hasher = hashlib.sha256()
        with open(blob, "wb") as handle:
            for _mib in range(args.size_mib):
                chunk = os.urandom(1024 * 1024)
                hasher.update(chunk)
                handle.write(chunk)
        digest = "sha256:" + hasher.hexdigest()
        size = args.size_mib * 1024 * 1024
        rows = {"pull curl": [], "pull curl+openssl+sync": [], "pull oras_pull": [],
                "push curl": [], "push openssl+curl": [], "push oras_push": []}
        rss = {"oras_pull": [], "oras_push": []}
        for index in range(args.rounds):
            # push: each round into a fresh repository whose blob is deleted first, so bytes really move
            delete_blob(registry, "bench/curl", digest)
            elapsed, _rss, _out = curl_upload(registry, "bench/curl", blob, digest)
            rows["push curl"].append(elapsed)
            # The same work as the module: the digest is computed from the file first.
            delete_blob(registry, "bench/curl", digest)
            hashed, _rss, _out = run_measured(["openssl", "dgst", "-sha256", blob])
            elapsed, _rss, _out = curl_upload(registry, "bench/curl", blob, digest)
            rows["push openssl+curl"].append(hashed + elapsed)
            delete_blob(registry, "bench/module", digest)
            elapsed, peak, result = run_module("oras_push", {
                "target": f"{registry.host}/bench/module:r{index}", "files": [{"path": blob}], "plain_http": True}, work)
            assert result["transfer"]["bytes_uploaded"] >= size, result["transfer"]
            rows["push oras_push"].append(elapsed)
            rss["oras_push"].append(peak)
            # pull
            out = os.path.join(work, f"curl-{index}.bin")
            elapsed, _rss, _out = run_measured(["curl", "-sSf", "-o", out, f"{registry.url}/v2/bench/module/blobs/{digest}"])
            rows["pull curl"].append(elapsed)
            os.unlink(out)
            # The same guarantees as the module: the digest checked and the file on disk.
            elapsed, _rss, _out = run_measured(["sh", "-c", f"curl -sSf -o {out} {registry.url}/v2/bench/module/blobs/{digest}"
                                                f" && openssl dgst -sha256 {out} >/dev/null && sync {out}"])
            rows["pull curl+openssl+sync"].append(elapsed)
            os.unlink(out)
            dest = os.path.join(work, f"pull-{index}")
            elapsed, peak, result = run_module("oras_pull", {
                "reference": f"{registry.host}/bench/module:r{index}", "dest": dest, "plain_http": True}, work)
            assert result["transfer"]["bytes_downloaded"] == size, result["transfer"]
            rows["pull oras_pull"].append(elapsed)
            rss["oras_pull"].append(peak)
            shutil.rmtree(dest)
        mib = size / (1024 * 1024)
        print(f"blob: {args.size_mib} MiB of random bytes; {args.rounds} rounds, median shown\n")
        print("| transfer | tool | median s | MiB/s | peak RSS MiB | throughput ratio vs curl |")
        print("|---|---|---:|---:|---:|---:|")
        for kind, full in (("pull", "curl+openssl+sync"), ("push", "openssl+curl")):
            base = statistics.median(rows[f"{kind} curl"])
            module = f"oras_{kind}"
            for tool in ("curl", full, module):
                median = statistics.median(rows[f"{kind} {tool}"])
                peak = f"{max(rss[module]):.0f}" if tool == module else "–"
                print(f"| {kind} | {tool} | {median:.2f} | {mib / median:.0f} | {peak} | {base / median:.2f} |")
        print("\nall rounds (s): " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in vals)}" for k, vals in rows.items()))
    finally:
        registry.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
