"""The overview's figures, pure functions of the judgements in a time window: counts and rates,
review latency percentiles, the judge against human labels, and the stacked bar charts (SVG,
drawn here on the server: no script runs in the console)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from conscience.judgement import Judgement
from conscience.labels import Verdict
from conscience.server.console.markup import Html, el

__all__ = ["Agreement", "agreement", "bars_svg", "buckets", "percentile"]

# The charts' colours, one per verdict or action (the legend names them; colour is never alone).
COLOURS = {
    "ethical": "#2e7d32",
    "neutral": "#78909c",
    "unethical": "#c62828",
    "passed": "#2e7d32",
    "rewritten": "#ef6c00",
    "blocked": "#c62828",
    "flagged": "#8e24aa",
    "unreviewed": "#616161",
    "none": "#bdbdbd",
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between the closest ranks
    (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Agreement:
    """The judge's verdicts against human labels, unethical the positive class."""

    labelled: int
    agreement: float | None  # verdict == human label (all three labels)
    precision: float | None  # of the judge's unethical, the share humans call unethical
    false_positive_rate: float | None  # of what humans call not unethical, the share flagged


def agreement(rows: Sequence[Judgement]) -> Agreement:
    labelled = [r for r in rows if r.human_label is not None]
    if not labelled:
        return Agreement(0, None, None, None)
    agree = sum(r.verdict is r.human_label for r in labelled)
    flagged = [r for r in labelled if r.verdict is Verdict.UNETHICAL]
    true_positive = sum(r.human_label is Verdict.UNETHICAL for r in flagged)
    negatives = [r for r in labelled if r.human_label is not Verdict.UNETHICAL]
    false_positive = sum(r.verdict is Verdict.UNETHICAL for r in negatives)
    return Agreement(
        labelled=len(labelled),
        agreement=agree / len(labelled),
        precision=true_positive / len(flagged) if flagged else None,
        false_positive_rate=false_positive / len(negatives) if negatives else None,
    )


def buckets(
    rows: Sequence[Judgement], since: datetime, until: datetime, field: str, n: int = 24
) -> tuple[list[datetime], list[Counter[str]]]:
    """``n`` equal time buckets from ``since`` to ``until``; each counts ``field``'s values
    (``verdict`` or ``action``; a missing action counts as ``none``)."""
    width = (until - since) / n
    starts = [since + width * i for i in range(n)]
    counts: list[Counter[str]] = [Counter() for _ in range(n)]
    for row in rows:
        if not since <= row.created_at < until:
            continue
        index = min(int((row.created_at - since) / width), n - 1)
        value = getattr(row, field)
        counts[index][value.value if value is not None else "none"] += 1
    return starts, counts


def _tick(moment: datetime, span: timedelta) -> str:
    """A tick's label: the time of day within a day, the date (and hour) beyond."""
    if span <= timedelta(days=1):
        return moment.strftime("%H:%M")
    return moment.strftime("%m-%d %H:%M" if span <= timedelta(days=3) else "%m-%d")


def bars_svg(
    title: str, starts: list[datetime], counts: list[Counter[str]], keys: Sequence[str]
) -> Html:
    """Stacked bars, one per bucket, a segment per key, with a legend and an accessible title."""
    width, height, left, bottom, top = 720, 220, 40, 24, 10
    plot_h = height - bottom - top
    most = max((sum(c.values()) for c in counts), default=0) or 1
    bar_w = (width - left) / max(len(counts), 1)
    shapes: list[Html] = []
    for i, bucket in enumerate(counts):
        y = height - bottom
        for key in keys:
            value = bucket.get(key, 0)
            if not value:
                continue
            h = plot_h * value / most
            y -= h
            shapes.append(
                el(
                    "rect",
                    el("title", f"{key}: {value}"),
                    x=f"{left + i * bar_w + 1:.1f}",
                    y=f"{y:.1f}",
                    width=f"{max(bar_w - 2, 1):.1f}",
                    height=f"{h:.1f}",
                    fill=COLOURS.get(key, "#999999"),
                )
            )
    span = timedelta(0) if len(starts) < 2 else (starts[1] - starts[0]) * len(starts)
    for i in range(0, len(starts), max(len(starts) // 6, 1)):
        shapes.append(
            el(
                "text",
                _tick(starts[i], span),
                x=f"{left + i * bar_w:.1f}",
                y=str(height - 6),
                font_size="11",
                fill="#444444",
            )
        )
    shapes.append(el("text", str(most), x="2", y=str(top + 10), font_size="11", fill="#444444"))
    shapes.append(
        el(
            "line",
            x1=str(left),
            y1=str(height - bottom),
            x2=str(width),
            y2=str(height - bottom),
            stroke="#888888",
        )
    )
    legend = el(
        "ul",
        [
            el("li", el("span", class_=f"swatch swatch-{key}", aria_hidden="true"), key)
            for key in keys
        ],
        class_="legend",
    )
    svg = el(
        "svg",
        el("title", title),
        shapes,
        xmlns="http://www.w3.org/2000/svg",
        viewBox=f"0 0 {width} {height}",
        role="img",
        aria_label=title,
        class_="chart",
    )
    return el("figure", svg, el("figcaption", title), legend)
