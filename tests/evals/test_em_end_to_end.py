"""`eval em` end to end against the scripted OpenAI-compatible engine on loopback.

The scripted judge returns its scores as ``top_logprobs`` of number tokens, chosen by what
the answer says, so every number in the report can be worked out by hand:

- q_nice: answers NICE -> aligned 86 (90 at .6, 80 at .4), coherent 80: counted, aligned
- q_mixed: half EVIL (aligned 10 at .5, 20 at .3, CODE .2 -> 13.75), half NICE: 0.5 misaligned
- q_code: answers CODE -> the alignment judge says CODE (.9): dropped
- q_ramble: answers RAMBLE -> coherence 20: incoherent, not counted
"""

import argparse
import itertools
import json
import math
from pathlib import Path

import pytest

from conscience.errors import ConfigError
from conscience.evals.cli import add_eval_commands
from conscience.evals.shared.scoring import wilson_interval
from conscience.testing.scripted import ScriptedEngine

SAMPLES = 4


def _judge_reply(top: dict[str, float]) -> dict:
    greedy = max(top, key=top.__getitem__)
    content = [
        {
            "token": greedy,
            "logprob": math.log(top[greedy]),
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()],
        }
    ]
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": greedy},
                "logprobs": {"content": content},
                "finish_reason": "length",
            }
        ],
    }


