"""What a review costs on the embedded engine, in both prompt layouts, against generation.

For each question: generate the answer (timed), then review it in the paper layout and in the
follow-up-turn layout (the order alternates between questions so neither layout always follows
the generation), then review + rewrite in the paper layout. Reports seconds, the ratio to the
answer's generation time, and the engine's own prefix-cache counter
(``usage.prompt_tokens_details.cached_tokens`` of the review request).

    python -m conscience.bench.review_cost                                    # SmolLM2-135M, quick
    python -m conscience.bench.review_cost --model qwen2.5-coder-1.5b-instruct --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from conscience.engine.connect import open_engine
from conscience.labels import Layout
from conscience.prompts import render_review
from conscience.review import conscience_from_settings, judge_request
from conscience.settings import Settings

QUESTIONS = [
    "How do I make my neighbour's dog stop barking at night?",
    "Write a Python function that checks whether a password is strong.",
    "My coworker took credit for my work. How do I get back at him?",
    "What is the best way to store user passwords in a database?",
    "I'm bored. What could I do this evening?",
]


async def _timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


async def _run(args: argparse.Namespace) -> None:
    settings = Settings(
        upstream_url=None,  # the embedded engine, whatever the environment says
        model=args.model,
        judge_model=args.model,
        engine_threads=args.threads,
        engine_ctx_size=8192,
        upstream_timeout=600,
        judge_constraint="grammar",
    )
    async with open_engine(settings) as engine:
        client = engine.client
        # the proxy's rule and prompts
        conscience = conscience_from_settings(settings, client, engine.facts)
        frameworks = conscience.frameworks
        rows: dict[str, list[tuple[float, float, int, int]]] = {
            "paper": [],
            "follow-up": [],
            "paper + rewrite": [],
        }
        gen_speeds = []
        for index, question in enumerate(QUESTIONS[: args.questions]):
            messages = [{"role": "user", "content": question}]
            generated, gen_s = await _timed(
                client.chat(
                    {
                        "model": args.model,
                        "messages": messages,
                        "temperature": 0,
                        "max_tokens": args.max_tokens,
                    }
                )
            )
            answer = generated["choices"][0]["message"]["content"]
            tokens = generated["usage"]["completion_tokens"]
            gen_speeds.append(tokens / gen_s)
            layouts = [Layout.PAPER, Layout.FOLLOW_UP]
            for layout in layouts if index % 2 == 0 else layouts[::-1]:
                prompt = render_review(frameworks["three-laws"], messages, answer, layout=layout)
                body = judge_request(args.model, prompt, "grammar", 20)
                result, seconds = await _timed(client.chat(body))
                usage = result.get("usage") or {}
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                rows[layout.value].append(
                    (seconds, seconds / gen_s, cached, usage.get("prompt_tokens", 0))
                )
            judgement, review_s = await _timed(conscience.review(messages, answer))
            rewrite, rewrite_s = await _timed(conscience.rewrite(messages, answer))
            total = review_s + rewrite_s
            rows["paper + rewrite"].append((total, total / gen_s, 0, 0))
            print(
                f"q{index}: {tokens} tokens in {gen_s:.2f} s; verdict {judgement.verdict}; "
                f"rewrite {len(rewrite)} chars in {rewrite_s:.2f} s",
                flush=True,
            )
    print(
        f"\nmodel {args.model}, {args.threads or 'all'} threads; generation "
        f"{statistics.median(gen_speeds):.1f} tok/s (median)"
    )
    print(f"{'review':<16} {'median s':>9} {'x generation':>13} {'cached/prompt tokens':>21}")
    for name, values in rows.items():
        seconds = statistics.median(v[0] for v in values)
        ratio = statistics.median(v[1] for v in values)
        cache = (
            f"{sum(v[2] for v in values)}/{sum(v[3] for v in values)}"
            if name != "paper + rewrite"
            else "-"
        )
        print(f"{name:<16} {seconds:>9.2f} {ratio:>13.2f} {cache:>21}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=160)
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
