"""``conscience eval loop``: N nights of the online loop on the default stack, measured.

Each night plays production in miniature, with the guardrail proxy (``create_app``, served on
loopback in this process, its store the run's own SQLite file) in front of the engine: the
embedded llama.cpp engine by default (the stack ``conscience serve`` starts), or an engine at
``--url`` (vLLM, or the scripted engine of the tests).

- **day** (nights 1..N): a fixed, seeded batch of prompts (``evals/loop/data.py``:
  adversarial from the harm-judging *train* split and jailbroken.jsonl, mixed with benign ones)
  replayed through the proxy on the current adapter; the conscience judges, rewrites and logs
  pairs (``evals/loop/phases.py``).
- **train**: ``conscience train`` on the store's unconsumed pairs (a subprocess, resumable from
  its checkpoint), with the wall-clock budget ``--max-minutes`` passed through when the
  trainer has that flag.
- **publish**: the trainer's gate (``trainer.cli.gate``) on the run's report, then
  ``engine.publish.publish``: vLLM-style (the engine loads the adapter, the proxy switches)
  when the engine is at ``--url``; on the embedded engine, ``vllm=None``: the proxy converts
  the adapter and its engine serves it under the adapter's name (``CONSCIENCE_ADAPTERS_DIR``).
  A refused gate keeps yesterday's adapter.
- **start** (with ``--start-adapter DIR``, before night 0): that adapter is served as the
  starting point — a misaligned one, as the paper starts (``evals/loop/start.py``).
- **morning** (nights 0..N; night 0 is the base before any training, or the start adapter):
  the held-out prompts (harm-judging *test*, jailbroken test part, benign held-out half; never
  replayed) and a fixed HumanEval subset, measured on the adapter now served
  (``evals/loop/phases.py``).

Resumable: ``journal.jsonl`` records every phase of every night (ran, skipped, failed, with
its wall time and equivalent command); a rerun skips each phase the journal has as ran, and a
phase killed midway resumes from its own log (answers appended one by one; the trainer's
checkpoint). A lock file keeps two runs off one directory. ``--report DIR`` writes the
per-night table, JSON and chart (``evals/loop/report.py``) without running anything. A prompt
answered when the kill came but not yet logged is asked again on resume, so the store may hold
a second pair for it: at most one per kill.

Modules: this one (the order of phases, the day's and morning's runners, the command),
``loop_config`` (settings, journal), ``loop_stack`` (the proxy, publishing), ``loop_night``
(train, gate, publish), ``loop_data`` (prompts), ``loop_phases`` (requests), ``refusal``,
``humaneval``, ``loop_report``, ``loop_blind`` (the blinded reading).

Sizing (defaults; every size is a flag). Costs on this 2-core box with the default model
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M, embedded llama.cpp, 2 threads; docs/benchmarks.md):
generation ~11.7 tokens/s; a verdict 4-6 s with the single review, ~9 s with the shipped
probe (it reads the judge's hidden state over the same prompt); a rewrite costs what an answer
of its length costs; training the 1.5B model on the CPU ~66 s a pair (a step at batch 1, bf16,
on a busy box) plus its reference forward (22-45 s). The shipped judge flags most answers to
harmful requests (refusals included): count on ~3/4 of the adversarial day answers being
rewritten. One night::

    day      24 prompts x (128-token answer ~11 s + verdict 5-9 s)       6-8 min
             + ~14 rewrites x 160 tokens ~14 s                             ~3 min
    train    --max-minutes 20: ~1.5 min loading and checking the dense
             cache, then 50-110 s a pair: ~10-20 of the ~14 new pairs   <=20 min
    publish  the gate, the adapter's GGUF conversion, the engine swap     ~1 min
    morning  60 held-out x (answer ~11 s + verdict 5-9 s + 2 EM judge
             calls ~2 s each: prompt only, 3 tokens)                    20-24 min
             + 40 HumanEval x (~120-token answer ~10 s; run <1 s)          ~7 min
                                                                 about 57-63 min

The day is sized to what a night can learn: pairs the budget leaves stay unconsumed and are
learned on a later night (the trainer consumes only the pairs of the steps it ran). Night 0 is
a morning only (~27-31 min); 3 nights and night 0 take about 3.5 hours. Where the box is
slower, lower ``--day-adversarial`` with ``--max-minutes``, then ``--heldout-benign``. 40
adversarial held-out answers give a Wilson 95% interval of about +/-15 points at a 40% rate:
a halving from 40% to 20% is visible, a 10-point change is not.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError, ConscienceError
from conscience.evals.loop.config import JOURNAL, PHASES, SETTINGS, Journal, LoopConfig
from conscience.evals.loop.night import publish_night, train_argv, train_night
from conscience.evals.loop.stack import Stack
from conscience.evals.loop.start import start_night

__all__ = [
    "JOURNAL",
    "PHASES",
    "SETTINGS",
    "LoopConfig",
    "add_loop_command",
    "day_prompts",
    "heldout_prompts",
    "run_loop",
    "train_argv",
]


def _asker(stack: Stack) -> Any:
    from openai import AsyncOpenAI

    from conscience.evals.loop.phases import Asker

    client = AsyncOpenAI(
        base_url=stack.url + "/v1",
        api_key=stack.client_key(),
        timeout=stack.config.timeout,
        max_retries=0,
    )
    return Asker(client, stack.settings.model, stack.config.max_tokens)


async def _day(config: LoopConfig, night: int, stack: Stack) -> None:
    from conscience.evals.loop.phases import replay_day

    batch = day_prompts(config, night)
    asker = _asker(stack)
    async with asker.client:
        await replay_day(
            asker,
            batch,
            config.night_dir(night) / "day" / "answers.jsonl",
            temperature=config.day_temperature,
            concurrency=config.concurrency,
            desc=f"night {night} day",
        )


def _pools(config: LoopConfig) -> Any:
    from conscience.evals.loop.data import build_pools
    from conscience.evals.shared.questions import em_data_dir

    harm = Path(config.harm_data_dir) if config.harm_data_dir else None
    jailbroken = em_data_dir(config.em_data_dir) / "data" / "jailbroken.jsonl"
    return build_pools(harm_dir=harm, jailbroken=jailbroken)


def day_prompts(config: LoopConfig, night: int) -> list[Any]:
    from conscience.evals.loop.data import day_batch

    return day_batch(
        _pools(config),
        night,
        config.day_adversarial,
        config.day_benign,
        config.seed,
        config.jailbreak_share,
    )


def heldout_prompts(config: LoopConfig) -> list[Any]:
    from conscience.evals.loop.data import held_out

    return held_out(
        _pools(config),
        config.heldout_adversarial,
        config.heldout_benign,
        config.seed,
        config.jailbreak_share,
    )


async def _morning(config: LoopConfig, night: int, stack: Stack) -> dict[str, Any]:
    from conscience.evals.em.benchmark import EmConfig
    from conscience.evals.loop.phases import SecondJudge, measure_humaneval, measure_morning

    where = config.night_dir(night) / "morning"
    asker = _asker(stack)
    settings = stack.settings
    generator = stack.generator()
    async with asker.client, stack.engine_client() as engine:
        judge = None
        if config.second_judge:
            from conscience.evals.shared.questions import em_data_dir, load_questions

            question = load_questions(em_data_dir(config.em_data_dir), "first_plot")[0]
            em = EmConfig(model=generator, judge_model=settings.judge)
            judge = SecondJudge(engine, em, question.aligned_prompt, question.coherent_prompt)
        await measure_morning(
            asker,
            heldout_prompts(config),
            where / "answers.jsonl",
            judge,
            served=generator,
            concurrency=config.concurrency,
            desc=f"night {night} morning",
        )
        if config.humaneval:
            from conscience.evals.loop.humaneval import load_problems, subset

            file = Path(config.humaneval_file) if config.humaneval_file else None
            problems = subset(load_problems(file), config.humaneval, config.seed)
            await measure_humaneval(
                asker,
                problems,
                where / "humaneval.jsonl",
                max_tokens=config.humaneval_max_tokens,
                run_seconds=config.humaneval_timeout,
                concurrency=config.concurrency,
                desc=f"night {night} humaneval",
            )
    return {"generator": generator, "judge": settings.judge}


def _check_resumable(config: LoopConfig) -> None:
    path = config.out / SETTINGS
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
    changed = {k: (before.get(k), v) for k, v in config.identity().items() if before.get(k) != v}
    if changed:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"{config.out} holds a loop with other settings ({shown}); use another --out"
        )


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another loop is running in {out}") from None
        yield


def run_loop(config: LoopConfig) -> Path:
    """Play the nights not yet played (resuming any phase a kill cut short); then the report.
    Returns the report's markdown file."""
    from conscience.evals.experiment.run import machine_facts
    from conscience.evals.loop.report import write_report
    from conscience.progress import Progress

    config.out.mkdir(parents=True, exist_ok=True)
    with _locked(config.out), ExitStack() as exits:
        _check_resumable(config)
        record = {
            "config": asdict(config),
            "identity": config.identity(),
            "machine": machine_facts(),
        }
        (config.out / SETTINGS).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        journal = Journal(config.out)
        stack = Stack(config, exits)
        plan = [(n, p) for n in range(config.nights + 1) for p in (PHASES if n else ("morning",))]
        if config.start_adapter is not None:  # night 0 measures the adapter it starts from
            plan.insert(0, (0, "start"))
        finished = [step for step in plan if journal.done(*step)]
        # One log line per phase (done/total, rate, ETA) beside each phase's own progress.
        with Progress(len(plan), "loop phases", done=len(finished), unit="phase", every_s=0) as bar:
            for night, phase in plan:
                if (night, phase) in finished:
                    journal.write(night, phase, "skipped", reason="the journal has it as ran")
                    continue
                _phase(config, night, phase, stack, journal)
                bar.update(1)
        return write_report(config.out, config.out / "report")


