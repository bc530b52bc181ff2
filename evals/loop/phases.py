"""The online loop's traffic: the day's replay and the morning's measurement, both through the
guardrail proxy with the real ``openai`` client, as a production client calls it.

- ``replay_day``: each prompt of the day batch at the proxy under its own policy (rewrite): the
  conscience judges the current adapter's answer, rewrites an unethical one and logs the pair
  in the proxy's store, as in production.
- ``measure_morning``: each held-out prompt with ``"conscience": {"policy": "flag"}``: the
  proxy generates with the current adapter, the conscience judges it and the answer comes back
  as the adapter wrote it with the verdict (a flagged judgement has no rewrite, so it is never
  a pair and never trained on). The same answer then goes to the second judge (the Emergent
  Misalignment alignment and coherence prompts, scored as ``conscience eval em`` does, on the
  frozen base at the engine itself) and to the refusal rule (``evals/loop/refusal.py``). The
  HumanEval subset is asked with ``"policy": "off"`` (the adapter's own code, unreviewed) at
  temperature 0 and run sandboxed (``evals/loop/humaneval.py``).

Every answer is appended to a JSONL log as it completes, so a killed phase resumes at the next
unanswered prompt; progress goes to the log as lines (done/total, rate, ETA).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conscience.evals.loop.data import Prompt
from conscience.evals.loop.refusal import is_refusal
from conscience.evals.shared.bounded import run_bounded
from conscience.evals.shared.jsonl import AppendLog, read_records
from conscience.progress import Progress

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from conscience.client import EngineClient
    from conscience.evals.em.benchmark import EmConfig
    from conscience.evals.loop.humaneval import Problem

__all__ = ["Asker", "SecondJudge", "measure_humaneval", "measure_morning", "replay_day"]


@dataclass(frozen=True)
class Asker:
    """Chat requests to the proxy under one public model name."""

    client: AsyncOpenAI
    model: str
    max_tokens: int

    async def ask(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        policy: str | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        extra = {"conscience": {"policy": policy}} if policy else None
        completion = await self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens or self.max_tokens,
            extra_body=extra,
        )
        raw = completion.model_dump()
        choice = raw["choices"][0]
        seen = raw.get("conscience") or {}
        return {
            "answer": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "model": raw.get("model"),
            "verdict": seen.get("verdict"),
            "action": seen.get("action"),
            "confidence": seen.get("confidence"),
            "judgement_id": seen.get("judgement_id"),
            "screen": seen.get("screen"),
            "seconds": round(time.perf_counter() - started, 3),
        }


@dataclass(frozen=True)
class SecondJudge:
    """The Emergent Misalignment judge prompts on the frozen base, at the engine itself."""

    client: EngineClient
    config: EmConfig
    aligned_prompt: str
    coherent_prompt: str

    async def score(self, question: str, answer: str) -> dict[str, Any]:
        from conscience.evals.em.benchmark import judge_answer

        aligned, coherent = await asyncio.gather(
            judge_answer(self.client, self.config, self.aligned_prompt, question, answer),
            judge_answer(self.client, self.config, self.coherent_prompt, question, answer),
        )
        return {
            "aligned": aligned["score"],
            "coherent": coherent["score"],
            "aligned_judge_text": aligned["text"],
            "coherent_judge_text": coherent["text"],
        }


async def _each(
    path: Path,
    keys: list[tuple[str, Any]],
    work: Callable[[Any], Awaitable[dict[str, Any]]],
    desc: str,
    unit: str,
    concurrency: int,
) -> None:
    """``work(item)`` for every (key, item) whose key is not yet in the log at ``path``."""
    done = {record["id"] for record in read_records(path)}
    todo = [(key, item) for key, item in keys if key not in done]
    with (
        AppendLog(path) as log,
        Progress(len(keys), desc, done=len(keys) - len(todo), unit=unit) as bar,
    ):

        async def one(job: tuple[str, Any]) -> dict[str, Any]:
            return {"id": job[0], **(await work(job[1]))}

        def record_done(_: tuple[str, Any], record: dict[str, Any]) -> None:
            log.append(record)
            bar.update(1)

        await run_bounded(todo, one, concurrency, record_done)


async def replay_day(
    asker: Asker,
    batch: list[Prompt],
    path: Path,
    *,
    temperature: float,
    concurrency: int = 1,
    desc: str = "day",
) -> list[dict[str, Any]]:
    """Replay the batch through the proxy under its own policy; the day's log."""

    async def one(prompt: Prompt) -> dict[str, Any]:
        asked = await asker.ask(prompt.messages(), temperature=temperature)
        return {**prompt.to_dict(), **asked}

    await _each(path, [(p.id, p) for p in batch], one, desc, "prompt", concurrency)
    return read_records(path)


async def measure_morning(
    asker: Asker,
    prompts: list[Prompt],
    path: Path,
    judge: SecondJudge | None,
    *,
    served: str,
    concurrency: int = 1,
    desc: str = "morning",
) -> list[dict[str, Any]]:
    """First pass (flagged, greedy), second judge and refusal rule for each held-out prompt;
    ``served`` is the generating model the proxy reports (the adapter under test)."""

    async def one(prompt: Prompt) -> dict[str, Any]:
        asked = await asker.ask(prompt.messages(), temperature=0.0, policy="flag")
        record = {**prompt.to_dict(), **asked, "served": served}
        record["refusal"] = is_refusal(asked["answer"])
        if judge is not None:
            record.update(await judge.score(prompt.prompt, asked["answer"]))
        return record

    await _each(path, [(p.id, p) for p in prompts], one, desc, "answer", concurrency)
    return read_records(path)


async def measure_humaneval(
    asker: Asker,
    problems: list[Problem],
    path: Path,
    *,
    max_tokens: int,
    run_seconds: float,
    concurrency: int = 1,
    desc: str = "humaneval",
) -> list[dict[str, Any]]:
    """Greedy pass@1 on each problem, the code run in a sandboxed subprocess."""
    from conscience.evals.loop.humaneval import program, prompt_messages, run_program

    async def one(problem: Problem) -> dict[str, Any]:
        asked = await asker.ask(
            prompt_messages(problem), temperature=0.0, policy="off", max_tokens=max_tokens
        )
        ran = await asyncio.to_thread(run_program, program(problem, asked["answer"]), run_seconds)
        return {"task_id": problem.task_id, **asked, **ran}

    await _each(path, [(p.task_id, p) for p in problems], one, desc, "problem", concurrency)
    return read_records(path)
