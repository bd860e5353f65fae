# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provide ansible-test's pip bootstrap script from a pip wheel on PyPI.

`ansible-test sanity --requirements` bootstraps pip in its virtual environments with a get-pip script
that it downloads from a host outside the package registries. It first looks for that script at
~/.ansible/test/cache/get_pip_<version>.py; this writes a stand-in there that installs the same pip
version from its wheel. Run it with the Python that has ansible-core installed.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import types

STANDIN = '''# Stand-in for get-pip.py, written by sciops.fleet tools/ansible_test_get_pip.py.
import sys
WHEEL = {wheel!r}
sys.path.insert(0, WHEEL)
from pip._internal.cli.main import main  # noqa: E402
ARGS = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", WHEEL] + ARGS))
'''


def pip_version() -> str:
    from ansible_test._internal.python_requirements import get_venv_packages  # pylint: disable=import-outside-toplevel
    version = "%d.%d" % sys.version_info[:2]
    return get_venv_packages(types.SimpleNamespace(version=version))["pip"]


def main() -> int:
    version = pip_version()
    cache = os.path.expanduser("~/.ansible/test/cache")
    os.makedirs(cache, exist_ok=True)
    target = os.path.join(cache, "get_pip_%s.py" % version.replace(".", "_"))
    wheels = glob.glob(os.path.join(cache, "pip-%s-*.whl" % version))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", cache, "pip==%s" % version], check=True)
        wheels = glob.glob(os.path.join(cache, "pip-%s-*.whl" % version))
    if not wheels:
        print("error: could not download the pip %s wheel" % version, file=sys.stderr)
        return 1
    content = STANDIN.format(wheel=wheels[0])
    if not os.path.exists(target) or open(target, encoding="utf-8").read() != content:
        with open(target + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(content)
        os.replace(target + ".tmp", target)
    print("ansible-test pip %s bootstrap: %s" % (version, target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
