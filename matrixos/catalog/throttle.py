"""Repeated failed logins, throttled per account and client address.

After ``limit`` failures of one ``(account, address)`` pair within ``window`` seconds, that pair
is refused for ``lockout`` seconds without any secret being checked: guessing a password or a
token gets slow, while the account stays usable from every other address (a throttle keyed on
the account alone would let anyone lock its owner out). A success clears the pair's count.

``Accounts(catalog, throttle=LoginThrottle())`` applies it to ``authenticate_token`` and
``authenticate_password``; a server that checks SCRAM proofs itself calls ``check``,
``failed`` and ``succeeded`` around them.

Example:
    >>> t = LoginThrottle(limit=2, window=60, lockout=30, clock=lambda: 0.0)
    >>> t.failed("bob", "10.0.0.7"); t.failed("bob", "10.0.0.7")
    >>> t.retry_after("bob", "10.0.0.7"), t.retry_after("bob", "10.0.0.8")
    (30.0, 0.0)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from matrixos._lru import LRU
from matrixos.errors import AccessDenied


class LoginThrottle:
    """Counts failed logins per ``(account, client address)``. Thread-safe; in memory (each
    server process throttles what it sees)."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        lockout: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self.lockout = limit, window, lockout
        self._clock = clock
        self._lock = threading.Lock()
        # (account, address) → (failures in the window, the window's start, locked until)
        self._seen: LRU[tuple[str, str], tuple[int, float, float]] = LRU(100_000)

    def retry_after(self, account: str, client: str | None) -> float:
        """Seconds until the pair may try again (0: now)."""
        with self._lock:
            entry = self._seen.get((account, client or ""))
        return max(0.0, entry[2] - self._clock()) if entry else 0.0

    def check(self, account: str, client: str | None) -> None:
        """Raise ``AccessDenied`` (SQLSTATE 08004) while the pair is locked out."""
        wait = self.retry_after(account, client)
        if wait > 0:
            raise AccessDenied(
                "too many failed logins from this address",
                hint=f"retry in {math.ceil(wait)} s",
                sqlstate="08004",
            )

    def failed(self, account: str, client: str | None) -> None:
        """Count a failed login of the pair; the ``limit``-th in a window locks it out."""
        key, now = (account, client or ""), self._clock()
        with self._lock:
            count, start, until = self._seen.get(key) or (0, now, 0.0)
            if now - start > self.window:
                count, start = 0, now
            count += 1
            if count >= self.limit:
                count, start, until = 0, now, now + self.lockout
            self._seen.put(key, (count, start, until))

    def succeeded(self, account: str, client: str | None) -> None:
        """Forget the pair's failures."""
        with self._lock:
            self._seen.pop((account, client or ""))
