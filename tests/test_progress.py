"""Progress off a terminal: log lines with done/total, rate and ETA, at most one per interval."""

from __future__ import annotations

import logging

from conscience.progress import Progress, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_it_logs_start_intervals_and_end(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="conscience.progress")
    with Progress(100, "verdicts", terminal=False, every_s=30, clock=clock) as progress:
        for _ in range(10):
            clock.now += 2  # 10 items in 20 s: under the interval, no line
            progress.update()
        clock.now += 10  # 30 s since the start line: one line
        progress.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "verdicts: 0/100 (0%)"
    assert lines[1] == "verdicts: 11/100 (11%), 0.37/s, ETA 4m03s"
    assert lines[-1].startswith("verdicts: 11/100 (11%)")
    assert len(lines) == 3


def test_a_resumed_run_counts_only_its_own_work_in_the_rate(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="conscience.progress")
    with Progress(100, "em", done=90, terminal=False, clock=clock) as progress:
        clock.now += 10
        progress.update(5)
    assert caplog.records[0].getMessage() == "em: 90/100 (90%)"
    assert caplog.records[-1].getMessage() == "em: 95/100 (95%), 0.50/s, ETA 10s"


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 42, 1117, 10920)] == ["0s", "42s", "18m37s", "3h02m"]


def test_figures_set_after_the_count_end_the_log_line(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="conscience.progress")
    with Progress(4, "dpo", terminal=False, clock=clock) as progress:
        clock.now += 8
        progress.update()
        progress.set_postfix(loss="0.6931", margin="0.012")
    assert caplog.records[-1].getMessage() == (
        "dpo: 1/4 (25%), 0.12/s, ETA 24s, loss 0.6931, margin 0.012"
    )


def test_slow_work_reads_in_seconds_per_item(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="conscience.progress")
    with Progress(6, "dpo", unit="step", terminal=False, clock=clock) as progress:
        clock.now += 412  # a training step of minutes: "0.00/s" would say nothing
        progress.update()
    assert caplog.records[-1].getMessage() == "dpo: 1/6 (17%), 412 s/step, ETA 34m20s"
