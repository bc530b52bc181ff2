"""The probe by depth: states every 4 layers, two poolings, fitted, measured.

``extract`` reads, for each item of a stratified pool of the split over every labelled source
(``data/all_sources_split.json``: train and dev only), the judge's hidden states on the probe's
own review prompt (``evals/probe.probe_prompt``: the framework's review, the answer cut at
``--max-answer-chars``, the chat template up to where the label would begin), with transformers
on the dense checkpoint of the GGUF (``trainer/dense.py``), and keeps per layer of ``LAYERS``:

    last:  the state of the prompt's last token (today's probe reads it at layer 28)
    mean:  the mean of the states of the answer's tokens (the span between ``<answer>`` and
           ``</answer>``, found through the tokenizer's character offsets)

Every state is the residual stream after block k *through the model's final norm*,
``norm(h_k)`` (transformers already norms the last one): what a GGUF cut to its first k blocks
returns (``engine/truncate.py``), so a read-out chosen here is one the serving engine can read.

The prefix every prompt shares (the framework's system message and demonstrations) is
prefilled once and its key/value cache reused: the states after it are the same as a full
prefill's (causal attention), in a fraction of the time.

States go to ``OUT/states/<sha of id>.npz`` (written whole, then renamed) and a line per item to
``OUT/index.jsonl`` (appended after the file): a killed extraction resumes where it stopped, and
a rerun skips what is there. ``fit`` fits the probe's own read-out (``evals/probe.fit_head``:
a standardised L2 logistic head, λ by prompt-grouped 5-fold CV log-loss on train) per
(layer, pooling), and the concatenation of the best two by train's out-of-fold AUC, and
measures each on dev: AUC, F1 at the best-F1 threshold of train's out-of-fold scores, TPR at
FPR 0.05 / 0.10 at the conformal threshold of those scores (``evals/shared/threshold.py``),
per source and overall, and the false-positive rate on benign_chat's dev items; and the curve
by training size for the best read-out and today's. It writes ``report.json`` and a plot::

    conscience eval depth-sweep extract --out DIR --train-per-source 30 --dev-per-source 12
    conscience eval depth-sweep fit --out DIR --plot docs/depth_sweep.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from conscience.errors import ConfigError
from conscience.evals.fitting.probe import (
    _FOLDS,
    _LAMBDAS,
    _fold,
    best_f1_threshold,
    fit_head,
    head_scores,
    probe_prompt,
    standardise,
)
from conscience.evals.shared.harm_judging import data_dir, prompt_key
from conscience.evals.shared.jsonl import AppendLog, read_records
from conscience.evals.shared.labelled import LabelledItem
from conscience.evals.shared.scoring import auc
from conscience.evals.shared.sources import ALL_SPLIT_FILE, EVALUATION_ONLY, load_sources
from conscience.evals.shared.threshold import conformal_threshold
from conscience.framework import load_frameworks
from conscience.labels import Verdict
from conscience.progress import Progress

__all__ = [
    "LAYERS",
    "POOLINGS",
    "SOURCES",
    "PoolItem",
    "answer_span",
    "extract_states",
    "fit_readout",
    "load_states",
    "sample_pool",
    "sweep",
]

log = logging.getLogger("conscience.evals.fitting.depth_sweep")

LAYERS = (4, 8, 12, 16, 20, 24, 28)
POOLINGS = ("last", "mean")
TODAY = (28, "last")  # the shipped probe's read-out
# source name -> the files of the shared data it is drawn from (benign_chat: all but the
# evaluation-only set, which is in test anyway)
SOURCES: dict[str, tuple[str, ...]] = {
    "beavertails": ("harm_judging/beavertails_response.jsonl",),
    "harmbench": ("harm_judging/harmbench_response.jsonl",),
    "saferlhf": ("harm_judging/saferlhf_response.jsonl",),
    "gptfuzz": ("harm_judging_more/gptfuzz_response.jsonl",),
    "saferlhf_mini": ("harm_judging_more/saferlhf_mini_response.jsonl",),
    "jailjudge": ("harm_judging_more/jailjudge_mini_response.jsonl",),
    "benign_chat": ("benign_chat/*",),
}
ORIGINAL = ("beavertails", "harmbench", "saferlhf")
SEED = "conscience-depth-sweep-1"
INDEX_FILE = "index.jsonl"
RUN_FILE = "run.json"
STATES_DIR = "states"


@dataclass(frozen=True)
class PoolItem:
    id: str
    source: str
    part: str  # train | dev
    prompt: str
    response: str
    harmful: bool

    def labelled(self) -> LabelledItem:
        """The item as ``evals/probe.probe_prompt`` takes it."""
        label = Verdict.UNETHICAL if self.harmful else Verdict.ETHICAL
        return LabelledItem(self.id, self.prompt, self.response, label, False, self.source, "")


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SEED}:{key}".encode()).hexdigest()


def _source_of(name: str) -> str | None:
    for source, files in SOURCES.items():
        for pattern in files:
            if name == pattern or (pattern.endswith("/*") and name.startswith(pattern[:-1])):
                return None if name in EVALUATION_ONLY else source
    return None


def sample_pool(
    per_part: Mapping[str, int],
    *,
    root: Path | None = None,
    split_file: Path = ALL_SPLIT_FILE,
    sources: Iterable[str] = SOURCES,
) -> list[PoolItem]:
    """A seeded sample of ``per_part[part]`` items per source and part (train, dev) of the split
    over every source, in an order that keeps any prefix of it stratified: round-robin over
    (part, source), each in its seeded order. An extraction stopped early holds a balanced
    pool."""
    parts_of = json.loads(split_file.read_text(encoding="utf-8"))["parts"]
    part = {i: p for p, ids in parts_of.items() if p in per_part for i in ids}
    wanted = set(sources)
    sets = load_sources(root or data_dir().parent)
    buckets: dict[tuple[str, str], list[PoolItem]] = defaultdict(list)
    for name, items in sets.items():
        source = _source_of(name)
        if source is None or source not in wanted:
            continue
        for item in items:
            if item.id in part:
                buckets[(part[item.id], source)].append(
                    PoolItem(
                        item.id, source, part[item.id], item.prompt, item.response, item.harmful
                    )
                )
    queues = []
    for (p, _), bucket in sorted(buckets.items()):
        bucket.sort(key=lambda it: _rank(it.id))
        queues.append(bucket[: per_part[p]])
    pool: list[PoolItem] = []
    for i in range(max((len(q) for q in queues), default=0)):
        pool.extend(q[i] for q in queues if i < len(q))
    return pool


# -- extraction ----------------------------------------------------------------------------------


def answer_span(text: str, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The tokens ``[first, end)`` of the reviewed answer in the rendered prompt ``text``: those
    whose characters overlap the last ``<answer>`` … ``</answer>`` block's inside."""
    opening = text.rfind("<answer>\n")
    closing = text.find("\n</answer>", opening)
    if opening < 0 or closing < 0:
        raise ConfigError("the review prompt holds no <answer> block")
    start, end = opening + len("<answer>\n"), closing
    tokens = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not tokens:
        raise ConfigError("the answer's span holds no token")
    return tokens[0], tokens[-1] + 1


