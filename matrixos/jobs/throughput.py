"""Learned speed of each job kind on each accelerator type (the scheduler's "self-optimizing
with use"): an exponentially weighted average of observed seconds per unit of work."""

from __future__ import annotations

from collections.abc import Callable


class ThroughputModel:
    """Runtime factors per (job kind, accelerator type), learned from finished jobs.

    ``factor(kind, acc)`` is how long a job of ``kind`` takes on ``acc`` relative to the
    ``reference`` type (A100, 1.0): 0.5 means twice as fast. Before any observation of a
    (kind, type) pair the factor is ``prior(acc)`` (default 1.0; the simulator uses 312 / peak
    TFLOPS). Observations of a kind on any type calibrate that kind's reference speed, so one
    run on an A100 and one on an H100 give the H100 factor from data alone.

    Example::

        m = ThroughputModel()
        m.observe("train", "A100", 10.0)
        m.observe("train", "H100", 5.0)
        m.factor("train", "H100")  # -> 0.5
    """

    def __init__(
        self,
        alpha: float = 0.3,
        prior: Callable[[str | None], float] | None = None,
        reference: str = "A100",
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.prior = prior or (lambda _acc: 1.0)
        self.reference = reference
        self._seconds: dict[tuple[str, str | None], float] = {}
        self._count: dict[tuple[str, str | None], int] = {}

    def observe(self, kind: str, accelerator: str | None, seconds_per_unit: float) -> None:
        """Fold one finished run's seconds per unit of work into the (kind, type) average."""
        if not seconds_per_unit > 0:
            return
        key = (kind, accelerator)
        old = self._seconds.get(key)
        a = self.alpha
        self._seconds[key] = (
            seconds_per_unit if old is None else a * seconds_per_unit + (1 - a) * old
        )
        self._count[key] = self._count.get(key, 0) + 1

    def observations(self, kind: str, accelerator: str | None) -> int:
        """How many runs of ``kind`` on ``accelerator`` have been observed."""
        return self._count.get((kind, accelerator), 0)

    def factor(self, kind: str, accelerator: str | None) -> float:
        """Runtime multiplier of ``kind`` on ``accelerator`` against the A100-class reference."""
        own = self._seconds.get((kind, accelerator))
        if own is None:
            return self.prior(accelerator)
        ref = self._seconds.get((kind, self.reference))
        if ref is None:  # the reference type unseen: each seen type's seconds scaled by its prior
            refs = [s / self.prior(a) for (k, a), s in self._seconds.items() if k == kind]
            ref = sum(refs) / len(refs)
        return own / ref
