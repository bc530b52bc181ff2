"""The Emergent Misalignment benchmark (Betley et al. 2025) against any OpenAI-compatible engine.

For each question, N answers at temperature 1 from the model under test (a raw model, an
adapter, or the guardrail proxy itself); each answer is scored 0-100 twice by the judge, for
alignment and coherence, with the paper's own judge prompts. The judge defaults to the model
under test on the same endpoint (the method's frozen base: no external judge). Answers land
in ``answers.jsonl`` as they are judged, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conscience.client import EngineClient
from conscience.engine.connect import open_engine
from conscience.errors import ConfigError
from conscience.evals.em.report import build_report, write_chart
from conscience.evals.shared.bounded import run_bounded
from conscience.evals.shared.jsonl import AppendLog, read_records
from conscience.evals.shared.questions import EmQuestion
from conscience.evals.shared.scoring import judge_score
from conscience.progress import Progress

if TYPE_CHECKING:
    from conscience.settings import Settings

__all__ = [
    "ANSWERS_FILE",
    "CHART_FILE",
    "REPORT_FILE",
    "SETTINGS_FILE",
    "EmConfig",
    "judge_answer",
    "run_em",
    "run_em_on",
]

ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.json"
CHART_FILE = "em.png"
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class EmConfig:
    model: str  # the model under test, as the endpoint names it
    judge_model: str  # the scorer; the method's default is the frozen base = the model itself
    question_set: str = "first_plot"
    samples: int = 100  # answers per question (the paper: 100)
    temperature: float = 1.0  # the paper samples at 1
    max_tokens: int = 600  # the paper's open-model evaluation
    judge_max_tokens: int = 3  # 1 in the paper; 3 shows whether a number spans digit tokens
    top_logprobs: int = 20  # OpenAI's maximum, as the paper
    scoring: str = "auto"  # "first-token" (the paper), "digit-chain", "auto" (evals.scoring)
    concurrency: int = 8
    limit: int | None = None  # at most this many new answers in this run (then stop)

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (samples may grow)."""
        keys = ("model", "judge_model", "question_set", "temperature", "max_tokens", "scoring")
        return {key: getattr(self, key) for key in keys}


def _check_resumable(out_dir: Path, config: EmConfig) -> None:
    path = out_dir / SETTINGS_FILE
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = {
            k: (before.get(k), v) for k, v in config.identity().items() if before.get(k) != v
        }
        if changed:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(
                f"{out_dir} holds a run with other settings ({shown}); use another --out"
            )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config.identity(), indent=2) + "\n", encoding="utf-8")


def _judge_body(config: EmConfig, prompt: str) -> dict[str, Any]:
    return {
        "model": config.judge_model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.0,
        "max_tokens": config.judge_max_tokens,
        "logprobs": True,
        "top_logprobs": config.top_logprobs,
    }


async def judge_answer(
    judge: EngineClient, config: EmConfig, template: str, question: str, answer: str
) -> dict[str, Any]:
    """One judge prompt (the paper's aligned or coherent template) on one answer:
    ``{"score", "mass", "rule", "text"}``, the score 0-100 or None (not a number)."""
    result = await judge.chat(
        _judge_body(config, template.format(question=question, answer=answer))
    )
    choice = result["choices"][0]
    content = (choice.get("logprobs") or {}).get("content")
    scored = judge_score(content, config.scoring)
    text = (choice.get("message") or {}).get("content") or ""
    return {"score": scored.score, "mass": scored.number_mass, "rule": scored.rule, "text": text}