def _identity(model_name: str, framework: str, max_answer_chars: int, dtype: str) -> dict:
    return {
        "model": model_name,
        "framework": framework,
        "max_answer_chars": max_answer_chars,
        "layers": list(LAYERS),
        "poolings": list(POOLINGS),
        "states": "norm(h_k): the residual stream after block k through the final norm",
        "dtype": dtype,
    }


def _state_file(out: Path, item_id: str) -> Path:
    return out / STATES_DIR / f"{hashlib.sha256(item_id.encode()).hexdigest()[:24]}.npz"


def _done(out: Path, identity: dict) -> set[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / STATES_DIR).mkdir(exist_ok=True)
    run = out / RUN_FILE
    if run.exists():
        earlier = json.loads(run.read_text(encoding="utf-8"))
        if earlier != identity:
            raise ConfigError(f"{out} holds states of {earlier}, not {identity}")
    else:
        run.write_text(json.dumps(identity, indent=1) + "\n", encoding="utf-8")
    return {r["id"] for r in read_records(out / INDEX_FILE) if _state_file(out, r["id"]).exists()}


class _Reader:
    """States of rendered prompts, with the shared prefix's key/value cache prefilled once."""

    def __init__(self, model: Any, tokenizer: Any, layers: Sequence[int]) -> None:
        self.model, self.tokenizer, self.layers = model, tokenizer, tuple(layers)
        blocks = model.config.num_hidden_layers
        if max(self.layers) > blocks:
            raise ConfigError(f"the model has {blocks} blocks, not {max(self.layers)}")
        self.blocks = blocks
        self.prefix: list[int] = []
        self.cache: Any = None

    def set_prefix(self, ids: list[int]) -> None:
        import torch
        from transformers import DynamicCache

        self.prefix = ids
        self.cache = DynamicCache()
        if ids:
            with torch.no_grad():
                self.model(torch.tensor([ids]), past_key_values=self.cache, use_cache=True)

    def read(self, ids: list[int], span: tuple[int, int]) -> dict[str, np.ndarray]:
        import torch

        n = len(self.prefix)
        reuse = n > 0 and len(ids) > n and ids[:n] == self.prefix and span[0] >= n
        with torch.no_grad():
            if reuse:
                out = self.model(
                    torch.tensor([ids[n:]]),
                    past_key_values=self.cache,
                    use_cache=True,
                    output_hidden_states=True,
                )
                self.cache.crop(n - self.cache.get_seq_length())  # back to the prefix
            else:
                n = 0
                out = self.model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
            norm = self.model.model.norm
            last, mean = [], []
            for k in self.layers:
                h = out.hidden_states[k][0]
                h = h if k == self.blocks else norm(h)
                last.append(h[-1].float().numpy())
                mean.append(h[span[0] - n : span[1] - n].float().mean(0).numpy())
        return {"last": np.stack(last), "mean": np.stack(mean)}


