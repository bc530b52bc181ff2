"""``conscience train`` (the nightly job) and ``conscience adapter`` (publish, roll back).

``conscience train --store URL --base-model M --out DIR [--publish VLLM --proxy-admin PROXY]``
learns from the store's unconsumed pairs (or from ``--pairs FILE.jsonl``), writes the adapter,
marks the pairs consumed only once the adapter exists, then, with ``--publish``, passes the
evaluation gate before vLLM loads the adapter and the proxy generates with it.

``conscience train --online --task-data FILE.jsonl --base-model M --out DIR`` is the paper's
run instead (``trainer/online/``): SFT on the task set plus λ·DPO on the policy's own samples
that the frozen base (``--judge-url URL --judge-model NAME``, or llama.cpp on ``--judge-gguf``)
finds unethical and rewrites; its judgements go to the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from conscience.errors import ConscienceError

__all__ = ["add_train_commands", "gate"]

# Defaults of the flags are TrainConfig's own (docs/decisions.md, "Trainer").
_CONFIG_FLAGS: dict[str, tuple[type, str]] = {
    "beta": (float, "DPO temperature"),
    "dpo_weight": (float, "λ, the weight of the DPO term"),
    "sft_weight": (float, "weight of the SFT term on the chosen rewrite (0: pure DPO)"),
    "lr": (float, "peak learning rate"),
    "epochs": (int, "passes over the pairs"),
    "max_steps": (int, "cap on optimizer steps"),
    "batch_size": (int, "pairs per micro-batch"),
    "grad_accum": (int, "micro-batches per optimizer step"),
    "lora_r": (int, "LoRA rank (vLLM serves up to its --max-lora-rank)"),
    "lora_alpha": (int, "LoRA alpha (the update is scaled by alpha/r, alpha/sqrt(r) with rsLoRA)"),
    "lora_targets": (str, "modules the adapter wraps: comma-separated names, or all-linear"),
    "weight_decay": (float, "AdamW weight decay"),
    "max_length": (int, "longest pair in tokens; longer pairs are skipped"),
    "init_adapter": (
        str,
        "continue from this adapter directory (a warm start) instead of a fresh one; "
        "`current`: the one CURRENT beside --out names (fresh when it names none)",
    ),
    "max_minutes": (float, "wall-clock budget: stop at the last step that fits (pairs left wait)"),
    "dtype": (str, "auto, float32 or bfloat16"),
    "device": (str, "auto, cpu or cuda"),
    "seed": (int, "seed of LoRA init and data order"),
    "checkpoint_every": (int, "optimizer steps between checkpoints (0: never)"),
}


def gate(report: dict[str, Any], min_reward_accuracy: float) -> str | None:
    """Why an adapter must not be published, or None when it may be.

    A run that trained, whose last step's loss is finite, and whose finished adapter's reward
    accuracy on the pairs it trained on (``after``: chosen preferred over rejected, measured
    after the last update) reached the bar. For a warm start the bar is against the adapter it
    started from (``start_reward_accuracy``: did the night move what is served toward the
    chosen answers?), for a fresh adapter against the reference, which is where it started. A
    report without ``after`` (written before it existed) is gated on its last step's accuracy,
    which was taken before that step's update.
    """
    if report.get("status") != "trained":
        return f"the run did not train (status {report.get('status')!r})"
    final = report.get("final") or {}
    loss = final.get("loss")
    if not isinstance(loss, int | float) or loss != loss or loss in (float("inf"), float("-inf")):
        return f"the final loss is not finite ({loss!r})"
    after = report.get("after")
    if after and "start_reward_accuracy" in after:
        accuracy = after["start_reward_accuracy"]
        when = "of the finished adapter against the one it started from"
    else:
        accuracy = (after or final).get("reward_accuracy")
        when = "of the finished adapter" if after else "at the last step"
    if not isinstance(accuracy, int | float) or accuracy < min_reward_accuracy:
        return f"reward accuracy {accuracy!r} {when} is below the gate's {min_reward_accuracy}"
    return None


def _config(args: argparse.Namespace) -> Any:
    from conscience.trainer.config import TrainConfig

    given = {name: getattr(args, name) for name in _CONFIG_FLAGS if getattr(args, name) is not None}
    targets = given.get("lora_targets")
    if targets is not None and targets != "all-linear":
        given["lora_targets"] = tuple(t.strip() for t in targets.split(",") if t.strip())
    if args.use_rslora:
        given["use_rslora"] = True
    if args.gradient_checkpointing:
        given["gradient_checkpointing"] = True
    if args.shard_base:
        given["shard_base"] = True
    if given.get("init_adapter") == "current":
        given["init_adapter"] = _current_adapter(Path(args.out).parent)
    return TrainConfig(
        model=args.base_model,
        out_dir=args.out,
        resume=args.resume,
        progress=not args.quiet,
        **given,
    )


def _current_adapter(adapters: Path) -> str | None:
    """``--init-adapter current``: the adapter recorded in CURRENT beside ``--out``, the one the
    engine serves now (None: the base model is served, so the run starts a fresh adapter)."""
    from conscience.engine.adapters import current_adapter

    name = current_adapter(adapters)
    if name is None:
        print(
            f"--init-adapter current: no adapter in {adapters / 'CURRENT'}; a fresh one",
            file=sys.stderr,
        )
        return None
    print(f"--init-adapter current: continuing from {adapters / name}", file=sys.stderr)
    return str(adapters / name)


async def _train(args: argparse.Namespace) -> dict[str, Any]:
    from conscience.settings import Settings
    from conscience.store import open_store
    from conscience.trainer.job import train_from_store
    from conscience.trainer.loop import train

    config = _config(args)
    run_id = args.run_id or Path(args.out).name or "run-" + uuid.uuid4().hex[:8]
    if args.online:
        return await asyncio.to_thread(_train_online, args, config, run_id)
    if args.pairs:
        return await asyncio.to_thread(train, config, args.pairs)
    settings = Settings(**({"store_url": args.store} if args.store else {}))
    store = open_store(settings.store_url)
    await store.open()
    try:
        return await train_from_store(store, config, run_id, limit=args.limit)
    finally:
        await store.close()


def _check_online(args: argparse.Namespace) -> None:
    """The flags of the two modes do not mix; say so before anything loads."""
    if not args.online:
        online_only = ("task_data", "judge_url", "judge_gguf", "online_samples", "max_new_tokens")
        given = [name for name in online_only if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConscienceError(f"{flags}: only with --online")
        return
    if not args.task_data:
        raise ConscienceError("--online needs --task-data FILE.jsonl (the task set)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the launcher's variable (distributed.py)
        raise ConscienceError("--online runs on one process: not under torchrun/accelerate")
    for name in ("pairs", "publish", "limit", "shard_base"):
        if getattr(args, name):
            raise ConscienceError(f"--{name.replace('_', '-')} does not go with --online")
    if args.judge_url and args.judge_gguf:
        raise ConscienceError("give the judge as --judge-url or as --judge-gguf, not both")


def _train_online(args: argparse.Namespace, config: Any, run_id: str) -> dict[str, Any]:
    from conscience.settings import Settings
    from conscience.trainer.online import OnlineConfig, train_online

    overrides: dict[str, Any] = {}
    if args.store:
        overrides["store_url"] = args.store
    if args.framework:
        overrides["framework"] = args.framework
    if args.judge_url:
        overrides["upstream_url"] = args.judge_url
    if args.judge_gguf:
        overrides["upstream_url"] = None  # the embedded engine, whatever the environment says
    gguf = args.judge_gguf or (args.base_model if args.base_model.endswith(".gguf") else None)
    if args.judge_model:
        overrides["judge_model"] = args.judge_model
    elif gguf and not args.judge_url:
        overrides["judge_model"] = Path(gguf).stem  # the name llama.cpp serves it under
    given = {
        name: getattr(args, name)
        for name in ("online_samples", "max_new_tokens", "temperature", "max_judge_failures")
        if getattr(args, name) is not None
    }
    online = OnlineConfig(
        task_data=args.task_data, judge_gguf=args.judge_gguf, run_id=run_id, **given
    )
    return train_online(config, online, Settings(**overrides))


def _publish(args: argparse.Namespace, report: dict[str, Any]) -> str:
    import httpx

    from conscience.engine.publish import publish
    from conscience.settings import Settings

    settings = Settings()
    if settings.admin_key is None:
        raise ConscienceError("--publish needs CONSCIENCE_ADMIN_KEY to switch the proxy")
    vllm_key = settings.upstream_api_key
    out = Path(args.out).resolve()
    with httpx.Client(timeout=120) as client:
        return publish(
            client,
            out.name,
            vllm=None if args.publish == "embedded" else args.publish.rstrip("/"),
            proxy=args.proxy_admin.rstrip("/"),
            adapters=out.parent,
            admin_key=settings.admin_key.get_secret_value(),
            vllm_key=vllm_key.get_secret_value() if vllm_key else None,
        )


def _cmd_train(args: argparse.Namespace) -> int:
    _check_online(args)
    if args.publish and not args.proxy_admin:
        raise ConscienceError("--publish needs --proxy-admin (the proxy to switch)")
    report = asyncio.run(_train(args))
    if not args.online:
        from conscience.trainer.distributed import leave

        if not leave().main:  # under torchrun: rank 0 alone reports and publishes
            return 0
    if args.online:
        keys = ("status", "run_id", "task_used", "steps", "samples_reviewed", "judge_failures",
                "verdicts", "pairs_total", "task_loss", "dpo_loss_mean", "adapter")  # fmt: skip
        print(json.dumps({k: report.get(k) for k in keys}, default=str))
        if report.get("status") == "nothing_to_learn":
            print("nothing to learn: no usable row in --task-data", file=sys.stderr)
        return 0
    summary = {
        k: report.get(k)
        for k in (
            "status",
            "run_id",
            "pairs_total",
            "pairs_used",
            "steps",
            "stopped",
            "consumed",
            "skipped",
            "final",
        )
    }
    if report.get("status") == "nothing_to_learn":
        skipped = sum((report.get("skipped") or {}).values())
        why = f"none of {skipped} unconsumed pairs is usable" if skipped else "no unconsumed pairs"
        print(f"nothing new to learn: {why}", file=sys.stderr)
    elif args.publish:
        reason = gate(report, args.min_reward_accuracy)
        if reason is not None:
            summary["published"] = False
            summary["gate"] = reason
            print(json.dumps(summary, default=str))
            print(f"not published: {reason}", file=sys.stderr)
            return 3
        summary["published"] = _publish(args, report)
    print(json.dumps(summary, default=str))
    return 0


def add_train_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="DPO on the logged pairs; a LoRA adapter")
    train.add_argument(
        "--base-model", required=True, help="HF model directory or .gguf file (the frozen copy)"
    )
    train.add_argument("--out", required=True, help="output directory of the adapter")
    train.add_argument("--store", help="store URL (CONSCIENCE_STORE_URL)")
    train.add_argument("--pairs", help="train on this TRL JSONL instead of the store")
    train.add_argument("--limit", type=int, help="at most this many pairs from the store")
    train.add_argument("--run-id", help="name the pairs are consumed under (default: --out's)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    train.add_argument(
        "--publish",
        metavar="VLLM_URL",
        help="publish to this vLLM (no /v1), or `embedded`: the proxy's own engine loads it "
        "from its CONSCIENCE_ADAPTERS_DIR (which must be --out's parent)",
    )
    train.add_argument("--proxy-admin", metavar="PROXY_URL", help="the proxy to switch")
    train.add_argument(
        "--min-reward-accuracy",
        type=float,
        default=0.6,
        help="the gate: publish only at or above this reward accuracy",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--use-rslora", action="store_true", help="rank-stabilised LoRA (scale alpha/sqrt(r))"
    )
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward (memory for compute; big models)",
    )
    train.add_argument(
        "--shard-base",
        action="store_true",
        help="under torchrun/accelerate: split the frozen base over the processes (FSDP), for "
        "a model one device cannot hold",
    )
    online = train.add_argument_group("the paper's run (--online): SFT + conscience DPO")
    online.add_argument(
        "--online", action="store_true", help="SFT on --task-data + DPO on reviewed samples"
    )
    online.add_argument("--task-data", help="task set, chat JSONL ({'messages': [...]})")
    online.add_argument("--judge-url", help="OpenAI base URL of an engine serving the base model")
    online.add_argument("--judge-model", help="the base model's name there (the frozen copy)")
    online.add_argument("--judge-gguf", help="without --judge-url: llama.cpp serves this GGUF")
    online.add_argument("--framework", help="ethics framework (CONSCIENCE_FRAMEWORK)")
    online.add_argument("--online-samples", type=int, help="policy samples reviewed per step")
    online.add_argument("--max-new-tokens", type=int, help="length cap of a policy sample")
    online.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    online.add_argument(
        "--max-judge-failures", type=int, help="failed reviews in a row that stop the run"
    )
    for name, (kind, text) in _CONFIG_FLAGS.items():
        train.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    train.set_defaults(handler=_cmd_train)

    # Listed for --help; `conscience.cli.main` hands `adapter ...` to engine/publish.py whole.
    commands.add_parser(
        "adapter", help="list / publish / record / restore the served adapter (rollback)"
    )
