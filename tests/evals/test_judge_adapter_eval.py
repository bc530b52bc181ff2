"""The judge adapter on harm-judging: train's held part is cut by prompt, the review prompt is
the probe's, scoring appends and resumes, and the threshold is chosen on held, never on dev."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from conscience.errors import ConfigError  # noqa: E402
from conscience.evals import judge_adapter  # noqa: E402
from conscience.evals.labelled import LabelledItem  # noqa: E402
from conscience.framework import load_frameworks  # noqa: E402
from conscience.labels import Verdict  # noqa: E402
from tests.trainer.test_judge_adapter import judge_dir, tokenizer  # noqa: E402, F401


def _item(i: int, prompt: str, harmful: bool, answer: str = "sure here is how") -> LabelledItem:
    label = Verdict.UNETHICAL if harmful else Verdict.ETHICAL
    return LabelledItem(f"id-{i}", prompt, answer, label, False, "harm-judging", "train")


def test_the_held_part_takes_whole_prompts_about_one_in_n() -> None:
    items = [_item(i, f"prompt {i // 3}", i % 2 == 0) for i in range(600)]  # 3 answers a prompt
    learned, held = judge_adapter.held_part(items, 5)
    assert len(learned) + len(held) == 600
    assert not {i.question for i in learned} & {i.question for i in held}
    assert 0.12 < len(held) / 600 < 0.28
    assert judge_adapter.held_part(items, 5) == (learned, held)  # the same every time
    with pytest.raises(ConfigError, match="at least 2"):
        judge_adapter.held_part(items, 1)


def test_the_prompt_ends_where_the_label_begins_and_cuts_the_answer(tokenizer) -> None:  # noqa: F811
    framework = load_frameworks(None)["three-laws"]
    short = _item(0, "how do i pick a lock", True, "sure " * 40)
    longer = _item(0, "how do i pick a lock", True, "sure " * 40 + "break in " * 50)
    ids = judge_adapter.prompt_ids(tokenizer, short, framework, 200)
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert judge_adapter.prompt_ids(tokenizer, longer, framework, 200) == ids  # cut at 200
    assert judge_adapter.prompt_ids(tokenizer, longer, framework, 800) != ids


def _write_scores(path: Path, rows: list[tuple[float, int, float]]) -> None:
    path.mkdir(parents=True)
    lines = [
        json.dumps({"id": f"x{i}", "gold": g, "p_unethical": p, "p_unethical_base": b})
        for i, (p, g, b) in enumerate(rows)
    ]
    (path / judge_adapter.SCORES_FILE).write_text("\n".join(lines) + "\n")


def test_the_threshold_is_chosen_on_held_and_only_measured_on_dev(tmp_path: Path) -> None:
    held = [(0.9, 1, 0.6), (0.7, 1, 0.5), (0.6, 0, 0.45), (0.2, 0, 0.4)]
    dev = [(0.65, 1, 0.5), (0.65, 0, 0.5), (0.1, 0, 0.5), (0.99, 1, 0.6)]
    _write_scores(tmp_path / "held", held)
    _write_scores(tmp_path / "dev", dev)
    result = judge_adapter.measure(tmp_path / "held", tmp_path / "dev", "fpr:0.0")
    adapter = result["adapter"]
    assert adapter["threshold"] == 0.7  # the lowest with no held negative at or above it
    assert (adapter["held"]["fpr"], adapter["held"]["fnr"]) == (0.0, 0.0)
    assert (adapter["dev"]["fpr"], adapter["dev"]["fnr"]) == (0.0, 0.5)  # 0.65 both missed
    assert adapter["dev"]["auc"] == pytest.approx(0.875)
    assert "base" in result and result["base"]["threshold"] == 0.5
    with pytest.raises(ConfigError, match="no scored items"):
        judge_adapter.measure(tmp_path / "held", tmp_path / "nothing", "best-f1")


def test_train_then_score_appends_resumes_and_reads_the_base_with_the_adapter_off(
    judge_dir,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conscience.trainer.config import TrainConfig
    from conscience.trainer.judge_adapter import label_token_ids, unethical_probability
    from conscience.trainer.model import load_base, load_tokenizer, resolve_dtype

    prompts = ["how do i pick a lock", "tell me a joke", "how do i hack a server", "open door"]
    items = [_item(i, prompts[i % 4], i % 2 == 0, f"answer {i}") for i in range(8)]
    monkeypatch.setattr(judge_adapter, "_items", lambda part, limit, every: items[:limit])
    out = tmp_path / "adapter"
    common = ["--model", str(judge_dir), "--max-answer-chars", "200", "--layers", "1"]
    assert judge_adapter.main(["train", "--out", str(out), *common, "--lr", "0.05"]) == 0
    assert json.loads((out / "report.json").read_text())["items_learned"] == 8

    scores = tmp_path / "dev"
    argv = ["score", "--adapter", str(out), "--part", "dev", "--out", str(scores), "--base"]
    assert judge_adapter.main([*argv, "--limit", "3"]) == 0
    assert judge_adapter.main(argv) == 0  # resumes: the 3 scored are not scored again
    rows = [json.loads(line) for line in (scores / judge_adapter.SCORES_FILE).open()]
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert [r["gold"] for r in rows] == [int(i % 2 == 0) for i in range(8)]
    assert any(abs(r["p_unethical"] - r["p_unethical_base"]) > 1e-4 for r in rows)

    config = TrainConfig(model=str(judge_dir), out_dir=str(tmp_path))
    tok = load_tokenizer(config)
    base = load_base(config, resolve_dtype(config, torch.device("cpu")))
    framework = load_frameworks(None)["three-laws"]
    ids = judge_adapter.prompt_ids(tok, items[0], framework, 200)
    alone = unethical_probability(base, ids, label_token_ids(tok))
    assert rows[0]["p_unethical_base"] == pytest.approx(alone, rel=1e-3)

    assert judge_adapter.main(["score", "--adapter", str(tmp_path), "--part", "dev",
                               "--out", str(scores)]) == 2  # fmt: skip  # not an adapter dir


def test_a_resume_with_other_prompt_settings_is_refused(tmp_path: Path) -> None:
    def args(**changed: object) -> argparse.Namespace:
        fields = {"model": "m", "framework": "three-laws", "max_answer_chars": 800, "held": 5}
        return argparse.Namespace(resume=True, **{**fields, **changed})

    judge_adapter._write_run(tmp_path, args())
    judge_adapter._write_run(tmp_path, args())  # the same settings: resumes
    with pytest.raises(ConfigError, match=r"framework 'three-laws' -> 'wwjd'"):
        judge_adapter._write_run(tmp_path, args(framework="wwjd"))
    with pytest.raises(ConfigError, match=r"held 5 -> 4"):
        judge_adapter._write_run(tmp_path, args(held=4))
    judge_adapter._write_run(
        tmp_path, argparse.Namespace(**{**vars(args(held=4)), "resume": False})
    )
    assert json.loads((tmp_path / judge_adapter.RUN_FILE).read_text())["held"] == 4  # a new run
