# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The OCI registry: Debian's ``docker-registry`` (CNCF distribution) on a free loopback port.

Its storage is in a temporary directory, and it is optionally behind htpasswd (bcrypt) basic auth.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

from .common import TestbedError, _log, _read_json, _require, _terminate, _write_json_atomic, free_port
from .live import _register_live, _unregister_live


class Registry:
    """Debian's docker-registry on a free loopback port, storage in STATE_DIR, deletes enabled."""

    MARKER = "docker-registry"

    def __init__(self, state_dir: str, username: str | None = None, password: str | None = None) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.username = username
        self.password = password
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._record: str | None = None

    # public attributes -------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of a reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> str:
        """The registry's log, which holds one access-log line per request."""
        return os.path.join(self.state_dir, "registry.log")

    @property
    def storage_dir(self) -> str:
        return os.path.join(self.state_dir, "storage")

    def access_log(self) -> list[str]:
        """Access-log lines (``"GET /v2/... HTTP/1.1" 200 ...``) written so far."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return [line.rstrip("\n") for line in handle if '"' in line and "HTTP/1." in line]
        except FileNotFoundError:
            return []

    # lifecycle ---------------------------------------------------------------------------
    @classmethod
    def attach(cls, state_dir: str) -> Registry:
        """A handle on a registry started earlier (by another process) from its state file."""
        reg = cls(state_dir)
        state = _read_json(os.path.join(reg.state_dir, "registry.json"))
        reg.port = state.get("port")
        reg.pid = state.get("pid")
        reg.username = state.get("username")
        reg.password = state.get("password")
        reg._record = state.get("live_record")
        return reg

    def up(self, owner: int | None = None) -> Registry:
        _require("docker-registry")
        if self.username and not shutil.which("htpasswd"):
            _require("htpasswd")
        os.makedirs(self.storage_dir, exist_ok=True)
        self._record = _register_live("registry", self.state_dir, owner)
        last_error = ""
        for _attempt in range(3):
            self.port = free_port()
            try:
                self._start_process()
                _log(f"registry ready at {self.url} (pid {self.pid}, auth={'yes' if self.username else 'no'})")
                return self
            except TestbedError as exc:
                last_error = str(exc)
                self._stop_process()
        self.down()
        raise TestbedError(f"docker-registry did not start: {last_error}; see {self.log_path}")

    def stop(self) -> None:
        """Stop the registry process (a fault: clients see refused connections); storage is kept."""
        self._stop_process()
        self._save_state()

    def start(self) -> None:
        """Start the registry again on the same port with the same storage."""
        self._start_process()

    def _start_process(self) -> None:
        config = self._write_config()
        log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        try:
            self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ["docker-registry", "serve", config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        self._save_state()
        self._wait_ready()

    def down(self) -> None:
        self._stop_process()
        shutil.rmtree(self.storage_dir, ignore_errors=True)
        _unregister_live(self._record)
        self._record = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, "registry.json"))

    def _stop_process(self) -> None:
        if self.pid:
            _terminate(self.pid, self.MARKER, timeout=10)
        self.pid = None
        self._proc = None

    def _save_state(self) -> None:
        _write_json_atomic(os.path.join(self.state_dir, "registry.json"), {
            "port": self.port, "pid": self.pid, "username": self.username,
            "password": self.password, "live_record": self._record,
        })

    def _write_config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage_dir}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.username:
            htpasswd = os.path.join(self.state_dir, "htpasswd")
            result = subprocess.run(
                ["htpasswd", "-B", "-b", "-n", self.username, self.password or ""],
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise TestbedError(f"htpasswd failed: {result.stderr.strip()}")
            with open(htpasswd, "w", encoding="utf-8") as handle:
                handle.write(result.stdout.strip() + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: sciops-fleet-test", f"    path: {htpasswd}"]
        config = os.path.join(self.state_dir, "config.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return config

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise TestbedError(f"exited with status {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TestbedError(f"no answer on {self.url}/v2/ within {timeout:.0f}s")
