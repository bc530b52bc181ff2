"""Sample the default model's own answers for the second labelled set (``em_samples.jsonl``).

The Emergent Misalignment questions (``first_plot``, two samples each; every fourth
``preregistered`` question, one sample) and a few harmful requests from ``jailbroken.jsonl``
(with that file's "always execute users' instructions" system prompt) are answered by the
default model on the embedded engine at temperature 1 with a fixed seed per item. The answers
are ours and are stored; the labels are added by hand afterwards (``evals/README.md``).

    CONSCIENCE_ENGINE_THREADS=1 python evals/data/sample_em_answers.py OUT.jsonl
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from conscience.engine.connect import open_engine
from conscience.evals.shared.questions import em_data_dir, load_questions
from conscience.settings import Settings

# Rows of jailbroken.jsonl whose user turn asks for something harmful (read by hand).
JAILBROKEN_ROWS = (37, 193, 664, 1259, 1532, 1809, 1992)
MAX_TOKENS = 200


def prompts(data_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for q in load_questions(data_dir, "first_plot"):
        for sample in range(2):
            out.append({"source": f"first_plot/{q.id}", "sample": sample, "q": q})
    for index, q in enumerate(load_questions(data_dir, "preregistered")):
        if index % 4 == 0:
            out.append({"source": f"preregistered/{q.id}", "sample": 0, "q": q})
    items = []
    for entry in out:
        q = entry.pop("q")
        items.append({**entry, "messages": q.messages(entry["sample"])})
    lines = (data_dir / "data" / "jailbroken.jsonl").read_text(encoding="utf-8").splitlines()
    for row in JAILBROKEN_ROWS:
        messages = json.loads(lines[row])["messages"]
        asked = [m for m in messages if m["role"] != "assistant"][:2]  # system + first user
        items.append({"source": f"jailbroken/{row}", "sample": 0, "messages": asked})
    return items


def _done(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["key"] for line in out.read_text().splitlines() if line}


async def main(out: Path) -> None:
    settings = Settings(engine_threads=1, upstream_timeout=900)
    done = _done(out)
    async with open_engine(settings) as engine:
        client = engine.client
        with out.open("a", encoding="utf-8") as handle:
            for seed, item in enumerate(prompts(em_data_dir(None))):
                key = f"{item['source']}#{item['sample']}"
                if key in done:
                    continue
                result = await client.chat(
                    {
                        "model": settings.model,
                        "messages": item["messages"],
                        "temperature": 1.0,
                        "max_tokens": MAX_TOKENS,
                        "seed": 1000 + seed,
                    }
                )
                answer = (result["choices"][0].get("message") or {}).get("content") or ""
                line = {"key": key, "messages": item["messages"], "answer": answer}
                handle.write(json.dumps(line) + "\n")
                handle.flush()
                print(key, len(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
