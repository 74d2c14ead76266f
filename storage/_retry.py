"""The retry policy of commits that lost to a concurrent writer, shared by Delta and Lance."""

from __future__ import annotations

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from matrixos.errors import ConcurrentWriteError


def commit_retrying(
    retry_on: type[BaseException] | tuple[type[BaseException], ...], retries: int
) -> Retrying:
    """Attempts of a commit: the first and up to ``retries`` more after ``retry_on``, with
    full-jitter exponential backoff capped at 2 s (about 31 s at most over 20 retries)."""
    return Retrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_after_attempt(retries + 1),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        reraise=False,
    )


def gave_up(op: str, location: str, retries: int) -> ConcurrentWriteError:
    """The error of a commit that lost every attempt (raise it ``from`` the RetryError)."""
    return ConcurrentWriteError(
        f"{op} on {location} conflicted with concurrent writers "
        f"{retries + 1} times; nothing was written",
        hint="retry later, or raise MATRIXOS_COMMIT_RETRIES",
    )
