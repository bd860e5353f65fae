# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sciops.fleet.rollout of one large artifact to a fleet, side by side with ansible.builtin.copy and curl.

    .venv/bin/python bench/rollout.py [--nodes 8] [--net 127.0.7] [--size-mib 256] [--rounds 3] [--forks 8]

One run boots a fleet (tests/testbed/: systemd-nspawn nodes with sshd at NET.N) and the real registry
(Debian docker-registry on 127.0.0.1), pushes one artifact of SIZE MiB of random bytes (one file, installed
by the release with ``install: files``), publishes a release naming it by digest, and then measures, in
every round and in an order that rotates from round to round:

* rollout    ``ansible-playbook playbooks/rollout.yml`` with ``rollout_batches: ["100%"]`` to every node,
             from clean nodes (state root, download cache and fact file removed first);
* no-op      the same rollout again right after it: nothing to change;
* ping       ``ansible all -m ansible.builtin.ping``, next to the no-op (its order alternates);
* (a) copy   ``ansible all -m ansible.builtin.copy`` of the same bytes from the controller to a fresh
             destination on every node;
* (b) curl   ``ansible all -m ansible.builtin.shell``: every node fetches the blob from the registry with
             curl into a new release directory and switches a symlink (``ln -sfn`` + ``mv -T``): no digest
             check, no fsync, no cache, no record;