def _render(tokenizer: Any, item: PoolItem, framework: Any, max_answer_chars: int) -> str:
    messages = probe_prompt(item.labelled(), framework, max_answer_chars)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _common_prefix(tokenizer: Any, framework: Any, max_answer_chars: int) -> list[int]:
    """The tokens every review prompt starts with (two unlike prompts' common ones, less two
    for a merge at the boundary)."""
    probes = [
        PoolItem("a", "", "", "What time is it?", "Noon.", False),
        PoolItem("b", "", "", "Zebra stripes, why", "Camouflage, maybe.", False),
    ]
    rendered = [
        tokenizer(_render(tokenizer, p, framework, max_answer_chars), add_special_tokens=False)[
            "input_ids"
        ]
        for p in probes
    ]
    n = 0
    while n < min(map(len, rendered)) and rendered[0][n] == rendered[1][n]:
        n += 1
    return rendered[0][: max(0, n - 2)]


def extract_states(
    model: Any,
    tokenizer: Any,
    items: Sequence[PoolItem],
    out: Path,
    *,
    model_name: str,
    framework: str = "three-laws",
    max_answer_chars: int = 800,
    deadline: float | None = None,
    layers: Sequence[int] = LAYERS,
) -> int:
    """Append each item's states to ``out`` (module docstring); items already there are
    skipped. Stops, whole items only, once ``time.time()`` passes ``deadline``. The number of
    items extracted in this run."""
    chosen = load_frameworks()[framework]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    identity = _identity(model_name, framework, max_answer_chars, dtype)
    identity["layers"] = list(layers)
    done = _done(out, identity)
    todo = [item for item in items if item.id not in done]
    reader = _Reader(model, tokenizer, layers)
    reader.set_prefix(_common_prefix(tokenizer, chosen, max_answer_chars))
    made = 0
    with (
        Progress(len(items), "depth-sweep states", done=len(items) - len(todo), unit="item") as bar,
        AppendLog(out / INDEX_FILE) as index,
    ):
        for item in todo:
            if deadline is not None and time.time() > deadline:
                log.info("depth-sweep: deadline reached, %d items left", len(todo) - made)
                break
            started = time.perf_counter()
            text = _render(tokenizer, item, chosen, max_answer_chars)
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(encoded["input_ids"])
            span = answer_span(text, encoded["offset_mapping"])
            states = reader.read(ids, span)
            path = _state_file(out, item.id)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, last=states["last"], mean=states["mean"])
            os.replace(tmp, path)
            index.append(
                {
                    "id": item.id,
                    "source": item.source,
                    "part": item.part,
                    "harmful": item.harmful,
                    "group": prompt_key(item.prompt),
                    "tokens": len(ids),
                    "answer_tokens": span[1] - span[0],
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            made += 1
            bar.update()
    return made


def load_states(out: Path) -> tuple[list[dict], dict[tuple[int, str], np.ndarray]]:
    """The index records of ``out`` (those whose states are there, each id once) and the
    states by (layer, pooling): one row per record."""
    run = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    records, seen = [], set()
    for record in read_records(out / INDEX_FILE):
        if record["id"] not in seen and _state_file(out, record["id"]).exists():
            seen.add(record["id"])
            records.append(record)
    if not records:
        raise ConfigError(f"{out} holds no states")
    arrays: dict[str, list[np.ndarray]] = {p: [] for p in run["poolings"]}
    for record in records:
        with np.load(_state_file(out, record["id"])) as data:
            for p in arrays:
                arrays[p].append(data[p])
    states = {}
    for p, rows in arrays.items():
        stacked = np.stack(rows).astype(np.float64)  # (items, layers, hidden)
        for j, k in enumerate(run["layers"]):
            states[(k, p)] = stacked[:, j, :]
    return records, states


# -- fitting and measuring ---------------------------------------------------------------------


def _fit_projected(z: np.ndarray, gold: np.ndarray, l2: float) -> np.ndarray:
    """``fit_head(z, gold, l2)``, computed in the span of the rows: with an L2 penalty the
    weights lie in it (the representer theorem; the bias is the last column's, unpenalised),
    so fitting ``z V`` (V: the right singular vectors of the weight columns) and mapping back
    gives the same head with an n-by-n Newton step instead of d-by-d."""
    features = z[:, :-1]
    if features.shape[1] <= features.shape[0]:
        return fit_head(z, gold, l2=l2, steps=30)
    _, _, vt = np.linalg.svd(features, full_matrices=False)
    small = fit_head(np.column_stack([features @ vt.T, z[:, -1]]), gold, l2=l2, steps=30)
    return np.concatenate([vt.T @ small[:-1], small[-1:]])


def _fit(x: np.ndarray, gold: np.ndarray, l2: float) -> Callable[[np.ndarray], np.ndarray]:
    mean, sd = x.mean(0), x.std(0) + 1e-6
    head = _fit_projected(standardise(x, mean, sd), gold, l2)
    return lambda rows: head_scores(head, standardise(rows, mean, sd))


def _out_of_fold(x: np.ndarray, gold: np.ndarray, groups: Sequence[str], l2: float) -> np.ndarray:
    """``evals/probe.cross_validated``: the same folds by prompt group, the same head."""
    folds = np.array([_fold(g) for g in groups])
    scores = np.zeros(len(gold))
    for k in range(_FOLDS):
        held = folds == k
        if not held.any() or held.all():
            continue
        scores[held] = _fit(x[~held], gold[~held], l2)(x[held])
    return scores


def _log_loss(scores: np.ndarray, gold: np.ndarray) -> float:
    p = np.clip(scores, 1e-6, 1 - 1e-6)
    return float(-np.mean(gold * np.log(p) + (1 - gold) * np.log(1 - p)))


@dataclass
class Fitted:
    l2: float
    oof: np.ndarray
    score: Callable[[np.ndarray], np.ndarray]


def fit_readout(
    x: np.ndarray, gold: np.ndarray, groups: Sequence[str], lambdas: Sequence[float] = _LAMBDAS
) -> Fitted:
    """λ by out-of-fold log-loss on train (folds by prompt), its out-of-fold scores, and the
    head fitted on all of train at it (``evals/probe.fit_probe``'s recipe)."""
    losses = {l2: _log_loss(_out_of_fold(x, gold, groups, l2), gold) for l2 in lambdas}
    l2 = min(losses, key=losses.__getitem__)
    return Fitted(l2, _out_of_fold(x, gold, groups, l2), _fit(x, gold, l2))


def _auc(scores: np.ndarray, gold: np.ndarray) -> float | None:
    if gold.min() == gold.max():
        return None
    return auc(scores.tolist(), (gold == 1).tolist())


def _auc_se(value: float | None, positives: int, negatives: int) -> float | None:
    """Hanley and McNeil's (1982) standard error of an AUC on so many items of each class."""
    if value is None or not positives or not negatives:
        return None
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    var = (
        value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)
    ) / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def _rank_auc(scores: np.ndarray, gold: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = gold == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, gold: np.ndarray, rounds: int = 2000
) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same items, and its 95% interval over resamples of the items."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(rounds):
        rows = rng.integers(0, len(gold), len(gold))
        g = gold[rows]
        if g.min() == g.max():
            continue
        diffs.append(_rank_auc(a[rows], g) - _rank_auc(b[rows], g))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "difference": _rank_auc(a, gold) - _rank_auc(b, gold),
        "low": float(low),
        "high": float(high),
    }


