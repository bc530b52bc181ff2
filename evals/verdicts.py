"""The verdict benchmark: how well the conscience labels a labelled set, per framework and layout.

Each item is reviewed by ``conscience.review.Conscience`` exactly as the proxy reviews an
answer (same prompts, constraint and decision rule), once per framework and prompt layout.
Out come accuracy, unethical recall, false-unethical rate, the confusion matrix, injection
flips (attacks on the reviewer that escape an unethical verdict), seconds per verdict, the AUC
of P(unethical), and the agreement between layouts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conscience.errors import VerdictError
from conscience.labels import Layout
from conscience.review import Conscience
from evals.bounded import run_bounded
from evals.labelled import LabelledItem
from evals.verdict_metrics import ERROR, LABELS, PREDICTIONS, Row, agreement, run_metrics

__all__ = ["CHART_FILE", "REPORT_FILE", "ROWS_FILE", "format_table", "run_verdicts", "write_chart"]

REPORT_FILE = "report.json"
ROWS_FILE = "verdicts.jsonl"
CHART_FILE = "confusion.png"


async def _review(
    conscience: Conscience, item: LabelledItem, framework: str, layout: Layout
) -> Row:
    messages = [{"role": "user", "content": item.question}]
    started = time.perf_counter()
    try:
        judgement = await conscience.review(messages, item.answer, framework, layout=layout)
    except VerdictError:
        # The judge answered something that is no label: a failed review, counted as wrong.
        # Engine failures (unreachable, timeouts, 5xx) are not caught: they stop the run.
        predicted, p_unethical = ERROR, None
    else:
        predicted = judgement.verdict.value
        probs = judgement.label_probs
        p_unethical = probs.get("unethical") if probs else None
    seconds = time.perf_counter() - started
    return Row(item.id, item.label.value, predicted, item.attack, p_unethical, seconds)


def _progress(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="verdicts", unit="verdict", disable=None)


async def run_verdicts(
    conscience: Conscience,
    items: list[LabelledItem],
    frameworks: list[str],
    layouts: list[Layout],
    out_dir: Path,
    *,
    concurrency: int = 1,
    settings: dict[str, Any] | None = None,
    chart: bool = True,
) -> dict[str, Any]:
    """Review every item under every (framework, layout); write the rows, report and chart."""
    for name in frameworks:
        conscience.framework(name)  # an unknown framework fails before any review
    runs: dict[str, dict[str, Any]] = {}
    all_rows: dict[tuple[str, str], list[Row]] = {}
    with _progress(len(items) * len(frameworks) * len(layouts)) as bar:
        for framework in frameworks:
            for layout in layouts:
                started = time.perf_counter()
                rows = await run_bounded(
                    items,
                    lambda item, f=framework, la=layout: _review(conscience, item, f, la),
                    concurrency,
                    lambda _item, _row: bar.update(1),
                )
                wall = time.perf_counter() - started
                all_rows[(framework, layout.value)] = rows
                metrics = run_metrics(rows)
                metrics["wall_seconds"] = wall
                runs[f"{framework}/{layout.value}"] = {
                    "framework": framework,
                    "layout": layout.value,
                    **metrics,
                }
    agreements = {
        framework: agreement({la.value: all_rows[(framework, la.value)] for la in layouts})
        for framework in frameworks
    }
    labels = {label: sum(1 for i in items if i.label.value == label) for label in LABELS}
    report = {
        "benchmark": "verdicts",
        "settings": {**(settings or {}), "concurrency": concurrency},
        "items": len(items),
        "items_by_label": labels,
        "attacks": sum(1 for i in items if i.attack),
        "runs": runs,
        "layout_agreement": agreements,
    }
    _write(out_dir, report, all_rows, chart)
    return report


def _write(
    out_dir: Path, report: dict[str, Any], all_rows: dict[tuple[str, str], list[Row]], chart: bool
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ROWS_FILE).open("w", encoding="utf-8") as handle:
        for (framework, layout_name), rows in all_rows.items():
            for row in rows:
                line = {"framework": framework, "layout": layout_name, **asdict(row)}
                handle.write(json.dumps(line) + "\n")
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if chart:
        write_chart(report, out_dir / CHART_FILE)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one line per (framework, layout)."""
    header = (
        f"{'framework/layout':<24} {'acc':>5} {'bin':>5} {'u-rec':>6} {'f-unet':>7} "
        f"{'flips':>7} {'err':>4} {'auc':>5} {'s/verdict':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, run in report["runs"].items():
        flips = run["injection_flips"]
        lines.append(
            f"{name:<24} {_fmt(run['accuracy']):>5} {_fmt(run['binary_accuracy']):>5} "
            f"{_fmt(run['unethical_recall']):>6} {_fmt(run['false_unethical_rate']):>7} "
            f"{flips['flipped']:>3}/{flips['attacks']:<3} {run['errors']:>4} "
            f"{_fmt(run['auc_p_unethical']):>5} {_fmt(run['seconds_per_verdict']['mean'], 3):>9}"
        )
    for framework, pairs in report["layout_agreement"].items():
        for pair, share in pairs.items():
            lines.append(f"agreement {framework} ({pair}): {_fmt(share)}")
    counts = ", ".join(f"{k} {v}" for k, v in report["items_by_label"].items())
    lines.append(f"items: {report['items']} ({counts}; {report['attacks']} attacks)")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    """One confusion matrix (gold rows x predicted columns) per (framework, layout)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    runs = list(report["runs"].items())
    cols = min(3, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, (name, run) in zip(axes.flat, runs, strict=False):
        matrix = [[run["confusion"][g][p] for p in PREDICTIONS] for g in LABELS]
        ax.imshow(matrix, cmap="Blues")
        dark = max(max(line) for line in matrix) / 2  # white digits on dark cells
        for i, line in enumerate(matrix):
            for j, count in enumerate(line):
                color = "white" if count > dark else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=9, color=color)
        ax.set_xticks(range(len(PREDICTIONS)), PREDICTIONS, fontsize=7, rotation=30)
        ax.set_yticks(range(len(LABELS)), LABELS, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
        ax.set_title(f"{name}\nacc {_fmt(run['accuracy'])}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
