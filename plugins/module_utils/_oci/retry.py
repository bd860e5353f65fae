# Copyright (c) sciops.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# This module is private to sciops.fleet; its API may change without notice.
"""Retrying what the network breaks: the backoff policy every registry request and blob download follows, and
which low-level failures count as worth a retry."""

from __future__ import annotations

import http.client
import random
import socket
import time
from typing import Callable

from ansible_collections.sciops.fleet.plugins.module_utils._oci.errors import TransferError


class RetryPolicy:
    """Bounded retries with exponential backoff and jitter (so a fleet does not retry in lockstep)."""

    def __init__(self, retries: int = 3, backoff: float = 1.0, max_delay: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.max_delay = float(max_delay)
        self._sleep = sleep

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ATTEMPT (1-based); a server's Retry-After is honoured up to max_delay."""
        base = min(self.max_delay, self.backoff * (2 ** (attempt - 1)))
        delay = base * (0.5 + random.random() / 2)  # nosec - jitter, not cryptography
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.max_delay))
        return delay

    def wait(self, attempt: int, error: BaseException | None = None) -> None:
        """Sleep before retry number ATTEMPT."""
        self._sleep(self.delay(attempt, getattr(error, "retry_after", None)))


def network_error(exc: BaseException, what: str) -> TransferError:
    """A transient TransferError for a low-level network failure EXC while transferring WHAT."""
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        reason = "timed out waiting for the server"
    elif isinstance(exc, http.client.IncompleteRead):
        reason = f"connection closed after {len(exc.partial)} more bytes"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return TransferError(f"{what}: {reason}", transient=True)
