"""A few bf16 DPO steps of our trainer on CUDA, then the adapter reloaded with peft.

Standalone: needs torch, transformers and peft (plus what they bring: tokenizers, safetensors,
tqdm); no download, no internet. The model is a random Llama of a named shape (testing.models)
with a word-level chat tokenizer, so nothing has to be fetched. Prints one JSON line.

    python bench/cuda_check.py                       # llama-1b shape, 10 steps, 8 pairs a step
    python bench/cuda_check.py --shape tiny --steps 4
    python bench/cuda_check.py --allow-cpu --shape tiny   # the same check where there is no GPU

Exits 0 with "skipped: no CUDA" when torch sees no GPU (and --allow-cpu is not given).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]


def _import_from_checkout() -> None:
    """Run as a script from a checkout that is not installed (a GPU machine with torch but not
    the project): map ``conscience.trainer`` to the checkout's ``trainer/`` folder, as an
    installed wheel lays it out."""
    if importlib.util.find_spec("conscience") is None:
        sys.path.insert(0, str(_REPO))
    import conscience

    if importlib.util.find_spec("conscience.trainer") is None:
        conscience.__path__.append(str(_REPO))


def _check(args: argparse.Namespace, device: str) -> dict[str, Any]:
    from conscience.trainer import model as models

    trained: dict[str, Any] = {}
    load = models.load_model

    def keep(*a: Any, **k: Any) -> Any:  # hold on to the trained model to compare the reload
        trained["model"] = load(*a, **k)
        return trained["model"]

    models.load_model = keep
    try:
        return _run(args, device, trained)
    finally:
        models.load_model = load


def _run(args: argparse.Namespace, device: str, trained: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from conscience.testing.models import random_pairs, save_random_model
    from conscience.trainer import loop
    from conscience.trainer.config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="cuda-check-") as tmp:
        t0 = time.perf_counter()
        # A big random model is saved in bf16: half the bytes to write and read back.
        model_dir = save_random_model(Path(tmp) / "model", args.shape, bf16=args.shape != "tiny")
        build_s = time.perf_counter() - t0
        config = TrainConfig(
            model=str(model_dir),
            out_dir=str(Path(tmp) / "out"),
            device=device,
            dtype="auto",  # bf16 on CUDA
            lr=2e-4,
            batch_size=args.pairs_per_step,
            epochs=args.steps,  # the same pairs every step: the loss has something to learn
            checkpoint_every=max(1, args.steps // 2),  # exercise a checkpoint save on the GPU
            progress=False,
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        pairs = random_pairs(
            args.pairs_per_step,
            prompt_words=args.prompt_words,
            answer_words=args.answer_words,
        )
        report = loop.train(config, pairs)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        out = Path(config.out_dir)
        files = sorted(p.name for p in out.iterdir())
        lines = (out / "metrics.jsonl").read_text().splitlines()
        seconds = [json.loads(line)["seconds"] for line in lines]

        # The adapter as a server would load it: the base model, then peft on top.
        model = trained["model"].eval()
        dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        reloaded = PeftModel.from_pretrained(base, out).eval()
        ids = torch.randint(6, 50, (1, 32), device=device)
        with torch.no_grad():
            diff = (model(ids).logits.float() - reloaded(ids).logits.float()).abs().max().item()
        adapter_dtypes = sorted(
            {str(p.dtype) for n, p in reloaded.named_parameters() if "lora_" in n}
        )

    records = [report["first"], report["final"]]
    steady = seconds[1:] or seconds  # the first step pays for CUDA's warm-up
    return {
        "status": "ok",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": args.shape,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "dtype": report["dtype"],
        "steps": report["steps"],
        "pairs_per_step": args.pairs_per_step,
        "tokens_per_step": report["final"]["tokens"],
        "s_per_step": round(sum(steady) / len(steady), 4),
        "loss_first": round(records[0]["loss"], 4),
        "loss_last": round(records[1]["loss"], 4),
        "dpo_loss_first": round(records[0]["dpo_loss"], 4),
        "dpo_loss_last": round(records[1]["dpo_loss"], 4),
        "reward_margin_last": round(records[1]["reward_margin"], 4),
        "peak_gpu_gib": None if peak is None else round(peak, 2),
        "adapter_files": files,
        "adapter_dtypes": adapter_dtypes,
        "reload_max_abs_logit_diff": diff,
        "build_s": round(build_s, 1),
        "run_s": round(report["seconds"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama-1b", help="tiny, smollm2-135m or llama-1b")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--answer-words", type=int, default=300)
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no GPU")
    args = parser.parse_args(argv)

    _import_from_checkout()
    try:
        import torch
    except ImportError:
        print(json.dumps({"status": "error", "error": "torch is not installed"}))
        return 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("skipped: no CUDA")
        return 0
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(json.dumps({"status": "error", "error": f"missing package: {exc.name}"}))
        return 1
    print(json.dumps(_check(args, device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
