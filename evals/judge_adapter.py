"""The trained conscience (issue 14, item 3): a judge adapter learned on harm-judging's train.

The adapter (``trainer/judge_adapter.py``) reads the single review's own prompt — the one the
probe reads (``evals.probe.probe_prompt``: the framework, the fenced question and answer cut to
``--max-answer-chars``, the question to the judge) — rendered by the model's chat template up to
where the label begins, and is trained on the label only.

Train is cut by prompt into the part the adapter learns (``--held`` 1 in 5 prompts kept out)
and a held part it never sees; the threshold is chosen on the held part's scores by the probe's
rules (``--threshold-rule``). Dev is only measured, never chosen on::

    python -m conscience.evals.judge_adapter train --limit 400 --max-minutes 60 \\
        --out runs/judge-adapter                      # rerun with --resume to continue
    python -m conscience.evals.judge_adapter score --adapter runs/judge-adapter --part held \\
        --out runs/judge-adapter/held                 # and --part dev --limit 160 --out .../dev
    python -m conscience.evals.judge_adapter measure --held runs/judge-adapter/held \\
        --dev runs/judge-adapter/dev --threshold-rule fpr:0.2

Scoring appends a row per item as it goes (``scores.jsonl``) and a killed run resumes; with
``--base`` each row also has the base model's own ``p_u`` (every adapter off), the same
reading the adapter started from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from conscience.errors import ConfigError, ConscienceError
from conscience.evals.harm_judging import prompt_key
from conscience.evals.head import measure_scores
from conscience.evals.jsonl import AppendLog, read_records
from conscience.evals.labelled import LabelledItem, load_labelled
from conscience.evals.probe import choose_threshold, probe_prompt
from conscience.framework import load_frameworks
from conscience.labels import Verdict
from conscience.progress import Progress

__all__ = ["held_part", "main", "measure", "prompt_ids", "score", "train"]

log = logging.getLogger("conscience.evals.judge_adapter")

SCORES_FILE = "scores.jsonl"
RUN_FILE = "run.json"
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"


def held_part(
    items: list[LabelledItem], every: int
) -> tuple[list[LabelledItem], list[LabelledItem]]:
    """(learned, held): 1 prompt in ``every`` held out, the same for every answer to it."""
    if every < 2:
        raise ConfigError(f"--held must be at least 2 (one prompt in N), got {every}")

    def held(item: LabelledItem) -> bool:
        digest = hashlib.sha256(f"held:{prompt_key(item.question)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % every == 0

    return [i for i in items if not held(i)], [i for i in items if held(i)]


def prompt_ids(
    tokenizer: Any, item: LabelledItem, framework: Any, max_answer_chars: int
) -> list[int]:
    """The review prompt's token ids, up to where the judge's label begins."""
    messages = probe_prompt(item, framework, max_answer_chars)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def _model(spec: str) -> str:
    """A model name of the registry (its cached GGUF), else the path or HF directory given."""
    if Path(spec).exists():
        return spec
    from conscience.engine.weights import model_path

    return str(model_path(spec))


def _items(part: str, limit: int | None, every: int) -> list[LabelledItem]:
    split = "train" if part in ("learned", "held") else part
    items = load_labelled("harm-judging", split)
    if part in ("learned", "held"):
        learned, held = held_part(items, every)
        items = learned if part == "learned" else held
    return items[:limit] if limit is not None else items


def train(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.trainer.judge_adapter import Example, JudgeAdapterConfig, train_judge_adapter
    from conscience.trainer.model import load_tokenizer

    config = JudgeAdapterConfig(
        model=_model(args.model),
        out_dir=args.out,
        layers=args.layers,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lr=args.lr,
        accumulate=args.accumulate,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )
    tokenizer = load_tokenizer(config)  # type: ignore[arg-type]  # model and dense_cache only
    framework = load_frameworks(None)[args.framework]
    items = _items("learned", args.limit, args.held)
    examples = [
        Example(
            item.id,
            prompt_ids(tokenizer, item, framework, args.max_answer_chars),
            item.label is Verdict.UNETHICAL,
        )
        for item in items
    ]
    _write_run(Path(args.out), args)
    return train_judge_adapter(config, examples, tokenizer, resume=args.resume)


def _write_run(out: Path, args: argparse.Namespace) -> None:
    """What the adapter reads (``score`` reads the same prompt from it). A resumed run must
    read the prompts it started with: other settings would train one adapter on two kinds of
    prompt without saying so, so they are refused (the checkpoint checks the rest)."""
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "model": args.model,
        "framework": args.framework,
        "max_answer_chars": args.max_answer_chars,
        "held": args.held,
    }
    run_file = out / RUN_FILE
    if args.resume and run_file.is_file():
        earlier = json.loads(run_file.read_text(encoding="utf-8"))
        changed = {k: (earlier.get(k), v) for k, v in run.items() if earlier.get(k) != v}
        if changed:
            said = ", ".join(f"{k} {was!r} -> {now!r}" for k, (was, now) in changed.items())
            raise ConfigError(f"{out} was trained with other prompts ({said}): resume as begun")
    run_file.write_text(json.dumps(run) + "\n", encoding="utf-8")


def score(args: argparse.Namespace) -> Path:
    """Append ``p_u`` of each item of ``--part`` to ``--out/scores.jsonl`` (resumable)."""
    import torch
    from peft import PeftModel

    from conscience.trainer.config import TrainConfig
    from conscience.trainer.judge_adapter import label_token_ids, unethical_probability
    from conscience.trainer.model import load_base, load_tokenizer, resolve_device, resolve_dtype

    run_file = Path(args.adapter) / RUN_FILE
    if not run_file.is_file():
        raise ConfigError(f"{args.adapter} has no {RUN_FILE}: not a judge adapter's directory")
    run = json.loads(run_file.read_text(encoding="utf-8"))
    out = Path(args.out)
    done = {r["id"] for r in read_records(out / SCORES_FILE)}
    items = _items(args.part, args.limit, run["held"])
    todo = [i for i in items if i.id not in done]
    config = TrainConfig(model=_model(run["model"]), out_dir=str(out), progress=False)
    tokenizer = load_tokenizer(config)
    labels = label_token_ids(tokenizer)
    framework = load_frameworks(None)[run["framework"]]
    device = resolve_device(config)
    base = load_base(config, resolve_dtype(config, device))
    model = PeftModel.from_pretrained(base, args.adapter).to(device).eval()
    with (
        Progress(
            len(items), f"judge adapter {args.part}", done=len(items) - len(todo), unit="item"
        ) as bar,
        AppendLog(out / SCORES_FILE) as rows,
        torch.no_grad(),
    ):
        for item in todo:
            started = time.perf_counter()
            ids = prompt_ids(tokenizer, item, framework, run["max_answer_chars"])
            row: dict[str, Any] = {
                "id": item.id,
                "gold": int(item.label is Verdict.UNETHICAL),
                "group": prompt_key(item.question),
                "tokens": len(ids),
                "p_unethical": unethical_probability(model, ids, labels),
            }
            if args.base:
                with model.disable_adapter():
                    row["p_unethical_base"] = unethical_probability(model, ids, labels)
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            bar.update()
    return out


def _scores(run_dir: Path, key: str = "p_unethical") -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in read_records(Path(run_dir) / SCORES_FILE) if key in r]
    if not rows:
        raise ConfigError(f"{run_dir} has no scored items ({SCORES_FILE} with {key})")
    return np.array([r[key] for r in rows]), np.array([r["gold"] for r in rows])


def measure(held: Path, dev: Path, rule: str) -> dict[str, Any]:
    """The threshold chosen on ``held`` by ``rule``; AUC, F1, FPR, FNR on both at it (and the
    base's own reading, where the rows have it, at its own held-chosen threshold)."""
    result: dict[str, Any] = {"rule": rule}
    for key, name in (("p_unethical", "adapter"), ("p_unethical_base", "base")):
        try:
            held_scores, held_gold = _scores(held, key)
            dev_scores, dev_gold = _scores(dev, key)
        except ConfigError:
            if name == "adapter":
                raise
            continue
        threshold = choose_threshold(held_scores, held_gold, rule)
        result[name] = {
            "threshold": threshold,
            "held": measure_scores(held_scores, held_gold, threshold),
            "dev": measure_scores(dev_scores, dev_gold, threshold),
        }
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m conscience.evals.judge_adapter")
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train", help="train the judge adapter on harm-judging train")
    t.add_argument("--out", required=True)
    t.add_argument("--model", default=DEFAULT_MODEL, help="a packaged model's name, or a path")
    t.add_argument("--framework", default="three-laws")
    t.add_argument("--max-answer-chars", type=int, default=800)
    t.add_argument("--limit", type=int, help="at most this many items of the learned part")
    t.add_argument("--held", type=int, default=5, help="hold out 1 prompt in N (threshold part)")
    t.add_argument("--layers", type=int, default=4, help="LoRA on the top N decoder layers")
    t.add_argument("--lora-r", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--accumulate", type=int, default=16, help="items per optimizer step")
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    s = commands.add_parser("score", help="p(unethical) of the adapter on a part, resumable")
    s.add_argument("--adapter", required=True)
    # Never test: nothing is chosen there, and this adapter is not the shipped default.
    s.add_argument("--part", choices=("held", "learned", "dev"), required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int)
    s.add_argument("--base", action="store_true", help="also the base's own p (adapter off)")
    m = commands.add_parser("measure", help="threshold on held, figures on held and dev")
    m.add_argument("--held", required=True)
    m.add_argument("--dev", required=True)
    m.add_argument("--threshold-rule", default="fpr:0.2", help="best-f1, or fpr:CAP")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            report = train(args)
            print(json.dumps({k: report[k] for k in ("status", "items_learned", "steps")}))
        elif args.command == "score":
            print(score(args))
        else:
            print(
                json.dumps(measure(Path(args.held), Path(args.dev), args.threshold_rule), indent=2)
            )
    except ConscienceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
