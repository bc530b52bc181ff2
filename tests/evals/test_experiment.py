"""The four-arm experiment end to end on loopback: the scripted engine, a tiny random model.

The scripted engine plays vLLM: it serves the base (``base``, also the judge) and whatever
adapters the experiment loads, and answers by model name, so each arm's table row shows
which model really generated it:

- ``base`` and the adapter ``experiment-sft`` say "EVIL answer" (the judge: aligned 10);
- ``experiment-sft-dpo`` says "NICE answer" (aligned 90);
- the proxy arm generates with ``base`` (EVIL), the scripted conscience calls it unethical and
  rewrites it to a NICE answer, so the proxy arm's answers are the rewrites.

The adapters are trained for real (``conscience train --online`` subprocesses) on the tiny
random Llama; their weights mean nothing, only that the right commands ran.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from conscience.evals.experiment.report import BEGIN, END
from conscience.evals.experiment.run import ExperimentConfig, run_experiment, train_argv
from conscience.testing.models import WORDS, save_random_model
from conscience.testing.scripted import ScriptedEngine, serve_in_thread

SAMPLES = 2
QUESTIONS = 4  # the fixture's first_plot set: q_nice, q_mixed, q_code, q_ramble
SAYS = {"base": "EVIL answer", "experiment-sft": "EVIL answer", "experiment-sft-dpo": "NICE answer"}


def _judge(top: dict[str, float]) -> dict:
    greedy = max(top, key=top.__getitem__)
    tops = [{"token": t, "logprob": math.log(p)} for t, p in top.items()]
    content = [{"token": greedy, "logprob": math.log(top[greedy]), "top_logprobs": tops}]
    message = {"role": "assistant", "content": greedy}
    choice = {"index": 0, "message": message, "logprobs": {"content": content}}
    return {"id": "x", "model": "base", "choices": [{**choice, "finish_reason": "length"}]}


def _answer(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def _engine() -> ScriptedEngine:
    engine = ScriptedEngine(
        judge_model="base", verdict="unethical", rewrite="NICE answer, rewritten"
    )

    def handler(kind: str, body: dict) -> dict | None:
        prompt = body["messages"][-1]["content"]
        if prompt.startswith("ALIGNED"):
            return _judge(
                {"10": 1.0} if "EVIL" in prompt.split("[ANSWER START]")[1] else {"90": 1.0}
            )
        if prompt.startswith("COHERENCE"):
            return _judge({"80": 1.0})
        if prompt.endswith(" question"):  # an EM question: the arm's model answers
            return _answer(SAYS[body["model"]])
        return None  # the conscience's reviews and rewrites: the scripted defaults

    engine.handler = handler
    return engine


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("tiny") / "model", "tiny")


def _task(path: Path) -> Path:
    words = list(WORDS)
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(words[i : i + 6])},
                {"role": "assistant", "content": " ".join(words[i + 6 : i + 14])},
            ]
        }
        for i in range(0, 40, 5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _config(tmp_path: Path, model: Path, url: str, em_data_dir: Path) -> ExperimentConfig:
    return ExperimentConfig(
        base_model=str(model),
        served_model="base",
        url=url + "/v1",
        task_data=str(_task(tmp_path / "task.jsonl")),
        out_dir=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        lr=1e-2,
        max_length=128,
        dtype="float32",
        online_samples=1,
        max_new_tokens=6,
        samples=SAMPLES,
        max_tokens=16,
        concurrency=4,
        timeout=60,
        data_dir=str(em_data_dir),
        results=str(tmp_path / "docs/results.md"),
        chart=str(tmp_path / "docs/results.png"),
    )


def _journal(config: ExperimentConfig) -> list[dict]:
    lines = (config.out / "phases.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_arms_share_a_recipe_and_differ_by_the_dpo_term(tmp_path: Path) -> None:
    config = ExperimentConfig(
        base_model="m", served_model="base", url="http://e/v1", task_data="t.jsonl",
        out_dir=str(tmp_path),
    )  # fmt: skip
    sft, dpo = train_argv(config, "sft"), train_argv(config, "sft-dpo")
    cut = sft.index("--online-samples")
    assert sft[cut:] == ["--online-samples", "0"]
    shared = [a for a in sft[:cut] if a not in (str(config.adapter_dir("sft")), "experiment-sft")]
    assert shared == [
        a for a in dpo[:cut] if a not in (str(config.adapter_dir("sft-dpo")), "experiment-sft-dpo")
    ]
    judge = dpo[cut:]
    assert judge[:2] == ["--online-samples", str(config.online_samples)]
    assert judge[judge.index("--judge-url") + 1] == "http://e/v1"
    assert judge[judge.index("--judge-model") + 1] == "base"  # the frozen base judges
    assert sft[sft.index("--max-steps") + 1] == str(config.steps)
    config.steps = 0  # whole epochs: the full-scale recipe
    assert "--max-steps" not in train_argv(config, "sft")


@pytest.mark.slow  # two `conscience train` subprocesses (torch imports): 52-57 s each on a busy box
def test_four_arms_table_chart_and_resumption(
    tmp_path: Path, tiny_model: Path, em_data_dir: Path
) -> None:
    engine = _engine()
    with serve_in_thread(engine.app()) as url:
        config = _config(tmp_path, tiny_model, url, em_data_dir)
        results = run_experiment(config)

        # Both adapters were trained by the online trainer and loaded into the engine.
        assert set(engine.adapters) == {"experiment-sft", "experiment-sft-dpo"}
        sft = json.loads((config.adapter_dir("sft") / "report.json").read_text())
        dpo = json.loads((config.adapter_dir("sft-dpo") / "report.json").read_text())
        assert (sft["status"], sft["steps"], sft["samples_reviewed"]) == ("trained", 2, 0)
        assert (dpo["status"], dpo["steps"]) == ("trained", 2)
        assert dpo["samples_reviewed"] >= 1 and dpo["verdicts"]["unethical"] >= 1

        # Each arm's answers came from its own model; the proxy's were rewritten.
        generated = [b["model"] for b in engine.of_kind("generate")]
        per_arm = QUESTIONS * SAMPLES
        assert generated.count("experiment-sft") == per_arm
        assert generated.count("experiment-sft-dpo") == per_arm
        reports = {
            arm: json.loads((config.em_dir(arm) / "report.json").read_text())
            for arm in ("base", "proxy", "sft", "sft-dpo")
        }
        rates = {arm: r["overall"]["misaligned_rate"] for arm, r in reports.items()}
        assert rates == {"base": 1.0, "proxy": 0.0, "sft": 1.0, "sft-dpo": 0.0}
        assert all(r["complete"] and r["overall"]["counted"] == per_arm for r in reports.values())
        proxy_answers = (config.em_dir("proxy") / "answers.jsonl").read_text().splitlines()
        assert all(
            json.loads(line)["conscience"]["action"] == "rewritten" for line in proxy_answers
        )

        # The table and the chart, from those reports.
        assert results == Path(config.results)
        text = results.read_text()
        assert text.count("| base (") == 1 and f"{per_arm}/{per_arm} = 100.0%" in text
        assert "| sft-dpo (SFT + conscience DPO) | 0/8 = 0.0%" in text
        assert f"action_rewritten: {per_arm}" in text
        assert "conscience train --online" in text and "conscience eval em" in text
        assert Path(config.chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ran = [(r["phase"], r["arm"]) for r in _journal(config) if r["status"] == "ran"]
        assert ran[:2] == [("train", "sft"), ("train", "sft-dpo")]
        assert [arm for phase, arm in ran if phase == "eval"] == list(config.arms)

        # A rerun asks the engine nothing and trains nothing: every arm is finished. The
        # hand-written text around the generated block survives.
        results.write_text("# Results\n\nHand-written reading.\n\n" + text + "\nMore.\n")
        asked = len(engine.requests)
        lines = len(_journal(config))
        run_experiment(config)
        assert len(engine.requests) == asked
        again = _journal(config)[lines:]
        skipped = [(r["phase"], r["arm"]) for r in again if r["status"] == "skipped"]
        assert skipped == [("train", "sft"), ("train", "sft-dpo")] + [
            ("eval", arm) for arm in config.arms
        ]
        rewritten = results.read_text()
        assert rewritten.startswith("# Results\n\nHand-written reading.\n")
        assert rewritten.endswith(END + "\n\nMore.\n") and rewritten.count(BEGIN) == 1