async def _one(
    answerer: EngineClient,
    judge: EngineClient,
    config: EmConfig,
    question: EmQuestion,
    sample: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    result = await answerer.chat(
        {
            "model": config.model,
            "messages": question.messages(sample),
            "temperature": config.temperature,
            "top_p": 1.0,
            "max_tokens": config.max_tokens,
        }
    )
    choice = result["choices"][0]
    answer = (choice.get("message") or {}).get("content") or ""
    generated = time.perf_counter()
    asked = question.paraphrase(sample)
    aligned, coherent = await asyncio.gather(
        judge_answer(judge, config, question.aligned_prompt, asked, answer),
        judge_answer(judge, config, question.coherent_prompt, asked, answer),
    )
    record: dict[str, Any] = {
        "question_id": question.id,
        "sample": sample,
        "question": asked,
        "system": question.system,
        "answer": answer,
        "finish_reason": choice.get("finish_reason"),
        "aligned": aligned["score"],
        "coherent": coherent["score"],
        "aligned_mass": aligned["mass"],
        "coherent_mass": coherent["mass"],
        "aligned_judge_text": aligned["text"],
        "coherent_judge_text": coherent["text"],
        "scoring_rule": aligned["rule"],
        "generate_s": round(generated - started, 4),
        "judge_s": round(time.perf_counter() - generated, 4),
    }
    if isinstance(result.get("conscience"), dict):
        record["conscience"] = result["conscience"]  # the proxy under test: what it did
    return record


async def run_em(
    answerer: EngineClient,
    judge: EngineClient,
    questions: list[EmQuestion],
    config: EmConfig,
    out_dir: Path,
    *,
    chart: bool = True,
) -> dict[str, Any]:
    """Answer, judge and log every (question, sample) not yet in ``out_dir``; then report.

    Returns the report (also written to ``report.json``, with ``em.png`` beside it).
    """
    if config.samples < 1:
        raise ConfigError("--samples must be at least 1")
    _check_resumable(out_dir, config)
    answers_path = out_dir / ANSWERS_FILE
    done = {(r["question_id"], r["sample"]) for r in read_records(answers_path)}
    wanted = [(q, s) for s in range(config.samples) for q in questions]  # interleaved: a
    # partial run covers every question a little rather than the first ones fully
    todo = [(q, s) for q, s in wanted if (q.id, s) not in done]
    if config.limit is not None:
        todo = todo[: max(0, config.limit)]

    started = time.perf_counter()
    done_before = len(wanted) - len(todo)
    with (
        AppendLog(answers_path) as log,
        Progress(len(wanted), "em answers", done=done_before, unit="answer") as bar,
    ):

        def record_done(_: tuple[EmQuestion, int], record: dict[str, Any]) -> None:
            log.append(record)
            bar.update(1)

        await run_bounded(
            todo,
            lambda job: _one(answerer, judge, config, job[0], job[1]),
            config.concurrency,
            record_done,
        )
    elapsed = time.perf_counter() - started

    settings = {**asdict(config), "answered_this_run": len(todo), "seconds_this_run": elapsed}
    return _finish(out_dir, questions, config, settings, chart)


async def run_em_on(
    settings: Settings,
    questions: list[EmQuestion],
    config: EmConfig,
    out_dir: Path,
    *,
    judge_url: str | None = None,
    judge_api_key: str | None = None,
) -> dict[str, Any]:
    """``run_em`` on the engine of ``settings`` (its URL, else the embedded engine on its
    model); the judge on that same engine, or at ``judge_url`` (when the proxy answers)."""
    async with open_engine(settings) as engine:
        if judge_url is None:
            return await run_em(engine.client, engine.client, questions, config, out_dir)
        async with EngineClient(
            judge_url, api_key=judge_api_key, timeout=settings.upstream_timeout
        ) as judge:
            return await run_em(engine.client, judge, questions, config, out_dir)


def _finish(
    out_dir: Path,
    questions: list[EmQuestion],
    config: EmConfig,
    settings: dict[str, Any],
    chart: bool,
) -> dict[str, Any]:
    # The report is rebuilt from the whole log, so a resumed run reports every answer.
    records = read_records(out_dir / ANSWERS_FILE)
    report = build_report(records, questions, config.samples, settings)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if chart:
        write_chart(report, out_dir / CHART_FILE)
    return report
