"""Failed logins, throttled: after ``max_failures`` failures within ``window_s`` seconds, a key
(a client address, an account or a token id) is refused for ``lockout_s`` seconds without its
credentials being checked — a password guesser gets nowhere, and a flood of bad tokens cannot
keep the server busy hashing them.

Example:
    >>> t = LoginThrottle(max_failures=2, window_s=60, lockout_s=30)
    >>> t.failed("10.0.0.7"); t.retry_after("10.0.0.7")
    0.0
    >>> t.failed("10.0.0.7"); t.retry_after("10.0.0.7") > 29
    True
    >>> t.retry_after("10.0.0.8")
    0.0
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginThrottle:
    """Counts failed logins per key. Thread-safe; memory bounded by ``max_keys``."""

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        lockout_s: float = 30.0,
        max_keys: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [self._locked_until.get(k, 0.0) - now for k in keys]
        return max([0.0, *waits])

    def failed(self, *keys: str) -> None:
        """A login with these keys failed."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > self.max_keys:
                self._forget(now)
            for key in keys:
                times = self._failures.setdefault(key, deque())
                times.append(now)
                while times and times[0] < now - self.window_s:
                    times.popleft()
                if len(times) >= self.max_failures:
                    self._locked_until[key] = now + self.lockout_s
                    times.clear()

    def succeeded(self, *keys: str) -> None:
        """A login with these keys succeeded: their failures are forgotten."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def _forget(self, now: float) -> None:
        """Drop keys with no recent failure and expired lockouts (lock held)."""
        for key in [k for k, t in self._failures.items() if not t or t[-1] < now - self.window_s]:
            del self._failures[key]
        for key in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[key]