* (b') ssh   the same shell command over one plain ``ssh`` per node, all in parallel, without Ansible
             (for information: the floor below (b)).

The node root has no curl: the host's curl (same Debian release) is copied with its libraries and loader
to /opt/bench-curl on every node before the rounds. An untimed ping and rollout warm up SSH, the nodes'
Python and the controller first.

Every Ansible run is a fresh process with --forks FORKS, its own SSH control-path directory (connections are
set up inside the timed run; the masters are closed after it, untimed) and the checkout's collection. The
rollout runs also write per-task timings (the junit callback of ansible-core, task names only), and after
each clean rollout the modification times of the files release_install writes on every node give the phases
inside the install. Before every clean rollout, copy and curl run, the nodes lose everything an earlier run
left (the rollout's state root, rollout_cache_dir, the fact file, the copy and curl destinations), and
before every timed run the host runs ``sync`` so that no variant pays for the write-back of another.
The registry's access log must show one blob GET per node for every rollout and curl run, none for a no-op.
Prints Markdown tables for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

import testbed  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = os.path.join(REPO, "build", "collections")
BIN = os.path.dirname(sys.executable)
PLAYBOOK = os.path.join(REPO, "playbooks", "rollout.yml")
APP = "benchapp"
VERSION = "1.0.0"
ARTIFACT = "data"
FILE_NAME = "blob.bin"
STATE_ROOT = "/var/lib/sciops-fleet"  # the rollout role's defaults
CACHE_DIR = "/var/cache/sciops-fleet"
FACTS_DIR = "/etc/ansible/facts.d"
COPY_DIR = "/srv/bench-copy"
CURL_DIR = "/srv/bench-curl"
CURL_BUNDLE = "/opt/bench-curl"
RUN_TIMEOUT = 1800
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
ADHOC_RE = re.compile(r"^(\S+) \| (CHANGED|SUCCESS)", re.M)
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class BenchError(Exception):
    """A run did not do what it was measured for."""


def _stop_on_sigterm(_signum, _frame):
    raise KeyboardInterrupt("SIGTERM")


def run_module(name, args, workdir):
    """Run a module of this collection on the controller, as oras_transfer.py does; return its result."""
    path = os.path.join(workdir, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    proc = subprocess.run([sys.executable, "-m", f"ansible_collections.sciops.fleet.plugins.modules.{name}", path],
                          capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=COLLECTIONS))
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise BenchError(f"{name} printed no JSON (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from None
    if result.get("failed"):
        raise BenchError(f"{name} failed: {result.get('msg')}")
    return result


def write_random(path, size_mib):
    """SIZE_MIB MiB of random (incompressible) bytes at PATH; return the blob digest."""
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        for _mib in range(size_mib):
            chunk = os.urandom(1024 * 1024)
            hasher.update(chunk)
            handle.write(chunk)
    return "sha256:" + hasher.hexdigest()


def curl_bundle(dest):
    """The host's curl and every library it loads (with the loader) in DEST: the node root has no curl."""
    os.makedirs(os.path.join(dest, "lib"))
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl is not installed on this host")
    shutil.copy2(os.path.realpath(curl), os.path.join(dest, "curl"))
    listing = subprocess.run(["ldd", curl], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            shutil.copy2(os.path.realpath(path), os.path.join(dest, "lib", os.path.basename(path)))
    loaders = [n for n in os.listdir(os.path.join(dest, "lib")) if n.startswith("ld-linux")]
    if len(loaders) != 1:
        raise BenchError(f"cannot find the dynamic loader of {curl} in: {listing}")
    with open(os.path.join(dest, "run-curl"), "w", encoding="utf-8") as handle:
        handle.write(f"#!/bin/sh\nexec {CURL_BUNDLE}/lib/{loaders[0]} --library-path {CURL_BUNDLE}/lib {CURL_BUNDLE}/curl \"$@\"\n")
    os.chmod(os.path.join(dest, "run-curl"), 0o755)


class Bench:
    """The fleet, the registry, the published release, and how each variant is run and checked."""

    def __init__(self, work, fleet, registry, forks):
        self.work = work
        self.fleet = fleet
        self.registry = registry
        self.forks = forks
        self.counter = 0
        self.size = 0
        self.blob = ""
        self.blob_digest = ""
        self.blob_url = ""
        self.release_ref = ""
        self.release_dir = ""

    # -- nodes --------------------------------------------------------------------------------

    def ssh_argv(self, name, command):
        return ["ssh", "-i", self.fleet.key_path, *testbed.SSH_OPTIONS, f"root@{self.fleet.address(name)}", command]

    def on_nodes(self, command, stdin=None):
        """Run COMMAND on every node in parallel; {node: stdout}; any failure raises."""
        def one(name):
            proc = subprocess.run(self.ssh_argv(name, command), input=stdin, capture_output=True, check=False, timeout=600)
            if proc.returncode != 0:
                raise BenchError(f"{name}: {command!r} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-1000:]}")
            return name, proc.stdout.decode(errors="replace")
        with concurrent.futures.ThreadPoolExecutor(len(self.fleet.names)) as pool:
            return dict(pool.map(one, self.fleet.names))

    def clear(self):
        """Remove from every node what any variant left: the next run starts from a clean node."""
        self.on_nodes(f"rm -rf {STATE_ROOT} {CACHE_DIR} {FACTS_DIR}/sciops_fleet_{APP}.fact {COPY_DIR} {CURL_DIR}"
                      f" && mkdir -p {COPY_DIR} {CURL_DIR}/releases")

    def sizes(self, path):
        found = self.on_nodes(f"stat -L -c %s {path}")
        return {name: int(out.strip()) for name, out in found.items()}

    def install_curl(self):
        bundle = os.path.join(self.work, "curl-bundle")
        curl_bundle(bundle)
        tarball = subprocess.run(["tar", "-C", bundle, "-cf", "-", "."], capture_output=True, check=True).stdout
        self.on_nodes(f"mkdir -p {CURL_BUNDLE} && tar -xf - -C {CURL_BUNDLE} && ln -sfn {CURL_BUNDLE}/run-curl /usr/local/bin/curl",
                      stdin=tarball)
        versions = self.on_nodes("curl --version | head -n 1")
        return versions[self.fleet.names[0]].strip()

    # -- the release --------------------------------------------------------------------------

    def publish(self, size_mib):
        src = os.path.join(self.work, "src")
        os.makedirs(src)
        self.blob = os.path.join(src, FILE_NAME)
        self.blob_digest = write_random(self.blob, size_mib)
        self.size = size_mib * 1024 * 1024
        pushed = run_module("oras_push", {"target": f"{self.registry.host}/bench/{ARTIFACT}:{VERSION}",
                                          "files": [{"path": self.blob}], "plain_http": True}, self.work)
        release = {"schema_version": 1, "application": APP, "version": VERSION, "protocol": "1",
                   "artifacts": [{"name": ARTIFACT, "reference": f"{self.registry.host}/bench/{ARTIFACT}@{pushed['digest']}",
                                  "install": "files"}],
                   "health": [{"command": f"test -s ${{current_dir}}/{ARTIFACT}/{FILE_NAME}", "timeout": 5}]}
        published = run_module("release_publish", {"release": release, "repository": f"{self.registry.host}/releases/{APP}",
                                                   "channels": ["stable"], "plain_http": True}, self.work)
        self.release_ref = published["reference"]
        self.release_dir = f"{VERSION}-{published['release_id'].split(':', 1)[1][:12]}"
        self.blob_url = f"{self.registry.url}/v2/bench/{ARTIFACT}/blobs/{self.blob_digest}"

    def blob_gets(self):
        """How many GETs of the blob the registry has answered so far."""
        return sum(1 for line in self.registry.access_log() if f'"GET /v2/bench/{ARTIFACT}/blobs/{self.blob_digest}' in line)

    # -- running Ansible ----------------------------------------------------------------------

    def _run_dir(self, label):
        self.counter += 1
        path = os.path.join(self.work, "runs", f"{self.counter:03d}-{label}")
        os.makedirs(os.path.join(path, "cp"))
        return path

    def ansible(self, label, argv, junit=False):
        """Run ansible(-playbook) ARGV; (seconds, stdout, run directory). The SSH masters are closed afterwards."""
        run_dir = self._run_dir(label)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_HOST_KEY_CHECKING="False",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(run_dir, "cp"), ANSIBLE_TIMEOUT="10", ANSIBLE_NOCOLOR="1",
                   PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        if junit:
            env.update(ANSIBLE_CALLBACKS_ENABLED="junit", JUNIT_OUTPUT_DIR=os.path.join(run_dir, "junit"),
                       JUNIT_HIDE_TASK_ARGUMENTS="true")
        os.sync()
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO, env=env, timeout=RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        with open(os.path.join(run_dir, "stdout.txt"), "w", encoding="utf-8") as handle:
            handle.write(proc.stdout + proc.stderr)
        for socket_path in os.listdir(os.path.join(run_dir, "cp")):
            subprocess.run(["ssh", "-o", f"ControlPath={os.path.join(run_dir, 'cp', socket_path)}", "-O", "exit", "bench"],
                           capture_output=True, check=False, timeout=30)
        if proc.returncode != 0:
            raise BenchError(f"{label} exited {proc.returncode}; see {run_dir}/stdout.txt:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        return elapsed, proc.stdout, run_dir

    def adhoc(self, label, module, args=""):
        argv = [os.path.join(BIN, "ansible"), "all", "-i", self.fleet.inventory_path, "-f", str(self.forks), "-o",
                "-m", module]
        if args:
            argv += ["-a", args]
        elapsed, out, _run_dir = self.ansible(label, argv)
        answered = dict(ADHOC_RE.findall(out))
        if sorted(answered) != sorted(self.fleet.names):
            raise BenchError(f"{label}: not every node answered: {answered}\n{out[-3000:]}")
        return elapsed, answered

    def rollout(self, label):
        extravars = {"rollout_release": self.release_ref, "rollout_plain_http": True, "rollout_batches": ["100%"]}
        argv = [os.path.join(BIN, "ansible-playbook"), "-i", self.fleet.inventory_path, "-f", str(self.forks),
                PLAYBOOK, "-e", json.dumps(extravars)]
        elapsed, out, run_dir = self.ansible(label, argv, junit=True)
        recap = {m[0]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP_RE.findall(out)}
        if any(name not in recap or recap[name][1:] != (0, 0) for name in self.fleet.names):
            raise BenchError(f"{label}: not every node went through: {recap}")
        return elapsed, recap, task_times(os.path.join(run_dir, "junit"))

    # -- the variants -------------------------------------------------------------------------

    def curl_command(self, index):
        release = f"{CURL_DIR}/releases/r{index}"
        return (f"set -e; mkdir -p {release}; curl -sSf -o {release}/{FILE_NAME} {self.blob_url};"
                f" ln -sfn releases/r{index} {CURL_DIR}/.current.tmp; mv -T {CURL_DIR}/.current.tmp {CURL_DIR}/current")

    def expect_gets(self, label, before, count):
        got = self.blob_gets() - before
        if got != count:
            raise BenchError(f"{label}: the registry served the blob {got} times, not {count}")

    def expect_files(self, label, path):
        wrong = {n: s for n, s in self.sizes(path).items() if s != self.size}
        if wrong:
            raise BenchError(f"{label}: {path} has the wrong size on {wrong}")

    def run_rollout(self, index):
        """Clean rollout; returns (seconds, task times, install phases per node)."""
        self.clear()
        before = self.blob_gets()
        elapsed, recap, tasks = self.rollout(f"rollout-{index}")
        self.expect_gets("rollout", before, len(self.fleet.names))
        if any(recap[name][0] == 0 for name in self.fleet.names):
            raise BenchError(f"rollout from clean nodes changed nothing on some node: {recap}")
        self.expect_files("rollout", f"{STATE_ROOT}/{APP}/current/{ARTIFACT}/{FILE_NAME}")
        return elapsed, tasks, self.install_phases()

    def run_noop(self, index):
        before = self.blob_gets()
        elapsed, recap, tasks = self.rollout(f"noop-{index}")
        self.expect_gets("no-op rollout", before, 0)
        if any(recap[name][0] != 0 for name in self.fleet.names):
            raise BenchError(f"the no-op rollout changed something: {recap}")
        return elapsed, tasks

    def run_ping(self, index):
        elapsed, _answered = self.adhoc(f"ping-{index}", "ansible.builtin.ping")
        return elapsed

    def run_copy(self, index):
        self.clear()
        elapsed, answered = self.adhoc(f"copy-{index}", "ansible.builtin.copy", f"src={self.blob} dest={COPY_DIR}/{FILE_NAME}")
        if set(answered.values()) != {"CHANGED"}:
            raise BenchError(f"copy into a fresh destination did not change every node: {answered}")
        self.expect_files("copy", f"{COPY_DIR}/{FILE_NAME}")
        return elapsed

    def run_curl(self, index):
        self.clear()
        before = self.blob_gets()
        elapsed, _answered = self.adhoc(f"curl-{index}", "ansible.builtin.shell", self.curl_command(index))
        self.expect_gets("curl", before, len(self.fleet.names))
        self.expect_files("curl", f"{CURL_DIR}/current/{FILE_NAME}")
        return elapsed

    def run_ssh(self, index):
        self.clear()
        before = self.blob_gets()
        os.sync()
        started = time.monotonic()
        procs = [subprocess.Popen(self.ssh_argv(name, self.curl_command(index)),  # pylint: disable=consider-using-with
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in self.fleet.names]
        outcomes = [(proc.wait(timeout=RUN_TIMEOUT), proc.communicate()) for proc in procs]
        elapsed = time.monotonic() - started
        failed = [(name, err[-500:]) for name, (code, (_out, err)) in zip(self.fleet.names, outcomes) if code != 0]
        if failed:
            raise BenchError(f"ssh + curl failed: {failed}")
        self.expect_gets("ssh + curl", before, len(self.fleet.names))
        self.expect_files("ssh + curl", f"{CURL_DIR}/current/{FILE_NAME}")
        return elapsed

    def install_phases(self):
        """Per node, from the modification times of what release_install wrote (seconds):

        download: the app's .lock (created when the install takes its lock) to the cache blob's last write;
        copy: to the last write of the release's file (the verified copy out of the cache);
        record: to .sciops-files.json (every file fsynced and hashed again, release.json written);
        finish: to the rename of the staging directory into releases/.
        """
        app = f"{STATE_ROOT}/{APP}"
        release = f"{app}/releases/{self.release_dir}"
        paths = [f"{app}/.lock", f"{CACHE_DIR}/blobs/sha256/{self.blob_digest.split(':', 1)[1]}",
                 f"{release}/{ARTIFACT}/{FILE_NAME}", f"{release}/.sciops-files.json", f"{app}/releases"]
        found = self.on_nodes("stat -c %.9Y " + " ".join(paths))
        phases = {}
        for name, out in found.items():
            lock, cached, placed, record, renamed = (float(v) for v in out.split())
            phases[name] = {"download": cached - lock, "copy": placed - cached, "record": record - placed,
                            "finish": renamed - record, "install": renamed - lock}
        return phases


def task_times(junit_dir):
    """{task name: wall seconds} of one playbook run: per task, the longest of its hosts (from the task's start)."""
    walls = {}
    for name in sorted(os.listdir(junit_dir)):
        for case in ET.parse(os.path.join(junit_dir, name)).getroot().iter("testcase"):
            task = case.get("name").split("] ", 1)[1].split(": ", 1)[1]
            task = DIGEST_RE.sub("sha256:…", task.replace("sciops.fleet.rollout : ", ""))
            walls[task] = max(walls.get(task, 0.0), float(case.get("time")))
    return walls


def median(values):
    return statistics.median(values) if values else float("nan")


def fmt(values):
    return ", ".join(f"{v:.2f}" for v in values)


def machine():
    with open("/proc/meminfo", encoding="utf-8") as handle:
        total_kib = int(handle.readline().split()[1])
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU ({model}), {total_kib / 1024 / 1024:.1f} GiB RAM"


def code_state():
    """The commit measured, and which parts of the collection had uncommitted changes."""
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "plugins", "roles", "playbooks"],
                           capture_output=True, text=True, check=False)
    paths = sorted({"/".join(line[3:].split("/")[:2]) for line in dirty.stdout.splitlines()})
    return head.stdout.strip() + (f" + uncommitted changes in {', '.join(paths)}" if paths else "")


def report_times(args, times, curl_version, loads):
    names = {"rollout": "sciops.fleet.rollout, clean nodes, one batch (100%)",
             "copy": "(a) ansible.builtin.copy from the controller, fresh destination",
             "curl": "(b) ansible.builtin.shell: curl from the registry + ln -sfn + mv -T",
             "ssh": f"(b') the same over plain ssh, {args.nodes} in parallel, no Ansible",
             "noop": "no-op rerun of the same rollout",
             "ping": "ansible -m ping"}
    print(f"\nmachine: {machine()}; {args.nodes} nodes at {args.net}.N; forks {args.forks}; "
          f"artifact {args.size_mib} MiB of random bytes; {args.rounds} rounds, median shown")
    print(f"code: {code_state()}; node curl: {curl_version}")
    print("1-minute load average of the machine at the start of each round and at the end: "
          f"{', '.join(f'{load:.1f}' for load in loads)}\n")
    print("| run | median s | MiB/s (all nodes) | all rounds (s) |")
    print("|---|---:|---:|---|")
    for key, label in names.items():
        rate = f"{args.size_mib * args.nodes / median(times[key]):.0f}" if key not in ("noop", "ping") else "–"
        print(f"| {label} | {median(times[key]):.2f} | {rate} | {fmt(times[key])} |")
    goals = [("rollout ÷ (a) copy", "rollout", "copy", 0.5), ("rollout ÷ (b) curl via Ansible", "rollout", "curl", 1.5),
             ("rollout ÷ (b') curl via ssh", "rollout", "ssh", None), ("no-op rerun ÷ ping", "noop", "ping", 2.0)]
    print("\n| ratio | of medians | per round | goal | met |")
    print("|---|---:|---|---|---|")
    for label, top, bottom, goal in goals:
        value = median(times[top]) / median(times[bottom])
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(times[top], times[bottom]))
        met = "–" if goal is None else ("yes" if value <= goal else "**no**")
        print(f"| {label} | {value:.2f} | {rounds} | {'≤ ' + str(goal) if goal else '(information)'} | {met} |")


def report_tasks(times, tasks):
    print("\nwall time per task of the rollout (slowest host, from the task's start; median of rounds)\n")
    print("| task | clean rollout s | no-op rerun s |")
    print("|---|---:|---:|")
    order = list(dict.fromkeys(task for kind in ("rollout", "noop") for run in tasks[kind] for task in run))
    for task in order:
        cells = [median([run.get(task, 0.0) for run in tasks[kind]]) for kind in ("rollout", "noop")]
        print(f"| {task} | {cells[0]:.2f} | {cells[1]:.2f} |")
    outside = [median([total - sum(run.values()) for total, run in zip(times[kind], tasks[kind])]) for kind in ("rollout", "noop")]
    print(f"| (outside tasks: ansible-playbook start-up, play set-up, between tasks) | {outside[0]:.2f} | {outside[1]:.2f} |")


def report_phases(phases):
    print("\ninside release_install on each node (from file modification times; median of rounds)\n")
    print("| phase | median node s | slowest node s |")
    print("|---|---:|---:|")
    for phase, what in (("download", "registry → cache, hashed, fsynced"), ("copy", "cache → release dir, hashed again, fsynced"),
                        ("record", "files record: fsync + hash a third time"), ("finish", "rename into releases/, fsync"),
                        ("install", "all of the above")):
        per_round = [[node[phase] for node in run.values()] for run in phases]
        print(f"| {phase}: {what} | {median([median(r) for r in per_round]):.2f} | {median([max(r) for r in per_round]):.2f} |")


def measure(bench, rounds):
    """Every variant once per round, the order rotating; (times, task times, install phases, load averages)."""
    times = {key: [] for key in ("rollout", "copy", "curl", "ssh", "noop", "ping")}
    tasks = {"rollout": [], "noop": []}
    phases = []
    units = ["rollout", "copy", "curl", "ssh"]
    loads = []
    for index in range(1, rounds + 1):
        loads.append(os.getloadavg()[0])
        shift = (index - 1) % len(units)
        order = units[shift:] + units[:shift]
        print(f"round {index}: {', '.join(order)}", file=sys.stderr, flush=True)
        for unit in order:
            if unit == "rollout":
                elapsed, task_walls, install = bench.run_rollout(index)
                times["rollout"].append(elapsed)
                tasks["rollout"].append(task_walls)
                phases.append(install)
                print(f"  rollout: {elapsed:.2f} s", file=sys.stderr, flush=True)
                pair = ("noop", "ping") if index % 2 else ("ping", "noop")
                for after in pair:
                    if after == "noop":
                        elapsed, task_walls = bench.run_noop(index)
                        tasks["noop"].append(task_walls)
                    else:
                        elapsed = bench.run_ping(index)
                    times[after].append(elapsed)
                    print(f"  {after}: {elapsed:.2f} s", file=sys.stderr, flush=True)
            else:
                times[unit].append(getattr(bench, f"run_{unit}")(index))
                print(f"  {unit}: {times[unit][-1]:.2f} s", file=sys.stderr, flush=True)
    loads.append(os.getloadavg()[0])
    return times, tasks, phases, loads


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--net", default="127.0.7", help="first three octets of the node addresses")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (run logs) after tear-down")
    args = parser.parse_args()
    if args.forks < args.nodes:
        parser.error("--forks must be at least --nodes: every node in one go, for every variant")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    work = tempfile.mkdtemp(prefix="sciops-bench-rollout-")
    registry = testbed.Registry(os.path.join(work, "registry"))
    fleet = testbed.Fleet(os.path.join(work, "fleet"), nodes=args.nodes, net=args.net)
    os.makedirs(registry.state_dir)
    failed = True
    try:
        registry.up(owner=os.getpid())
        fleet.up(owner=os.getpid())
        bench = Bench(work, fleet, registry, args.forks)
        bench.publish(args.size_mib)
        curl_version = bench.install_curl()
        # Untimed warm-up: SSH, Python on the nodes and the controller's imports are warm for every variant alike.
        bench.clear()
        bench.run_ping(0)
        bench.rollout("warm-up")
        times, tasks, phases, loads = measure(bench, args.rounds)
        bench.clear()
        report_times(args, times, curl_version, loads)
        report_tasks(times, tasks)
        report_phases(phases)
        failed = False
    finally:
        try:
            fleet.down()
        finally:
            registry.down()
            shutil.rmtree(os.path.join(work, "src"), ignore_errors=True)
            if args.keep or failed:
                print(f"run logs kept in {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
