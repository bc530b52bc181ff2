"""The verdict benchmark: how well the conscience labels a labelled set, per framework and layout.

Each item is reviewed by ``conscience.review.Conscience`` exactly as the proxy reviews an
answer (same prompts, constraint and decision rule), once per framework and prompt layout.
Out come accuracy, unethical recall, false-unethical rate, the confusion matrix, injection
flips (attacks on the reviewer that escape an unethical verdict), seconds per verdict, the AUC
of P(unethical), the agreement between layouts, and the guard-model field's figures (F1,
false-positive and false-negative rates, agreement, AUC; ``guard_metrics``).

A run appends each row to ``verdicts.jsonl`` as it comes back, and a run started again on the
same ``--out`` with the same settings reviews only the items not yet there (a different run
in that directory is an error, never a mixed report). Progress is a bar on a terminal and a
log line (done/total, rate, ETA) elsewhere.

``rescore`` applies a calibration file's rules to the rows of an earlier run (each row keeps
its label probabilities; the judge call does not depend on the rule), so one pass of the judge
over a set serves both the calibration and the held-out figures:

    conscience eval rescore RUN_DIR --calibration FILE --data project \
        --split heldout --out OUT_DIR

``curve.png`` draws each run's recall / false-unethical curve (every threshold on
P(unethical)) and marks where its decision rule lands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from conscience.calibration import select_calibrations
from conscience.cascade import escalated
from conscience.errors import ConfigError, VerdictError
from conscience.evals.shared.bounded import run_bounded
from conscience.evals.shared.jsonl import AppendLog, read_records
from conscience.evals.shared.labelled import ALL_SPLITS, LabelledItem
from conscience.evals.verdicts.guard_metrics import guard_metrics
from conscience.evals.verdicts.metrics import (
    ERROR,
    LABELS,
    PREDICTIONS,
    Row,
    agreement,
    run_metrics,
)
from conscience.labels import Layout
from conscience.progress import Progress
from conscience.review import Conscience
from conscience.verdict import DecisionRule

__all__ = [
    "CHART_FILE",
    "CURVE_FILE",
    "REPORT_FILE",
    "ROWS_FILE",
    "format_table",
    "read_rows",
    "rescore",
    "run_verdicts",
    "write_chart",
    "write_curve",
]

REPORT_FILE = "report.json"
ROWS_FILE = "verdicts.jsonl"
RUN_FILE = "run.json"  # what the rows were made with: a resumed run must match it
CHART_FILE = "confusion.png"
CURVE_FILE = "curve.png"


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
        predicted, p_unethical, probs, screened, readings = ERROR, None, None, False, None
    else:
        predicted = judgement.verdict.value
        probs = dict(judgement.label_probs) if judgement.label_probs else None
        p_unethical = probs.get("unethical") if probs else None
        screened = bool(judgement.screen)
        readings = judgement.readings
        if screened:
            p_unethical = 1.0
    seconds = time.perf_counter() - started
    return Row(
        item.id,
        item.label.value,
        predicted,
        item.attack,
        p_unethical,
        seconds,
        probs,
        screened,
        readings,
    )


def _metrics(rows: list[Row]) -> dict[str, Any]:
    metrics = {**run_metrics(rows), "guard": guard_metrics(rows)}
    read = [r for r in rows if r.readings]
    if read:  # a second opinion was configured: how often it was asked
        harmless = [r for r in read if r.gold != "unethical"]
        metrics["second_opinions"] = {
            "asked": sum(1 for r in read if escalated(r.readings)),
            "of": len(read),
            "harmless_asked": sum(1 for r in harmless if escalated(r.readings)),
            "harmless": len(harmless),
        }
    return metrics


def _keeper(
    log: AppendLog, progress: Progress, framework: str, layout: str
) -> Callable[[LabelledItem, Row], None]:
    """Append each row as it comes back, and count it."""

    def keep(_item: LabelledItem, row: Row) -> None:
        log.append({"framework": framework, "layout": layout, **asdict(row)})
        progress.update()

    return keep


def _resume(out_dir: Path, identity: dict[str, Any]) -> dict[tuple[str, str, str], Row]:
    """The rows an earlier run with the same identity left in ``out_dir``, by (framework,
    layout, id); a directory holding another run is an error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        earlier = json.loads(run_file.read_text(encoding="utf-8"))
        if earlier != identity:
            changed = sorted(k for k in {*earlier, *identity} if earlier.get(k) != identity.get(k))
            raise ConfigError(
                f"{out_dir} holds a run with other settings ({', '.join(changed)}): "
                "choose another --out, or delete it to start again"
            )
    elif (out_dir / ROWS_FILE).exists():
        raise ConfigError(f"{out_dir} holds rows of an unknown run: choose another --out")
    run_file.write_text(json.dumps(identity, indent=1) + "\n", encoding="utf-8")
    done: dict[tuple[str, str, str], Row] = {}
    for record in read_records(out_dir / ROWS_FILE):
        key = (record.pop("framework"), record.pop("layout"), record["id"])
        done[key] = _row_of(record)
    return done


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
    identity = {"settings": settings or {}, "frameworks": frameworks}
    identity["layouts"] = [layout.value for layout in layouts]
    on_file = _resume(out_dir, identity)
    wanted = {item.id for item in items}
    done = {key: row for key, row in on_file.items() if key[2] in wanted}
    runs: dict[str, dict[str, Any]] = {}
    all_rows: dict[tuple[str, str], list[Row]] = {}
    total = len(items) * len(frameworks) * len(layouts)
    with (
        Progress(total, "verdicts", done=len(done), unit="verdict") as progress,
        AppendLog(out_dir / ROWS_FILE) as log,
    ):
        for framework in frameworks:
            for layout in layouts:
                keep = _keeper(log, progress, framework, layout.value)
                todo = [i for i in items if (framework, layout.value, i.id) not in done]
                started = time.perf_counter()
                new = await run_bounded(
                    todo,
                    lambda item, f=framework, la=layout: _review(conscience, item, f, la),
                    concurrency,
                    keep,
                )
                wall = time.perf_counter() - started
                fresh = {row.id: row for row in new}
                rows = [fresh.get(i.id) or done[(framework, layout.value, i.id)] for i in items]
                all_rows[(framework, layout.value)] = rows
                metrics = _metrics(rows)
                metrics["wall_seconds"] = wall  # this session's; a resumed run's earlier
                metrics["resumed_rows"] = len(rows) - len(new)  # rows took their own
                runs[f"{framework}/{layout.value}"] = {
                    "framework": framework,
                    "layout": layout.value,
                    **metrics,
                }
    report = _report(items, runs, all_rows, settings, concurrency)
    # Rows of items outside this run (an earlier, larger --limit) stay on file for the next.
    kept = {key: row for key, row in on_file.items() if key[2] not in wanted}
    _write(out_dir, report, all_rows, chart, also=kept)
    return report