def _rates(
    scores: np.ndarray, gold: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
    if threshold is None:
        return {"tpr": None, "fpr": None, "f1": None}
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (gold == 1)))
    fp = int(np.sum(flagged & (gold == 0)))
    pos, neg = int(np.sum(gold == 1)), int(np.sum(gold == 0))
    return {
        "tpr": tp / pos if pos else None,
        "fpr": fp / neg if neg else None,
        "f1": 2 * tp / (tp + fp + pos) if tp + fp + pos else None,
    }


def _conformal(negatives: np.ndarray, alpha: float) -> float | None:
    """The conformal threshold, or None where too few negatives cannot promise ``alpha``."""
    try:
        return conformal_threshold(negatives, alpha)
    except ConfigError:
        return None


def measure(
    fitted: Fitted,
    train_gold: np.ndarray,
    x_dev: np.ndarray,
    dev_gold: np.ndarray,
    dev_sources: Sequence[str],
) -> dict[str, Any]:
    """Dev figures of a read-out at thresholds chosen on train's out-of-fold scores: overall,
    over the original three sources, per source."""
    negatives = fitted.oof[train_gold == 0]
    thresholds: dict[str, float | None] = {
        "best_f1": best_f1_threshold(fitted.oof, train_gold),
        "fpr_0.05": _conformal(negatives, 0.05),
        "fpr_0.10": _conformal(negatives, 0.10),
    }
    scores = fitted.score(x_dev)
    sources = np.array(dev_sources)
    subsets = {
        "overall": np.ones(len(dev_gold), bool),
        "original_three": np.isin(sources, ORIGINAL),
    }
    subsets.update({s: sources == s for s in sorted(set(dev_sources))})
    figures: dict[str, Any] = {}
    for name, chosen in subsets.items():
        if not chosen.any():
            continue
        s, g = scores[chosen], dev_gold[chosen]
        at = {rule: _rates(s, g, t) for rule, t in thresholds.items()}
        figures[name] = {
            "items": int(chosen.sum()),
            "harmful": int(g.sum()),
            "auc": _auc(s, g),
            "auc_se": _auc_se(_auc(s, g), int(g.sum()), int((1 - g).sum())),
            "f1": at["best_f1"]["f1"],
            "fpr": at["best_f1"]["fpr"],
            "tpr_at_fpr_0.05": at["fpr_0.05"]["tpr"],
            "fpr_at_0.05": at["fpr_0.05"]["fpr"],
            "tpr_at_fpr_0.10": at["fpr_0.10"]["tpr"],
            "fpr_at_0.10": at["fpr_0.10"]["fpr"],
        }
    return {
        "l2": fitted.l2,
        "dev_scores": [round(float(v), 6) for v in scores],
        "train_oof_auc": _auc(fitted.oof, train_gold),
        "thresholds": thresholds,
        "dev": figures,
    }


