"""Prometheus metrics, one registry per app (no module-level globals mutated at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    verdicts: Counter
    actions: Counter
    errors: Counter
    review_seconds: Histogram
    upstream_seconds: Histogram
    cancelled: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "conscience_requests",
                "HTTP requests by route and status",
                ["route", "status"],
                registry=registry,
            ),
            verdicts=Counter(
                "conscience_verdicts",
                "Verdicts by label and framework",
                ["verdict", "framework"],
                registry=registry,
            ),
            actions=Counter(
                "conscience_actions",
                "What the proxy did with reviewed answers",
                ["action"],
                registry=registry,
            ),
            errors=Counter(
                "conscience_errors", "Failed requests by error code", ["code"], registry=registry
            ),
            review_seconds=Histogram(
                "conscience_review_seconds",
                "Review latency (verdict and rewrite)",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            upstream_seconds=Histogram(
                "conscience_upstream_seconds",
                "Upstream generation latency",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            cancelled=Counter(
                "conscience_cancelled",
                "Requests whose work was cancelled, by reason (disconnect, deadline)",
                ["reason"],
                registry=registry,
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
