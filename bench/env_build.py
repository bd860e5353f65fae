# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""env_build of a large tree against mksquashfs run directly with the same options, side by side; then the
squashfs compressors (zstd, gzip, xz) by size and time.

    .venv/bin/python bench/env_build.py [--size-mib 500] [--rounds 3] [--compression-rounds 1]
        [--compressions zstd,gzip,xz] [--dir /var/tmp]

The tree is half text-like data (compressible, as source trees and scripts are) and half random bytes (as
compressed data files are), in files of 64 KiB to 8 MiB. The module runs as Ansible runs it (a Python process
with its arguments in a file), with force set so that every round builds; mksquashfs gets the very command line
the module uses (fixed times, root owners, no xattrs) on the same tree. Rounds alternate between the two, with
a warm page cache for both. Prints Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COLLECTIONS = os.path.join(REPO, "build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.sciops.fleet.plugins.module_utils._env.image import (  # noqa: E402  pylint: disable=wrong-import-position
    mksquashfs_argv,
)

WORDS = ("the", "node", "release", "image", "squashfs", "library", "environment", "mount", "digest", "batch",
         "rollout", "spack", "compiler", "view", "path", "hdf5", "mpi", "solver", "mesh", "kernel")


def make_tree(root, size_mib, seed=7):
    rng = random.Random(seed)
    total, target, index = 0, size_mib * 1024 * 1024, 0
    while total < target:
        size = min(rng.choice((64, 256, 1024, 4096, 8192)) * 1024, target - total)
        directory = os.path.join(root, f"d{index % 16:02d}")
        os.makedirs(directory, exist_ok=True)
        if index % 2:
            data = rng.randbytes(size)
        else:
            # Text-like: a page of random lines of words, repeated (compresses about as source code does).
            page = "".join(" ".join(rng.choice(WORDS) for _word in range(12)) + "\n" for _line in range(800)).encode()
            data = (page * (size // len(page) + 1))[:size]
        with open(os.path.join(directory, f"f{index:05d}.dat"), "wb") as handle:
            handle.write(data)
        total += size
        index += 1
    return index


def measured(argv, env=None):
    """Run ARGV; ``(wall seconds, CPU seconds of it and its children, stdout)``. CPU time is what a loaded
    machine does not distort: wall time also counts the time other work held the processors."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0 and not proc.stdout:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {proc.stderr}")
    return wall, cpu, proc.stdout


def run_module(args, tmp):
    path = os.path.join(tmp, "args.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    wall, cpu, out = measured([sys.executable, "-m", "ansible_collections.sciops.fleet.plugins.modules.env_build", path],
                              env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    result = json.loads(out)
    if result.get("failed"):
        raise SystemExit(f"env_build failed: {result['msg']}")
    return wall, cpu, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compression-rounds", type=int, default=1)
    parser.add_argument("--compressions", default="zstd,gzip,xz")
    parser.add_argument("--dir", default="/var/tmp")
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="env-bench-", dir=options.dir)
    try:
        stage = os.path.join(work, "stage")
        files = make_tree(stage, options.size_mib)
        recipe = os.path.join(work, "recipe.yaml")
        with open(recipe, "w", encoding="utf-8") as handle:
            json.dump({"name": "bench", "version": "1.0.0", "mount": "/opt/envs/bench", "backend": "tree",
                       "tree": {"source": "stage"}}, handle)
        print(f"tree: {options.size_mib} MiB in {files} files; nproc {os.cpu_count()}", file=sys.stderr)
        rows = {"mksquashfs directly": ([], []), "env_build": ([], [])}
        image_size = None
        direct = os.path.join(work, "direct.squashfs")
        argv = mksquashfs_argv(stage, direct, "zstd", None, 1024 * 1024, 0)
        for _attempt in range(options.rounds):
            wall, cpu, result = run_module({"recipe": recipe, "dest": os.path.join(work, "module.squashfs"), "force": True}, work)
            rows["env_build"][0].append(wall)
            rows["env_build"][1].append(cpu)
            image_size = result["size"]
            wall, cpu, _out = measured(argv)
            rows["mksquashfs directly"][0].append(wall)
            rows["mksquashfs directly"][1].append(cpu)
        sizes = {"mksquashfs directly": os.path.getsize(direct), "env_build": image_size}
        print(f"mksquashfs options: {' '.join(argv[3:])} (env_build adds meta/: env.json, manifest, provenance, recipe)\n")
        print("| build | wall s (median) | wall s (rounds) | CPU s (median) | CPU s (rounds) | image MiB |")
        print("|---|---:|---|---:|---|---:|")
        for name, (walls, cpus) in rows.items():
            print(f"| {name} | {statistics.median(walls):.2f} | {', '.join(f'{t:.2f}' for t in walls)} | "
                  f"{statistics.median(cpus):.2f} | {', '.join(f'{t:.2f}' for t in cpus)} | {sizes[name] / 1048576:.1f} |")
        (mw, mc), (dw, dc) = ((statistics.median(v[0]), statistics.median(v[1])) for v in
                              (rows["env_build"], rows["mksquashfs directly"]))
        best = min(rows["env_build"][0]) / min(rows["mksquashfs directly"][0])
        print(f"\noverhead ratio env_build / mksquashfs: wall {mw / dw:.3f} (best rounds {best:.3f}), CPU {mc / dc:.3f}\n")
        print("| compression | wall s | CPU s | image MiB | image / tree |")
        print("|---|---:|---:|---:|---:|")
        for compression in options.compressions.split(","):
            walls, cpus = [], []
            for _attempt in range(options.compression_rounds):
                wall, cpu, result = run_module({"recipe": recipe, "dest": os.path.join(work, f"{compression}.squashfs"),
                                                "compression": compression, "force": True}, work)
                walls.append(wall)
                cpus.append(cpu)
            size = result["size"]
            print(f"| {compression} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | {size / 1048576:.1f} | "
                  f"{size / (options.size_mib * 1048576):.3f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
