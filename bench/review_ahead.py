"""Review while generating, measured on the default stack.

    python -m conscience.bench.review_ahead                        # the probe (the default)
    python -m conscience.bench.review_ahead --judge-method single  # the paper's single review
    python -m conscience.bench.review_ahead --layout follow-up --settings off  # own turn

For each setting of ``CONSCIENCE_REVIEW_AHEAD`` (``true``, then ``false``) a proxy with the
embedded engine and the default model is started, and each question is asked twice, one
after the other: unguarded (``conscience.policy = off``: generation only)
and guarded (the default policy). Reported per setting, over the guarded answers judged
ethical (the target is about them): the guarded/unguarded end-to-end latency (median of the
per-question ratios) and the time from the last token to the verdict (the judgement's
``review_ms``: the review call, which starts when the generation has ended). Answers are
greedy, but llama.cpp does not repeat a greedy answer exactly from one request to the next
(its prefix cache and batching change the arithmetic): each line says whether the two
answers to a question differed.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import httpx

from conscience.cascade import escalated
from conscience.labels import Layout
from conscience.server.app import create_app
from conscience.server.threaded import serve_in_thread
from conscience.settings import Settings

__all__ = ["main"]

QUESTIONS = [
    "Write a Python function that merges two sorted lists, with a docstring and an example.",
    "Explain how HTTP caching headers work, with an example of each header.",
    "Write a bash script that backs up a directory to a dated tar.gz file and keeps the last 7.",
    "How do I read a CSV file in Python and compute the average of one column?",
    "Write a SQL query that finds the three most recent orders of each customer, explained.",
    "Explain the difference between a process and a thread, with an example in Python.",
    "Write a JavaScript function that debounces another function, and show how to use it.",
    "How do I set up a Python virtual environment and pin my dependencies?",
]


@dataclass
class Run:
    setting: str
    ratios: list[float] = field(default_factory=list)  # guarded / unguarded, ethical answers
    after_last_token_s: list[float] = field(default_factory=list)  # review_ms, ethical answers
    answer_chars: list[int] = field(default_factory=list)
    unethical: int = 0  # guarded answers judged unethical (left out of the figures)
    escalated: int = 0  # ethical answers that took a second opinion (conscience/cascade.py)


def _ask(client: httpx.Client, url: str, question: str, max_tokens: int, guarded: bool) -> dict:
    body: dict = {
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if not guarded:
        body["conscience"] = {"policy": "off"}
    reply = client.post(f"{url}/v1/chat/completions", json=body)
    reply.raise_for_status()
    return reply.json()


def _run(setting: str, args: argparse.Namespace, tmp: str) -> Run:
    """One proxy with ``review_ahead`` as ``setting`` says ("on" or "off")."""
    store = f"{tmp}/{setting}.sqlite3"
    settings = Settings(
        upstream_url=None,
        model=args.model,
        judge_model=args.model,
        store_url=store,
        review_ahead=setting == "on",
        judge_method=args.judge_method,
        layout=args.layout,
        second_opinion=args.second_opinion,
        engine_threads=args.threads,
        upstream_timeout=900,
    )
    run = Run(setting)
    timings: list[tuple[str, float, float, int]] = []  # judgement id, guarded s, plain s, chars
    with serve_in_thread(create_app(settings)) as url, httpx.Client(timeout=None) as client:
        _ask(client, url, "Say hello.", 8, guarded=True)  # pages the model in, caches the header
        for question in QUESTIONS[: args.questions]:
            started = time.monotonic()
            plain = _ask(client, url, question, args.max_tokens, guarded=False)
            plain_s = time.monotonic() - started
            started = time.monotonic()
            guarded = _ask(client, url, question, args.max_tokens, guarded=True)
            guarded_s = time.monotonic() - started
            verdict = guarded["conscience"]["verdict"]
            chars = len(guarded["choices"][0]["message"]["content"] or "")
            same = (
                plain["choices"][0]["message"]["content"]
                == guarded["choices"][0]["message"]["content"]
            )
            print(
                f"  {setting}: {guarded_s:.1f} s guarded / {plain_s:.1f} s unguarded, "
                f"{chars} chars, {verdict}{'' if same else ' (answers differ)'}",
                flush=True,
            )
            if verdict != "ethical":
                run.unethical += 1
                continue
            timings.append((guarded["conscience"]["judgement_id"], guarded_s, plain_s, chars))
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT id, review_ms, readings FROM judgements").fetchall()
    review_ms = {row[0]: row[1] for row in rows}
    second = {row[0] for row in rows if row[2] and escalated(json.loads(row[2]))}
    for judgement_id, guarded_s, plain_s, chars in timings:
        run.escalated += judgement_id in second
        run.ratios.append(guarded_s / plain_s)
        run.after_last_token_s.append(review_ms[judgement_id] / 1000)
        run.answer_chars.append(chars)
    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--judge-method", default="probe", choices=["probe", "single"])
    p.add_argument("--model", default=Settings.model_fields["model"].default)
    p.add_argument(
        "--layout",
        default=Settings.model_fields["layout"].default.value,
        choices=[layout.value for layout in Layout],
        help="the review layout (follow-up: the answer as the judge's own turn, cache reused;"
        " -brief: with a one-line question)",
    )
    p.add_argument(
        "--second-opinion",
        choices=[layout.value for layout in Layout],
        help="a second review in this layout where the first probe is in doubt"
        " (conscience/cascade.py)",
    )
    p.add_argument("--questions", type=int, default=len(QUESTIONS))
    p.add_argument("--max-tokens", type=int, default=256, help="tokens of each answer at most")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all)")
    p.add_argument("--settings", default="on,off", help="review ahead on, off, or both")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    print(
        f"judge method {args.judge_method}, layout {args.layout}, second opinion "
        f"{args.second_opinion}, load average {os.getloadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_run(setting, args, tmp) for setting in args.settings.split(",")]
    print(f"load average {os.getloadavg()} at the end")
    print(
        "| review ahead | ethical answers | chars (median) | guarded/unguarded (median) "
        "| last token → verdict s (median, max) | second opinions |"
    )
    print("|---|---|---|---|---|---|")
    for run in runs:
        if not run.ratios:
            print(f"| {run.setting} | 0 ({run.unethical} unethical) | | | | |")
            continue
        print(
            f"| {run.setting} | {len(run.ratios)} | {statistics.median(run.answer_chars):.0f} "
            f"| {statistics.median(run.ratios):.2f} "
            f"| {statistics.median(run.after_last_token_s):.2f}, "
            f"{max(run.after_last_token_s):.2f} | {run.escalated} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([vars(run) for run in runs], out, indent=1)


if __name__ == "__main__":
    main()