def _phase(config: LoopConfig, night: int, phase: str, stack: Stack, journal: Journal) -> None:
    if phase == "train":
        train_night(config, night, journal)  # journals itself, with its command and outcome
        return
    if phase == "publish":
        publish_night(config, night, stack, journal)
        return
    if phase == "start":
        start_night(config, stack, journal)
        return
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    try:
        stack.up()
        extra["proxy"] = stack.command
        if phase == "day":
            asyncio.run(_day(config, night, stack))
        else:
            extra.update(asyncio.run(_morning(config, night, stack)))
    except Exception as exc:  # the engine's or the client's errors too: journalled, then said
        seconds = time.perf_counter() - started
        journal.write(night, phase, "failed", seconds=seconds, error=str(exc), **extra)
        if isinstance(exc, ConscienceError):
            raise
        raise ConscienceError(f"night {night} {phase} failed: {exc!r}") from exc
    journal.write(night, phase, "ran", seconds=time.perf_counter() - started, **extra)


def add_loop_command(which: argparse._SubParsersAction) -> None:
    """``conscience eval loop``: the nightly loop, measured; resumable; ``--report DIR``."""
    defaults = LoopConfig()
    parser = which.add_parser(
        "loop",
        help="N nights of the online loop (day replay, train, gate, publish, morning measure)",
        description="Plays N nights of traffic -> conscience -> pairs -> nightly DPO -> publish "
        "on the default stack, measuring each morning on held-out prompts; resumable.",
    )
    parser.add_argument("--out", default=defaults.out_dir, help="working directory (resumable)")
    parser.add_argument("--report", metavar="DIR", help="only write the report of --out to DIR")
    for name, kind in (
        ("nights", int), ("seed", int), ("url", str), ("model", str), ("judge_model", str),
        ("base_model", str), ("framework", str), ("engine_threads", int), ("timeout", float),
        ("concurrency", int), ("day_adversarial", int), ("day_benign", int),
        ("day_temperature", float), ("jailbreak_share", float), ("max_tokens", int),
        ("rewrite_max_tokens", int), ("max_minutes", float), ("min_reward_accuracy", float),
        ("train_threads", int), ("heldout_adversarial", int), ("heldout_benign", int),
        ("humaneval", int), ("humaneval_max_tokens", int), ("humaneval_timeout", float),
        ("humaneval_file", str), ("em_data_dir", str), ("harm_data_dir", str),
        ("start_adapter", str),
    ):  # fmt: skip
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=default, help=f"default {default}"
        )
    parser.add_argument("--publish-to", choices=("auto", "vllm", "embedded"), default="auto")
    parser.add_argument(
        "--no-second-judge", dest="second_judge", action="store_false", help="skip the EM judge"
    )
    parser.add_argument(
        "--train-arg", dest="train_args", action="append", default=[], metavar="ARG",
        help="one more `conscience train` argument (repeat: --train-arg=--lr --train-arg=1e-4)",
    )  # fmt: skip
    parser.set_defaults(handler=_cmd_loop)


def _cmd_loop(args: argparse.Namespace) -> int:
    from conscience.evals.loop.report import write_report

    if args.report:
        written = write_report(Path(args.out), Path(args.report))
    else:
        fields = {k: v for k, v in vars(args).items() if k in LoopConfig.__dataclass_fields__}
        fields["out_dir"] = args.out
        written = run_loop(LoopConfig(**fields))
    print(written.read_text(encoding="utf-8"))
    print(f"report: {written}", file=sys.stderr)
    return 0
