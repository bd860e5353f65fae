# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""rpm_build against rpmbuild run directly with an equivalent hand-written spec, side by side, and a payload
compression table.

The tree: real prebuilt binaries and shared libraries from this machine's /usr/bin, /usr/lib and /usr/libexec
(ELF files of 4 KiB to 64 MiB), copied again and again under new names until it holds SIZE MiB. Both builds package the whole
tree as one package with the same payload (zstd level 3, the module's default, a thread per CPU), no debuginfo, no stripping, and
the tree hard-linked into the build root.

    .venv/bin/python bench/rpm_build.py [--size-mib 500] [--rounds 2] [--table-mib 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, "build", "collections")

HAND_SPEC = """Name: bench
Version: 1.0
Release: 1
Summary: Prebuilt binaries
License: MIT
AutoReqProv: no

%description
Prebuilt binaries.

%install
cp -a -l {tree}/. %{{buildroot}}/

%files
%defattr(-,root,root,-)
/opt/bench
"""

HAND_DEFINES = ["--define", "debug_package %{nil}", "--define", "__os_install_post %{nil}",
                "--define", "_build_id_links none", "--define", "_buildhost bench",
                "--define", "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"]


def _is_elf(path):
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def make_tree(root, size_mib):
    """Copy ELF files from /usr into ROOT/opt/bench/NNN/ until SIZE_MIB MiB; return (files, bytes)."""
    sources = []
    for top in ("/usr/bin", "/usr/lib", "/usr/libexec"):
        for base, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(base, name)
                if (os.path.isfile(path) and not os.path.islink(path) and 4096 < os.path.getsize(path) < 64 * 2**20
                        and _is_elf(path)):
                    sources.append(path)
    sources.sort()
    target, total, count, round_no = size_mib * 1024 * 1024, 0, 0, 0
    while total < target:
        directory = os.path.join(root, "opt", "bench", f"{round_no:03d}")
        os.makedirs(directory)
        for path in sources:
            if total >= target:
                break
            dest = os.path.join(directory, f"{count:06d}-{re.sub(r'[^A-Za-z0-9._+-]', '_', os.path.basename(path))}")
            shutil.copyfile(path, dest)
            os.chmod(dest, 0o755)
            total += os.path.getsize(dest)
            count += 1
        round_no += 1
    return count, total


def run_rpm_build(tree, dest):
    args = {"tree": tree, "dest": dest,
            "spec": {"name": "bench", "version": "1.0", "summary": "Prebuilt binaries", "license": "MIT",
                     "prefix": "/opt/bench"}}
    path = os.path.join(dest + ".args.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.sciops.fleet.plugins.modules.rpm_build", path],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=COLLECTIONS), check=False)
    elapsed = time.monotonic() - started
    result = json.loads(proc.stdout)
    if result.get("failed"):
        raise SystemExit(f"rpm_build failed: {result['msg']}")
    return elapsed, result["packages"][0]["size"]


def run_rpmbuild(tree, work, payload):
    topdir = os.path.join(work, "top")
    os.makedirs(topdir, exist_ok=True)
    spec = os.path.join(work, "bench.spec")
    with open(spec, "w", encoding="utf-8") as handle:
        handle.write(HAND_SPEC.format(tree=tree))
    started = time.monotonic()
    subprocess.run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {topdir}", "--define", f"_binary_payload {payload}",
                    *HAND_DEFINES, spec], check=True, capture_output=True)
    elapsed = time.monotonic() - started
    rpm = os.path.join(topdir, "RPMS", "bench-1.0-1.x86_64.rpm")
    size = os.path.getsize(rpm)
    shutil.rmtree(topdir)
    return elapsed, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--table-mib", type=int, default=100, help="tree size for the compression table (0: no table)")
    options = parser.parse_args()
    if not os.path.isdir(COLLECTIONS):
        raise SystemExit("run `make collection-link` first")
    work = tempfile.mkdtemp(prefix="bench-rpm-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        tree = os.path.join(work, "tree")
        files, size = make_tree(tree, options.size_mib)
        print(f"tree: {files} ELF files from /usr, {size / 2**20:.0f} MiB; nproc {os.cpu_count()}")
        module_times, direct_times = [], []
        for round_no in range(options.rounds):
            dest = os.path.join(work, f"out-{round_no}")
            # Which one runs first alternates, so that neither always meets the other's after-effects.
            for which in (("module", "direct") if round_no % 2 == 0 else ("direct", "module")):
                if which == "module":
                    elapsed, rpm_size = run_rpm_build(tree, dest)
                    module_times.append(elapsed)
                    shutil.rmtree(dest)
                else:
                    direct, direct_size = run_rpmbuild(tree, os.path.join(work, f"direct-{round_no}"), "w3T0.zstdio")
                    direct_times.append(direct)
            print(f"round {round_no + 1}: rpm_build {elapsed:.1f} s ({rpm_size / 2**20:.0f} MiB), "
                  f"rpmbuild {direct:.1f} s ({direct_size / 2**20:.0f} MiB)")
        best_module, best_direct = min(module_times), min(direct_times)
        print(f"best: rpm_build {best_module:.1f} s, rpmbuild {best_direct:.1f} s, ratio {best_module / best_direct:.3f}")
        median_module, median_direct = statistics.median(module_times), statistics.median(direct_times)
        print(f"median: rpm_build {median_module:.1f} s, rpmbuild {median_direct:.1f} s, "
              f"ratio {median_module / median_direct:.3f}")
        if not options.table_mib:
            return

        small = os.path.join(work, "small")
        files, size = make_tree(small, options.table_mib)
        print(f"\ncompression table on a {size / 2**20:.0f} MiB tree ({files} files), rpmbuild directly:")
        print("| payload | size MiB | ratio | seconds |")
        print("|---|---|---|---|")
        for label, payload in (("none", "w.ufdio"), ("zstd 1", "w1T0.zstdio"), ("zstd 3 (default)", "w3T0.zstdio"), ("zstd 6", "w6T0.zstdio"),
                               ("zstd 12", "w12T0.zstdio"), ("zstd 19", "w19T0.zstdio"), ("xz 6", "w6T0.xzdio"),
                               ("gzip 6", "w6.gzdio"), ("gzip 9", "w9.gzdio")):
            elapsed, rpm_size = run_rpmbuild(small, os.path.join(work, "table"), payload)
            print(f"| {label} | {rpm_size / 2**20:.1f} | {rpm_size / size:.3f} | {elapsed:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