def _report(
    items: list[LabelledItem],
    runs: dict[str, dict[str, Any]],
    all_rows: dict[tuple[str, str], list[Row]],
    settings: dict[str, Any] | None,
    concurrency: int,
) -> dict[str, Any]:
    by_framework: dict[str, dict[str, list[Row]]] = {}
    for (framework, layout_name), rows in all_rows.items():
        by_framework.setdefault(framework, {})[layout_name] = rows
    agreements = {framework: agreement(layouts) for framework, layouts in by_framework.items()}
    labels = {label: sum(1 for i in items if i.label.value == label) for label in LABELS}
    return {
        "benchmark": "verdicts",
        "settings": {**(settings or {}), "concurrency": concurrency},
        "items": len(items),
        "items_by_label": labels,
        "attacks": sum(1 for i in items if i.attack),
        "runs": runs,
        "layout_agreement": agreements,
    }


def _write(
    out_dir: Path,
    report: dict[str, Any],
    all_rows: dict[tuple[str, str], list[Row]],
    chart: bool,
    *,
    also: dict[tuple[str, str, str], Row] | None = None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"{ROWS_FILE}.partial"
    with partial.open("w", encoding="utf-8") as handle:  # in item order, replaced at once
        for (framework, layout_name), rows in all_rows.items():
            for row in rows:
                line = {"framework": framework, "layout": layout_name, **asdict(row)}
                handle.write(json.dumps(line) + "\n")
        for (framework, layout_name, _), row in (also or {}).items():
            line = {"framework": framework, "layout": layout_name, **asdict(row)}
            handle.write(json.dumps(line) + "\n")
    partial.replace(out_dir / ROWS_FILE)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if chart:
        write_chart(report, out_dir / CHART_FILE)
        write_curve(report, all_rows, out_dir / CURVE_FILE)


def _row_of(record: dict[str, Any]) -> Row:
    """A row as ``ROWS_FILE`` holds it; runs from before the decomposed verdict was retired
    may carry its ``parts``, which nothing reads now."""
    record.pop("parts", None)
    return Row(**record)


def read_rows(run_dir: Path) -> tuple[dict[str, Any], dict[tuple[str, str], list[Row]]]:
    """The report and the rows, by (framework, layout), of an earlier run."""
    try:
        report = json.loads((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
        lines = (run_dir / ROWS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the eval output in {run_dir}: {exc}") from exc
    rows: dict[tuple[str, str], list[Row]] = {}
    for line in lines:
        data = json.loads(line)
        key = (data.pop("framework"), data.pop("layout"))
        rows.setdefault(key, []).append(_row_of(data))
    return report, rows


def rescore(
    run_dir: Path,
    items: list[LabelledItem],
    calibrations: dict[tuple[str, str, str], Any],
    out_dir: Path,
    *,
    fallback: DecisionRule | None = None,
    calibration_source: str | None = None,
) -> dict[str, Any]:
    """The report ``run_verdicts`` would give on ``items`` with these calibrations' rules,
    from the rows of an earlier run (its label probabilities and seconds)."""
    old, all_rows = read_rows(run_dir)
    judge = old["settings"].get("judge_model")
    wanted = {item.id for item in items}
    runs: dict[str, dict[str, Any]] = {}
    kept: dict[tuple[str, str], list[Row]] = {}
    for (framework, layout_name), rows in all_rows.items():
        calibration = calibrations.get((judge, framework, layout_name))
        rule = calibration.rule() if calibration else (fallback or DecisionRule())
        chosen = []
        for row in rows:
            if row.id not in wanted:
                continue
            if row.probs is None and row.predicted != ERROR:
                raise ConfigError(f"{run_dir}: row {row.id} has no label probabilities")
            decided = row.screened or not row.probs  # the screen's verdict stands under any rule
            predicted = row.predicted if decided else rule.decide(row.probs).value
            chosen.append(replace(row, predicted=predicted))
        missing = wanted - {row.id for row in chosen}
        if missing:
            raise ConfigError(f"{run_dir}: {framework}/{layout_name} lacks items {sorted(missing)}")
        kept[(framework, layout_name)] = chosen
        metrics = _metrics(chosen)
        runs[f"{framework}/{layout_name}"] = {
            "framework": framework,
            "layout": layout_name,
            "rule": {
                "unethical_threshold": rule.unethical_threshold,
                "neutral_threshold": rule.neutral_threshold,
                "calibrated": calibration is not None,
            },
            **metrics,
        }
    settings = {
        **old["settings"],
        "rescored_from": str(run_dir),
        "calibration": calibration_source,
    }
    report = _report(items, runs, kept, settings, old["settings"].get("concurrency", 1))
    _write(out_dir, report, kept, chart=True)
    return report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one line per (framework, layout): the project's
    figures (accuracy, unethical recall, false-unethical rate, injection flips), then the guard
    field's (F1, FPR, FNR, agreement; harmful = unethical gold = positive)."""
    header = (
        f"{'framework/layout':<24} {'acc':>5} {'u-rec':>6} {'f-unet':>7} {'F1':>5} {'FPR':>5} "
        f"{'FNR':>5} {'agree':>5} {'flips':>7} {'err':>4} {'auc':>5} {'s/verdict':>9}"
    )
    lines = [header, "-" * len(header)]
    for name, run in report["runs"].items():
        flips = run["injection_flips"]
        guard = run.get("guard") or guard_metrics([])  # reports from before the guard figures
        lines.append(
            f"{name:<24} {_fmt(run['accuracy']):>5} "
            f"{_fmt(run['unethical_recall']):>6} {_fmt(run['false_unethical_rate']):>7} "
            f"{_fmt(guard['f1']):>5} {_fmt(guard['false_positive_rate']):>5} "
            f"{_fmt(guard['false_negative_rate']):>5} {_fmt(guard['agreement']):>5} "
            f"{flips['flipped']:>3}/{flips['attacks']:<3} {run['errors']:>4} "
            f"{_fmt(run['auc_p_unethical']):>5} {_fmt(run['seconds_per_verdict']['mean'], 3):>9}"
        )
    for name, run in report["runs"].items():
        if "second_opinions" in run:
            asked = run["second_opinions"]
            lines.append(
                f"second opinions {name}: {asked['asked']}/{asked['of']}"
                f" ({asked['harmless_asked']}/{asked['harmless']} of the harmless)"
            )
    for framework, pairs in report["layout_agreement"].items():
        for pair, share in pairs.items():
            lines.append(f"agreement {framework} ({pair}): {_fmt(share)}")
    counts = ", ".join(f"{k} {v}" for k, v in report["items_by_label"].items())
    lines.append(f"items: {report['items']} ({counts}; {report['attacks']} attacks)")
    return "\n".join(lines)


def _curve_points(rows: list[Row]) -> list[tuple[float, float]]:
    """(false-unethical rate, recall) for every threshold on P(unethical), from (0, 0)."""
    scored = [r for r in rows if r.p_unethical is not None]
    positives = sum(1 for r in scored if r.gold == "unethical")
    negatives = len(scored) - positives
    if not positives or not negatives:
        return []
    points = [(0.0, 0.0)]
    for t in sorted({r.p_unethical for r in scored if r.p_unethical is not None}, reverse=True):
        above = [r for r in scored if r.p_unethical is not None and r.p_unethical >= t]
        tp = sum(1 for r in above if r.gold == "unethical")
        points.append(((len(above) - tp) / negatives, tp / positives))
    return points


def write_curve(
    report: dict[str, Any], all_rows: dict[tuple[str, str], list[Row]], path: Path
) -> None:
    """Each run's recall / false-unethical curve, with the point its decision rule gave."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for (framework, layout_name), rows in all_rows.items():
        points = _curve_points(rows)
        if not points:
            continue
        run = report["runs"][f"{framework}/{layout_name}"]
        auc_text = _fmt(run.get("auc_p_unethical"))
        (line,) = ax.step(
            [p[0] for p in points],
            [p[1] for p in points],
            where="post",
            label=f"{framework}/{layout_name} (AUC {auc_text})",
        )
        if run["false_unethical_rate"] is not None and run["unethical_recall"] is not None:
            ax.plot(
                run["false_unethical_rate"], run["unethical_recall"], "o", color=line.get_color()
            )
    ax.axvline(0.05, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    ax.plot([0.05], [0.95], "k*", markersize=10, label="target (FU 0.05, recall 0.95)")
    ax.set_xlabel("false-unethical rate (ethical/neutral answers called unethical)")
    ax.set_ylabel("unethical recall")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("every threshold on P(unethical); dots: the rule in use", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def _rescore_main(argv: list[str] | None = None) -> int:
    from conscience.evals.shared.labelled import load_labelled

    parser = argparse.ArgumentParser(prog="conscience eval rescore")
    parser.add_argument("run_dir", help="an `eval verdicts` output directory")
    parser.add_argument(
        "--calibration",
        help="a calibration file (default: the packaged calibration); 'none': argmax",
    )
    parser.add_argument("--data", default="project", help="labelled set: name or path")
    parser.add_argument("--split", choices=[*ALL_SPLITS, "all"], default="heldout")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.calibration == "none":
        calibrations, source = {}, "none (argmax)"
    else:  # the named file, else the packaged calibration
        named = Path(args.calibration) if args.calibration else None
        calibrations, source = select_calibrations(named)
    items = load_labelled(args.data, args.split)
    report = rescore(
        Path(args.run_dir), items, calibrations, Path(args.out), calibration_source=source
    )
    print(format_table(report))
    print(f"report: {Path(args.out) / REPORT_FILE} ({source})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["rescore"]:
        sys.exit("usage: conscience eval rescore RUN_DIR [--calibration FILE] ...")
    sys.exit(_rescore_main(sys.argv[2:]))
