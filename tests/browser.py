# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render a local page in headless Chromium: the DOM it built and a screenshot, for tests of HTML reports."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where tests leave what a person may want to look at after a run (kept by CI with the rest of build/).
ARTIFACTS = os.environ.get("SCIOPS_TEST_ARTIFACTS", os.path.join(REPO, "build", "test-artifacts"))
# No background traffic: the test machines have no outside network, and Chromium would keep trying.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,800"]


def chromium():
    """The Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(page, screenshot, timeout=120):
    """Open PAGE (a local file) in headless Chromium; write a PNG to SCREENSHOT and return the rendered DOM."""
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed; run tools/install-system-deps.sh")
    url = "file://" + os.path.abspath(page)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        common = [binary, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=timeout, check=True)
        shot = subprocess.run([*common, f"--screenshot={os.path.abspath(screenshot)}", url], capture_output=True,
                              text=True, timeout=timeout, check=False)
    if shot.returncode != 0 or not os.path.exists(screenshot):
        raise RuntimeError(f"chromium took no screenshot: {shot.stderr[-2000:]}")
    return dom.stdout


def png_summary(path):
    """(width, height, number of distinct row fingerprints) of an 8-bit RGB(A) PNG, read with the standard library."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    offset, chunks, header = 8, [], None
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, colour = header[:4]
    if depth != 8 or colour not in (2, 6):
        raise ValueError(f"{path}: only 8-bit RGB or RGBA PNGs are read here (depth {depth}, colour type {colour})")
    raw = zlib.decompress(b"".join(chunks))
    stride = width * (3 if colour == 2 else 4) + 1
    # Filtered rows still differ when the pixels differ; a blank page has (almost) one kind of row.
    rows = {raw[y * stride:(y + 1) * stride] for y in range(height)}
    return width, height, len(rows)
