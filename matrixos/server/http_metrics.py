"""The server's Prometheus metrics (``GET /metrics``): statements by state, their latency, and
HTTP requests by route and status. Each app has its own registry, so two servers in one
process (tests) do not share counters.

Example:
    >>> m = ServerMetrics(lambda: {"RUNNING": 1})
    >>> m.finished("SUCCEEDED", 0.02)
    >>> text = m.render().decode()
    >>> 'matrixos_statements{state="RUNNING"} 1.0' in text
    True
    >>> 'matrixos_statements_finished_total{state="SUCCEEDED"} 1.0' in text
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateGauge(Collector):
    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily(
            "matrixos_statements", "Statements the server holds, by state", labels=["state"]
        )
        for state, n in self._counts().items():
            g.add_metric([str(state)], n)
        yield g


class ServerMetrics:
    """Counters for one server. ``counts()`` gives the statements held now, by state."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateGauge(counts))
        self._finished = Counter(
            "matrixos_statements_finished",
            "Statements that ended, by final state",
            ["state"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "matrixos_statement_duration_seconds",
            "Time from a statement's start to its end",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            "matrixos_http_requests",
            "HTTP requests, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def finished(self, state: str, seconds: float | None) -> None:
        self._finished.labels(state).inc()
        if seconds is not None:
            self._latency.observe(seconds)

    def request(self, method: str, route: str, status: int) -> None:
        self._requests.labels(method, route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
