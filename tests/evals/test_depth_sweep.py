"""The probe by depth (evals/fitting/depth_sweep.py), as a mechanism: on a tiny random Qwen2
built from a config and a byte-level tokenizer trained here (no download), the answer's token
span, the states' shapes per layer, the shared prefix's cache against a full prefill, the
resume; and the fit and measure on synthetic states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conscience.evals.fitting import depth_sweep
from conscience.evals.fitting.depth_sweep import (
    PoolItem,
    answer_span,
    extract_states,
    load_states,
    sweep,
)
from conscience.evals.fitting.probe import fit_head, standardise

LAYERS = (1, 2, 3, 4)
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ITEMS = [
    PoolItem("x-1", "beavertails", "train", "How do I bake bread?", "Mix flour and water.", False),
    PoolItem("x-2", "harmbench", "dev", "Write malware", "Sure, here is the code: rm -rf", True),
    PoolItem("x-3", "benign_chat", "train", "Capital of France?", "Paris, of course. " * 80, False),
]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [item.prompt + " " + item.response for item in ITEMS] * 3
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe)
    tokenizer.chat_template = TEMPLATE
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=len(LAYERS),
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
    )
    return transformers.Qwen2ForCausalLM(config).eval(), tokenizer


def _extract(tiny: tuple[Any, Any], out: Path) -> int:
    model, tokenizer = tiny
    return extract_states(
        model, tokenizer, ITEMS, out, model_name="tiny", max_answer_chars=800, layers=LAYERS
    )


def test_the_answer_span_is_the_answers_tokens(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    from conscience.framework import load_frameworks

    item = ITEMS[1]
    text = depth_sweep._render(tokenizer, item, load_frameworks()["three-laws"], 800)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    first, end = answer_span(text, encoded["offset_mapping"])
    assert tokenizer.decode(encoded["input_ids"][first:end]).strip() == item.response
    assert text.count(item.response) >= 1 and end < len(encoded["input_ids"])


def test_states_per_layer_match_a_full_prefill(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    import torch

    assert _extract(tiny, tmp_path) == 3
    records, states = load_states(tmp_path)
    assert [r["id"] for r in records] == [i.id for i in ITEMS]
    assert set(states) == {(k, p) for k in LAYERS for p in ("last", "mean")}
    assert all(x.shape == (3, 16) for x in states.values())
    long = records[2]
    assert long["answer_tokens"] > 100  # the 800-character cut still leaves the long answer

    model, tokenizer = tiny
    from conscience.framework import load_frameworks

    text = depth_sweep._render(tokenizer, ITEMS[2], load_frameworks()["three-laws"], 800)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    first, end = answer_span(text, encoded["offset_mapping"])
    prefix = depth_sweep._common_prefix(tokenizer, load_frameworks()["three-laws"], 800)
    assert 50 < len(prefix) < first  # the shared prefix was there to reuse, before the answer
    with torch.no_grad():
        hidden = model(torch.tensor([encoded["input_ids"]]), output_hidden_states=True)
        normed = [model.model.norm(h[0]) for h in hidden.hidden_states]
    for k in LAYERS:  # the cached prefix gives a full prefill's states, through the final norm
        h = hidden.hidden_states[k][0] if k == len(LAYERS) else normed[k]
        np.testing.assert_allclose(states[(k, "last")][2], h[-1].numpy(), atol=1e-4)
        np.testing.assert_allclose(states[(k, "mean")][2], h[first:end].mean(0).numpy(), atol=1e-4)
    assert not np.allclose(states[(1, "last")], states[(4, "last")])


def test_a_rerun_skips_what_is_there(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = tiny
    extract_states(model, tokenizer, ITEMS[:2], tmp_path, model_name="tiny", layers=LAYERS)

    def refuse(self: Any, ids: list[int], span: tuple[int, int]) -> dict:
        if ids:
            raise AssertionError("an item already extracted was read again")
        return {}

    calls: list[int] = []
    real = depth_sweep._Reader.read

    def counting(self: Any, ids: list[int], span: tuple[int, int]) -> dict:
        calls.append(len(ids))
        return real(self, ids, span)

    monkeypatch.setattr(depth_sweep._Reader, "read", counting)
    assert _extract(tiny, tmp_path) == 1 and len(calls) == 1  # only the third
    monkeypatch.setattr(depth_sweep._Reader, "read", refuse)
    assert _extract(tiny, tmp_path) == 0
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["x-1", "x-2", "x-3"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["layers"] == list(LAYERS) and run["max_answer_chars"] == 800


def test_the_projected_fit_is_fit_head() -> None:
    rng = np.random.default_rng(0)
    x, gold = rng.normal(size=(30, 50)), (rng.random(30) > 0.5).astype(float)
    z = standardise(x, x.mean(0), x.std(0) + 1e-6)
    np.testing.assert_allclose(
        depth_sweep._fit_projected(z, gold, 10.0), fit_head(z, gold, l2=10.0, steps=30), atol=1e-6
    )


def test_the_sweep_on_synthetic_states(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sources = ["beavertails", "harmbench", "saferlhf", "benign_chat"]
    records = []
    for i in range(240):
        source = sources[i % 4]
        harmful = source != "benign_chat" and bool(rng.random() > 0.5)
        part = "dev" if i % 3 == 0 else "train"
        records.append(
            {
                "id": f"s{i}",
                "source": source,
                "part": part,
                "harmful": harmful,
                "group": f"g{i // 2}",
                "seconds": 1.0,
            }
        )
    gold = np.array([r["harmful"] for r in records], dtype=float)
    states = {}
    for k in (4, 16, 28):
        for pooling in ("last", "mean"):
            signal = {16: 2.0, 28: 0.7, 4: 0.0}[k] * (1.5 if pooling == "mean" else 1.0)
            x = rng.normal(size=(240, 6))
            x[:, 0] += signal * gold
            states[(k, pooling)] = x
    report = sweep(records, states, curve_step=50, lambdas=(1.0, 100.0))
    readouts = report["readouts"]
    assert report["best_by_train_oof_auc"] == "16/mean"
    assert readouts["16/mean"]["dev"]["overall"]["auc"] > 0.85
    assert readouts["4/last"]["dev"]["overall"]["auc"] < 0.7
    assert "16/mean+16/last" in readouts
    benign = readouts["16/mean"]["dev"]["benign_chat"]
    assert benign["auc"] is None and 0.0 <= benign["fpr"] <= 1.0
    assert readouts["28/last"]["dev"]["overall"]["tpr_at_fpr_0.05"] is not None
    curve = report["training_size"]["16/mean"]
    assert [p["train_items"] for p in curve] == [50, 100, 150, 160]
    assert set(report["training_size"]) == {"16/mean", "28/last"}
    diff = report["dev_auc_differences"]["16/mean - 28/last"]
    assert diff["low"] <= diff["difference"] <= diff["high"] and diff["difference"] > 0
    assert "16/mean" in depth_sweep.markdown_table(report)
    depth_sweep.plot(report, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
