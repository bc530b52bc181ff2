"""Load and faults, CI-sized: ``conscience.bench.soak`` for 20 s against an upstream that
answers 500, stalls past the proxy's timeout and resets connections (``python -m
conscience.bench.soak --duration 600`` is the full run). Each request gets exactly what its
injected fault calls for, nothing leaks, and every acknowledged judgement is in the store."""

from __future__ import annotations

import pytest

from conscience.bench.soak import EXPECTED, FAULT_RATES, run_soak

RSS_GROWTH_KIB = 32 * 1024  # stated bound for a 20 s run (measured: a few MiB)
FD_GROWTH = 8  # descriptors; a leak per request would be hundreds


@pytest.mark.slow
def test_soak_with_injected_faults() -> None:
    report = run_soak(20, concurrency=8, upstream_timeout=2.0)
    summary = report.summary()
    print(summary)  # the figures, for `pytest -s`

    assert report.requests > 500, summary
    for mark in FAULT_RATES:  # every kind of fault was injected
        assert report.by_mark[mark] > 0, (mark, summary)
    # Error rates equal the injected faults, request by request: no extra 5xx, none hidden.
    assert report.mismatches == 0, report.mismatch_examples
    expected = {"{} {}".format(*EXPECTED[mark]): 0 for mark in report.by_mark}
    for mark, count in report.by_mark.items():
        expected["{} {}".format(*EXPECTED[mark])] += count
    assert dict(report.outcomes) == expected

    assert report.lost == 0 and report.stored >= len(report.acknowledged), summary
    assert report.proxy_errors == 0, summary
    assert report.end["fds"] - report.start["fds"] <= FD_GROWTH, summary
    assert report.end["sockets"] <= report.start["sockets"] + FD_GROWTH, summary
    assert report.end["rss_kib"] - report.start["rss_kib"] <= RSS_GROWTH_KIB, summary
