"""Our trainer against TRL's DPOTrainer (PEFT reference) on the same model and pairs.

Both train the same LoRA (r=16, alpha=32 on q/k/v/o, no dropout) with pure sigmoid DPO (β=0.1;
our SFT term off) at the same learning rate, batch and precision, on the same random pairs, with
the reference taken from the same weights with the adapter disabled. Each trainer runs in a
child process of its own, so its peak RSS is its own. Speed is the mean of the steady steps
(the first, warm-up step left out); ratios are ours / TRL (steps/s: higher is better; RSS:
lower is better).

    python -m conscience.bench.trainer_bench                         # SmolLM2-135M's shape
    python -m conscience.bench.trainer_bench --model path/model.gguf # a real model (HF/GGUF)
    python -m conscience.bench.trainer_bench --shape tiny --steps 3  # a smoke run in seconds
    python -m conscience.bench.trainer_bench --only trl ours ours-full   # chunked vs whole logits
    python -m conscience.bench.trainer_bench --logps --steps 6   # the log-probs alone, 3 ways

"x TRL" columns are against the first run listed when TRL is not among them.

Needs trl (and its datasets) beside the train extra.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LR = 5e-5
BETA = 0.1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child_trl(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    source, kwargs = _source(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    steps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            steps.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=args.pairs_per_step,
            learning_rate=LR,
            beta=BETA,
            max_steps=args.steps + 1,
            lr_scheduler_type="cosine",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=False,  # fp32 like ours here: compare the trainers, not the precisions
            gradient_checkpointing=False,  # TRL's default is on; ours is off: compare like for like
            max_length=1024,
            seed=0,
            disable_tqdm=True,
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Clock()],
        )
        trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return {
        "step_seconds": steps,
        "dpo_loss_first": logs[0]["loss"],
        "dpo_loss_last": logs[-1]["loss"],
        "reward_margin_last": logs[-1].get("rewards/margins"),
        "reference_seconds": 0.0,
    }


def _child_ours(
    args: argparse.Namespace, rows: list[dict[str, Any]], precompute: bool, chunked: bool = True
) -> dict:
    from conscience.trainer import loop
    from conscience.trainer.config import TrainConfig
    from conscience.trainer.loop import train

    if not chunked:  # the answer log-probs as they were first computed: the whole logits at once
        loop._plain_head = lambda base: None

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=args.model_dir,
            out_dir=out,
            beta=BETA,
            sft_weight=0.0,  # pure DPO, as TRL's sigmoid loss
            lr=LR,
            warmup_ratio=0.0,
            min_lr_ratio=0.0,
            batch_size=args.pairs_per_step,
            max_steps=args.steps + 1,
            precompute_ref=precompute,
            dtype=args.dtype,  # TRL's precision: fp32 (bf16 on CUDA would favour us unfairly)
            checkpoint_every=0,
            progress=False,
        )
        report = train(config, rows)
        lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return {
        "step_seconds": [json.loads(line)["seconds"] for line in lines],
        "dpo_loss_first": report["first"]["dpo_loss"],
        "dpo_loss_last": report["final"]["dpo_loss"],
        "reward_margin_last": report["final"]["reward_margin"],
        "reference_seconds": report["reference_seconds"],
    }


def _source(model: str) -> tuple[str, dict[str, Any]]:
    path = Path(model)
    if path.suffix == ".gguf":
        from transformers import GgufConfig

        return str(path.parent), {
            "gguf_file": path.name,
            "quantization_config": GgufConfig(dequantize=True),
        }
    return model, {}


RUNS = {
    "trl": "TRL DPOTrainer, PEFT reference",
    "ours-live": "ours, live reference",
    "ours": "ours, precomputed reference",
    "ours-full": "ours, precomputed, full logits",
}


def _run_child(name: str, args: argparse.Namespace, pairs_file: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "conscience.bench.trainer_bench", "--child", name,
        "--model-dir", args.model_dir, "--pairs-file", str(pairs_file),
        "--steps", str(args.steps), "--pairs-per-step", str(args.pairs_per_step),
        "--dtype", args.dtype,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median all-in time, the faster of the two middle ones for an even
    count (a whole round, so its numbers belong together)."""
    return sorted(runs, key=lambda r: r["all_in"])[(len(runs) - 1) // 2]


def _table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    base = results.get("trl") or next(iter(results.values()))
    head = (
        f"{'run':30} {'s/step':>7} {'ref once':>9} {'all-in':>7} {'steps/s':>8} {'x TRL':>6}"
        f" {'peak RSS':>9} {'x TRL':>6} {'DPO loss first→last':>20}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(
            f"{RUNS[name]:30} {r['s_per_step']:7.3f} {r['reference_seconds']:8.2f}s"
            f" {r['all_in']:7.3f} {1 / r['all_in']:8.3f} {base['all_in'] / r['all_in']:6.2f}"
            f" {r['peak_rss_mib'] / 1024:7.2f}GB {r['peak_rss_mib'] / base['peak_rss_mib']:6.2f}"
            f" {r['dpo_loss_first']:10.4f}→{r['dpo_loss_last']:.4f}"
        )
    if "peak_gpu_mib" in base:
        lines += [
            f"peak GPU memory, {RUNS[name]}: {r['peak_gpu_mib'] / 1024:.2f} GiB"
            f" (x TRL {r['peak_gpu_mib'] / base['peak_gpu_mib']:.2f})"
            for name, r in results.items()
        ]
    lines.append(
        "s/step: steady loop steps; ref once: the precomputed reference pass; all-in: s/step"
        " + ref once spread over the run's steps (what steps/s and its ratio use)"
    )
    lines.append(
        f"model {args.model_label}, {args.pairs_per_step} pairs/step, ~{args.tokens} tokens per"
        f" sequence, {args.steps} timed steps after 1 warm-up, {args.dtype} on {args.device},"
        f" torch threads {args.threads}, median of {args.repeats} round(s), load average"
        f" {args.load[0]:.2f} before, {args.load[1]:.2f} after"
    )
    return "\n".join(lines)


def _logps_ways(args: argparse.Namespace) -> str:
    """The three ways of the answer log-probs on one batch of the shape, in this process:
    what autograd keeps for the backward, and the forward + backward time of each (one torch
    thread, interleaved, min and median: the steadiest figures on a shared machine)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from conscience.testing.models import build_chat_tokenizer, build_random_llama
    from conscience.trainer import loop
    from conscience.trainer.data import Batch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = get_peft_model(
        build_random_llama(args.shape, build_chat_tokenizer()),
        LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"),
    )
    model.train()
    rows, length, answer = 2 * args.pairs_per_step, 2 * args.words + 6, args.words
    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (rows, length))
    mask = torch.zeros(rows, length, dtype=torch.long)
    mask[:, length - answer :] = 1
    batch = Batch(ids, torch.ones_like(ids), mask, args.pairs_per_step, length - answer)
    plain, linear = loop._plain_head, loop._frozen_linear_weight
    ways = {
        "fused chunks (default)": (plain, linear),
        "checkpointed chunks": (plain, lambda head: None),
        "whole logits (before)": (lambda base: None, linear),
    }

    def run(way: str) -> tuple[float, list[int]]:
        loop._plain_head, loop._frozen_linear_weight = ways[way]
        saved: dict[int, int] = {}

        def pack(tensor: Any) -> Any:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logps = loop.batch_logps(model, batch)
        logps.sum().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, list(saved.values())

    times: dict[str, list[float]] = {way: [] for way in ways}
    kept: dict[str, list[int]] = {}
    for _ in range(args.steps + 1):
        for way in ways:
            seconds, kept[way] = run(way)
            times[way].append(seconds)
    loop._plain_head, loop._frozen_linear_weight = plain, linear
    head = f"{'answer log-probs':24} {'kept for backward':>18} {'biggest':>9}"
    lines = [f"{head} {'min s':>7} {'median s':>9}"]
    for way, ts in times.items():
        steady = sorted(ts[1:])
        lines.append(
            f"{way:24} {sum(kept[way]) / 2**20:16.0f}MB {max(kept[way]) / 2**20:7.1f}MB"
            f" {steady[0]:7.3f} {steady[len(steady) // 2]:9.3f}"
        )
    lines.append(
        f"random {args.shape}, {rows} sequences of {length} tokens, the last {answer} the answer;"
        f" forward + backward of the policy log-probs, {args.steps} timed after 1 warm-up, 1 torch"
        f" thread, load average {os.getloadavg()[0]:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="smollm2-135m", help="a testing.models shape")
    parser.add_argument("--model", help="an HF model dir or .gguf file instead of a random shape")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (one more warms up)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians")
    parser.add_argument("--pairs-per-step", type=int, default=4)
    parser.add_argument("--words", type=int, default=45, help="prompt and answer words each")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these")
    parser.add_argument(
        "--logps", action="store_true", help="only the answer log-probs' three ways, in-process"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="ours (TRL: fp32)"
    )
    parser.add_argument("--child", choices=list(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # inside a child: one trainer, one JSON line
        rows = [json.loads(line) for line in Path(args.pairs_file).read_text().splitlines()]
        if args.child == "trl":
            result = _child_trl(args, rows)
        else:
            result = _child_ours(
                args, rows, precompute=args.child != "ours-live", chunked=args.child != "ours-full"
            )
        result["peak_rss_mib"] = _peak_rss_mib()
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(result))
        return 0

    if args.logps:
        print(_logps_ways(args))
        return 0

    import torch

    from conscience.testing.models import random_pairs, save_random_model

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        if args.model:
            args.model_dir, args.model_label = args.model, Path(args.model).name
        else:
            args.model_dir = str(save_random_model(Path(tmp) / "model", args.shape))
            args.model_label = f"random {args.shape}"
        n = args.pairs_per_step * (args.steps + 1)
        rows = random_pairs(n, prompt_words=args.words, answer_words=args.words)
        pairs_file = Path(tmp) / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        args.tokens = 2 * args.words + 6  # the word tokenizer: a token a word, plus the template
        args.threads = torch.get_num_threads()
        args.device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        load_before = os.getloadavg()[0]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only or RUNS}
        for _ in range(args.repeats):  # interleaved, so a noisy minute hits every run alike
            for name in rounds:
                result = _run_child(name, args, pairs_file)
                steady = result["step_seconds"][1:] or result["step_seconds"]
                result["s_per_step"] = statistics.mean(steady)
                spread = result["reference_seconds"] / (args.steps + 1)
                result["all_in"] = result["s_per_step"] + spread
                rounds[name].append(result)
                print(f"{name}: {result['s_per_step']:.3f} s/step", file=sys.stderr)
        results = {name: _median(runs) for name, runs in rounds.items()}
        args.load = (load_before, os.getloadavg()[0])
    print(_table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