def _subsample(groups: Sequence[str], size: int) -> np.ndarray:
    """The first ``size`` train rows in a seeded order of their prompt groups (whole groups,
    so the curve's subsets are nested)."""
    order = sorted(range(len(groups)), key=lambda i: (_rank(groups[i]), i))
    return np.array(sorted(order[:size]))


def sweep(
    records: Sequence[dict],
    states: Mapping[tuple[int, str], np.ndarray],
    *,
    curve_step: int = 100,
    lambdas: Sequence[float] = _LAMBDAS,
) -> dict[str, Any]:
    """The report of the module docstring from extracted states."""
    train = np.array([r["part"] == "train" for r in records])
    dev = np.array([r["part"] == "dev" for r in records])
    gold = np.array([1.0 if r["harmful"] else 0.0 for r in records])
    groups = [r["group"] for r in records]
    train_groups = [g for g, t in zip(groups, train, strict=True) if t]
    dev_sources = [r["source"] for r, d in zip(records, dev, strict=True) if d]
    if not train.any() or not dev.any():
        raise ConfigError("the states hold no train or no dev items")

    def run(x: np.ndarray, rows: np.ndarray | None = None) -> dict[str, Any]:
        xt, gt = x[train], gold[train]
        tg = train_groups
        if rows is not None:
            xt, gt, tg = xt[rows], gt[rows], [train_groups[i] for i in rows]
        fitted = fit_readout(xt, gt, tg, lambdas)
        return measure(fitted, gt, x[dev], gold[dev], dev_sources)

    readouts: dict[str, dict[str, Any]] = {}
    for (k, pooling), x in sorted(states.items()):
        started = time.perf_counter()
        readouts[f"{k}/{pooling}"] = {"layer": k, "pooling": pooling, **run(x)}
        log.info(
            "depth-sweep: layer %d %s: dev AUC %s (%.1f s)",
            k,
            pooling,
            readouts[f"{k}/{pooling}"]["dev"]["overall"]["auc"],
            time.perf_counter() - started,
        )
    by_oof = sorted(readouts, key=lambda n: -(readouts[n]["train_oof_auc"] or 0.0))
    first, second = by_oof[:2]
    pair = [(readouts[n]["layer"], readouts[n]["pooling"]) for n in (first, second)]
    concat = np.concatenate([states[p] for p in pair], axis=1)
    readouts[f"{first}+{second}"] = {"concat": [first, second], **run(concat)}
    best = first
    today = f"{TODAY[0]}/{TODAY[1]}"
    sizes = [*range(curve_step, int(train.sum()), curve_step), int(train.sum())]
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in dict.fromkeys([best, today]):
        if name not in readouts:
            continue
        x = states[(readouts[name]["layer"], readouts[name]["pooling"])]
        curves[name] = []
        for size in sizes:
            rows = _subsample(train_groups, size)
            if gold[train][rows].min() == gold[train][rows].max():
                continue
            figures = run(x, rows)
            curves[name].append(
                {
                    "train_items": size,
                    "dev_auc": figures["dev"]["overall"]["auc"],
                    "dev_auc_original_three": figures["dev"].get("original_three", {}).get("auc"),
                }
            )
    comparison = {}
    if today in readouts:
        dev_gold = gold[dev]
        for name in (best, f"{first}+{second}"):
            comparison[f"{name} - {today}"] = paired_bootstrap(
                np.array(readouts[name]["dev_scores"]),
                np.array(readouts[today]["dev_scores"]),
                dev_gold,
            )
    count: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "dev": 0})
    for r in records:
        count[r["source"]][r["part"]] += 1
    seconds = [r["seconds"] for r in records]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "pool": {s: dict(c) for s, c in sorted(count.items())},
        "train_items": int(train.sum()),
        "dev_items": int(dev.sum()),
        "seconds_per_item": {"mean": float(np.mean(seconds)), "median": float(np.median(seconds))},
        "best_by_train_oof_auc": best,
        "today": today,
        "dev_auc_differences": comparison,
        "readouts": readouts,
        "training_size": curves,
    }


