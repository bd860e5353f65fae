# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python3 tests/testbed ...`` (and ``python3 -m testbed ...`` from tests/) runs the command line."""

from __future__ import annotations

import os
import sys

if not __package__:
    # Run as a directory, Python puts this package's own directory first on the path; its parent is
    # where the package imports from.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from testbed.cli import main  # noqa: E402  pylint: disable=wrong-import-position

sys.exit(main())