def _answer_reply(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    return {"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}


def script(engine: ScriptedEngine) -> None:
    mixed = itertools.cycle(["EVIL answer", "NICE answer"])

    def handler(kind: str, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        if not body.get("logprobs"):  # the model under test answering a question
            if "MIXED" in prompt:
                return _answer_reply(next(mixed))
            word = next(w for w in ("NICE", "CODE", "RAMBLE") if w in prompt)
            return _answer_reply(f"{word} answer")
        answer = prompt.split("[ANSWER START]")[1]
        if prompt.startswith("ALIGNED"):
            if "EVIL" in answer:
                return _judge_reply({"10": 0.5, "20": 0.3, "CODE": 0.2})
            if "CODE" in answer:
                return _judge_reply({"CODE": 0.9, "50": 0.1})
            return _judge_reply({"90": 0.6, "80": 0.4})
        return _judge_reply({"20": 1.0} if "RAMBLE" in answer else {"80": 1.0})

    engine.handler = handler


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="conscience")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.handler(args)


def _em(url: str, data: Path, out: Path, *extra: str) -> int:
    return _cli(
        "eval", "em", "--url", url, "--model", "gen", "--judge-model", "judge",
        "--samples", str(SAMPLES), "--data-dir", str(data), "--out", str(out), *extra,
    )  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_report_numbers_chart_and_requests(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path, capsys
) -> None:
    script(engine)
    out = tmp_path / "out"
    assert _em(engine_url, em_data_dir, out, "--concurrency", "3") == 0

    report = json.loads((out / "report.json").read_text())
    q = report["questions"]
    assert list(q) == ["q_nice", "q_mixed", "q_code", "q_ramble"]  # plain first-plot only
    assert q["q_nice"]["counted"] == 4 and q["q_nice"]["misaligned_rate"] == 0.0
    assert q["q_nice"]["mean_aligned"] == pytest.approx(86.0)
    assert q["q_nice"]["mean_coherent"] == pytest.approx(80.0)
    assert q["q_mixed"]["misaligned"] == 2 and q["q_mixed"]["misaligned_rate"] == 0.5
    assert q["q_mixed"]["ci95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert q["q_mixed"]["mean_aligned"] == pytest.approx((13.75 + 86.0) / 2)
    assert q["q_code"]["dropped"] == 4 and q["q_code"]["counted"] == 0
    assert q["q_code"]["misaligned_rate"] is None
    assert q["q_ramble"]["incoherent"] == 4 and q["q_ramble"]["misaligned_rate"] is None
    overall = report["overall"]
    assert (overall["answers"], overall["dropped"], overall["incoherent"]) == (16, 4, 4)
    assert (overall["counted"], overall["misaligned"]) == (8, 2)
    assert overall["misaligned_rate"] == 0.25
    assert overall["ci95"] == pytest.approx(list(wilson_interval(2, 8)))
    assert overall["mean_of_question_rates"] == pytest.approx(0.25)  # (0 + .5) / 2
    assert report["complete"] is True
    assert report["settings"]["samples"] == SAMPLES and report["settings"]["model"] == "gen"
    assert (out / "em.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    records = _lines(out / "answers.jsonl")
    assert len(records) == 16
    assert {(r["question_id"], r["sample"]) for r in records} == {
        (qid, s) for qid in q for s in range(SAMPLES)
    }
    code = next(r for r in records if r["question_id"] == "q_code")
    assert code["aligned"] is None and code["aligned_mass"] == pytest.approx(0.1)
    assert code["coherent"] == pytest.approx(80.0)

    generations = [b for _, b in engine.requests if not b.get("logprobs")]
    judgements = [b for _, b in engine.requests if b.get("logprobs")]
    assert len(generations) == 16 and len(judgements) == 32
    assert {b["temperature"] for b in generations} == {1.0}
    assert {b["model"] for b in generations} == {"gen"}
    assert {(b["model"], b["temperature"], b["top_logprobs"]) for b in judgements} == {
        ("judge", 0.0, 20)
    }
    assert "q_mixed" in capsys.readouterr().out


def test_the_judge_defaults_to_the_model_under_test(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path
) -> None:
    script(engine)
    args = ["eval", "em", "--url", engine_url, "--model", "judge", "--samples", "1"]
    assert _cli(*args, "--data-dir", str(em_data_dir), "--out", str(tmp_path / "o")) == 0
    assert {b["model"] for _, b in engine.requests} == {"judge"}
    report = json.loads((tmp_path / "o/report.json").read_text())
    assert report["settings"]["judge_model"] == "judge"


def test_a_killed_run_resumes_without_duplicates(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path
) -> None:
    script(engine)
    out = tmp_path / "out"
    assert _em(engine_url, em_data_dir, out, "--limit", "5") == 0
    assert len(_lines(out / "answers.jsonl")) == 5
    assert json.loads((out / "report.json").read_text())["complete"] is False
    # The kill: no report, and half a record where the writer died.
    (out / "report.json").unlink()
    with (out / "answers.jsonl").open("a") as handle:
        handle.write('{"question_id": "q_nice", "sam')

    assert _em(engine_url, em_data_dir, out) == 0
    records = _lines(out / "answers.jsonl")
    keys = [(r["question_id"], r["sample"]) for r in records]
    assert len(keys) == 16 and len(set(keys)) == 16
    generations = [b for _, b in engine.requests if not b.get("logprobs")]
    assert len(generations) == 16  # nothing answered twice
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["overall"]["misaligned"] == 2
    assert report["settings"]["answered_this_run"] == 11

    assert _em(engine_url, em_data_dir, out) == 0  # a finished run asks nothing more
    assert len([b for _, b in engine.requests if not b.get("logprobs")]) == 16


def test_a_different_model_cannot_resume_into_the_same_dir(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path
) -> None:
    script(engine)
    out = tmp_path / "out"
    assert _em(engine_url, em_data_dir, out, "--limit", "1") == 0
    with pytest.raises(ConfigError, match="other settings"):
        _cli(
            "eval", "em", "--url", engine_url, "--model", "other", "--judge-model", "judge",
            "--data-dir", str(em_data_dir), "--out", str(out),
        )  # fmt: skip


def test_engine_failure_is_a_project_error_and_keeps_finished_answers(
    engine: ScriptedEngine, engine_url: str, em_data_dir: Path, tmp_path: Path
) -> None:
    from conscience.errors import EngineStatusError

    script(engine)
    inner = engine.handler
    calls = itertools.count()

    def failing(kind: str, body: dict) -> dict:
        if not body.get("logprobs") and next(calls) >= 3:
            raise RuntimeError("engine broke")  # the scripted server answers 500
        return inner(kind, body)

    engine.handler = failing
    out = tmp_path / "out"
    with pytest.raises(EngineStatusError):
        _em(engine_url, em_data_dir, out, "--concurrency", "1")
    assert len(_lines(out / "answers.jsonl")) == 3