def plot(report: Mapping[str, Any], path: Path) -> None:
    """AUC on dev by depth (both poolings, today's read-out marked) and by training size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    readouts = report["readouts"]
    for pooling, marker, colour in (("last", "o", "tab:blue"), ("mean", "s", "tab:green")):
        for subset, style in (("overall", "-"), ("original_three", ":")):
            rows = sorted(
                (r["layer"], r["dev"].get(subset, {}).get("auc"))
                for r in readouts.values()
                if r.get("pooling") == pooling
            )
            if rows and all(v is not None for _, v in rows):
                label = f"{pooling}" + (", all dev" if subset == "overall" else ", original 3")
                left.plot(
                    *zip(*rows, strict=True),
                    marker=marker,
                    color=colour,
                    linestyle=style,
                    label=label,
                )
    left.set(xlabel="layer (of 28)", ylabel="dev AUC", title="The probe by depth")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    for name, points in report["training_size"].items():
        xs = [p["train_items"] for p in points]
        right.plot(xs, [p["dev_auc"] for p in points], marker="o", label=name)
    right.set(xlabel="train items", ylabel="dev AUC", title="By training size")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    n_dev = report["dev_items"]
    fig.suptitle(f"dev: {n_dev} items; train: {report['train_items']} items", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The read-outs' dev figures as a Markdown table (AUC per source; F1, TPR at the conformal
    thresholds and benign FPR over all dev)."""
    harm = [s for s in SOURCES if s != "benign_chat" and s in report["pool"]]
    head = ["read-out", "AUC all", "AUC orig. 3", *harm, "F1", "TPR@.05", "TPR@.10"]
    head += ["benign FPR", "train OOF AUC"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["readouts"].items():
        d = r["dev"]
        overall = f"{_f(d['overall']['auc'])} ± {_f(d['overall']['auc_se'])}"
        row = [name, overall, _f((d.get("original_three") or {}).get("auc"))]
        row += [_f((d.get(s) or {}).get("auc")) for s in harm]
        row += [_f(d["overall"]["f1"]), _f(d["overall"]["tpr_at_fpr_0.05"])]
        row += [_f(d["overall"]["tpr_at_fpr_0.10"]), _f((d.get("benign_chat") or {}).get("fpr"))]
        row += [_f(r["train_oof_auc"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------


def _load_model(dtype: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conscience.engine.weights import model_path
    from conscience.settings import Settings
    from conscience.trainer.dense import dense_checkpoint

    settings = Settings()
    gguf = model_path(settings.judge_model or settings.model)
    folder = dense_checkpoint(gguf)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    return loaded, AutoTokenizer.from_pretrained(folder), gguf.name


def _cmd_extract(args: argparse.Namespace) -> int:
    pool = sample_pool({"train": args.train_per_source, "dev": args.dev_per_source})
    if args.limit is not None:
        pool = pool[: args.limit]
    model, tokenizer, name = _load_model(args.dtype)
    deadline = None
    if args.until:
        deadline = datetime.fromisoformat(args.until).replace(tzinfo=UTC).timestamp()
    made = extract_states(
        model,
        tokenizer,
        pool,
        Path(args.out),
        model_name=name,
        framework=args.framework,
        max_answer_chars=args.max_answer_chars,
        deadline=deadline,
    )
    print(f"extracted {made} items into {args.out} (pool of {len(pool)})")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    records, states = load_states(Path(args.out))
    report = sweep(records, states, curve_step=args.curve_step)
    path = Path(args.report or Path(args.out) / "report.json")
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, Path(args.plot))
    print(markdown_table(report))
    for pair, diff in report["dev_auc_differences"].items():
        print(
            f"dev AUC {pair}: {diff['difference']:+.3f} "
            f"(95% paired bootstrap {diff['low']:+.3f} to {diff['high']:+.3f})"
        )
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conscience eval depth-sweep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ex = commands.add_parser("extract", help="states every 4 layers of a stratified pool")
    ex.add_argument("--out", required=True)
    ex.add_argument("--train-per-source", type=int, default=30)
    ex.add_argument("--dev-per-source", type=int, default=12)
    ex.add_argument("--limit", type=int, help="the first N items of the pool (still stratified)")
    ex.add_argument("--framework", default="three-laws")
    ex.add_argument("--max-answer-chars", type=int, default=800)
    ex.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ex.add_argument("--until", help="stop after this UTC time (ISO, e.g. 2026-12-07T14:10)")
    ex.set_defaults(handler=_cmd_extract)
    fit = commands.add_parser("fit", help="fit per (layer, pooling) on train, measure on dev")
    fit.add_argument("--out", required=True, help="the extraction's directory")
    fit.add_argument("--report", help="where report.json goes (default: in --out)")
    fit.add_argument("--plot", help="a PNG of AUC by depth and by training size")
    fit.add_argument("--curve-step", type=int, default=100)
    fit.set_defaults(handler=_cmd_fit)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
