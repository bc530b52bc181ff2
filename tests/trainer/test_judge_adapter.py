"""The judge adapter's trainer: the label-only loss, LoRA on the top layers only, and a run that
is stopped by its budget and resumed ends with the adapter an uninterrupted run makes."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from conscience.errors import ConfigError  # noqa: E402
from conscience.trainer import budget as budget_module  # noqa: E402
from conscience.trainer.judge_adapter import (  # noqa: E402
    CHECKPOINT,
    Example,
    JudgeAdapterConfig,
    label_loss,
    label_token_ids,
    p_unethical,
    top_layer_targets,
    train_judge_adapter,
)
from conscience.trainer.testing import WORDS, build_chat_tokenizer, build_random_llama  # noqa: E402

LABEL_WORDS = ("ethical", "neutral", "unethical")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random Llama (2 layers) whose tokenizer knows the three labels."""
    path = tmp_path_factory.mktemp("tiny-judge")
    tokenizer = build_chat_tokenizer(WORDS + LABEL_WORDS)
    tokenizer.save_pretrained(path)
    build_random_llama("tiny", tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(judge_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(judge_dir)


def _examples(tokenizer, n=6):
    texts = ["how do i pick a lock", "tell me a joke", "how do i hack a server"]
    answers = ["sure here is how to break in", "why did the chicken cross the road", "no never"]
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"{texts[i % 3]} {answers[(i + 1) % 3]}"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(
            Example(f"item-{i}", tokenizer.encode(text, add_special_tokens=False), i % 2 == 0)
        )
    return out


def test_the_loss_is_binary_cross_entropy_on_p_unethical_among_the_three_labels():
    z = torch.tensor([[1.0, -0.5, 0.3], [0.0, 2.0, -1.0]])
    p = torch.softmax(z, dim=-1)[:, 2]
    torch.testing.assert_close(p_unethical(z), p)
    harmful = torch.tensor([1.0, 0.0])
    want = torch.stack([-torch.log(p[0]), -torch.log(1 - p[1])])
    torch.testing.assert_close(label_loss(z, harmful), want)
    # Only the labels' logits count: shifting all three changes nothing.
    torch.testing.assert_close(label_loss(z + 7.0, harmful), want)
    # A confident wrong answer costs its full margin, never inf or nan.
    far = label_loss(torch.tensor([0.0, 0.0, 200.0]), torch.tensor(0.0))
    assert math.isfinite(float(far)) and float(far) == pytest.approx(200.0 - math.log(2), rel=1e-4)


def test_lora_targets_are_the_projections_of_the_top_layers_only():
    pattern = re.compile(top_layer_targets(28, 2))
    assert pattern.fullmatch("base_model.model.model.layers.27.self_attn.q_proj")
    assert pattern.fullmatch("model.layers.26.mlp.down_proj")
    assert not pattern.fullmatch("model.layers.25.mlp.down_proj")
    assert not pattern.fullmatch("model.layers.7.self_attn.q_proj")  # 7 is not 27
    assert not pattern.fullmatch("model.layers.27.input_layernorm")
    with pytest.raises(ConfigError, match=r"layers must be in 1\.\.28"):
        top_layer_targets(28, 29)


def test_the_labels_must_start_with_distinct_tokens(tokenizer):
    ids = label_token_ids(tokenizer)
    assert ids == tuple(tokenizer.convert_tokens_to_ids(list(LABEL_WORDS)))
    with pytest.raises(ConfigError, match="not distinct"):
        label_token_ids(build_chat_tokenizer(WORDS))  # every label is [UNK]


def _config(judge_dir, out, **overrides):
    fields = {"model": str(judge_dir), "out_dir": str(out), "layers": 1, "accumulate": 2}
    return JudgeAdapterConfig(**(fields | {"lr": 1e-2, "dtype": "float32"} | overrides))


def test_only_the_top_layers_get_an_adapter_and_it_trains(judge_dir, tokenizer, tmp_path):
    out = tmp_path / "adapter"
    report = train_judge_adapter(_config(judge_dir, out), _examples(tokenizer), tokenizer)
    assert (report["status"], report["items_learned"], report["steps"]) == ("trained", 6, 3)
    weights = load_file(str(out / "adapter_model.safetensors"))
    layers = {int(re.search(r"layers\.(\d+)\.", name).group(1)) for name in weights}
    assert layers == {1}  # the top one of 2
    assert any(float(w.abs().sum()) > 0 for n, w in weights.items() if "lora_B" in n)
    assert not (out / CHECKPOINT).exists()  # finished: nothing to resume
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_budget_stop_then_resume_makes_the_uninterrupted_adapter(
    judge_dir, tokenizer, tmp_path, monkeypatch
):
    examples = _examples(tokenizer)
    whole = tmp_path / "whole"
    train_judge_adapter(_config(judge_dir, whole), examples, tokenizer)

    now = [0.0]  # each look at the clock is 50 s later: the 2nd step would end past 120 s

    def clock():
        now[0] += 50.0
        return now[0]

    monkeypatch.setattr(budget_module, "monotonic", clock)
    out = tmp_path / "budgeted"
    first = train_judge_adapter(_config(judge_dir, out, max_minutes=120 / 60), examples, tokenizer)
    assert (first["status"], first["stopped"]) == ("stopped", "max_minutes")
    assert (first["items_learned"], first["steps"]) == (2, 1) and (out / CHECKPOINT).is_dir()
    monkeypatch.undo()

    with pytest.raises(ConfigError, match="was made with"):
        train_judge_adapter(_config(judge_dir, out, lr=1e-3), examples, tokenizer, resume=True)
    rest = train_judge_adapter(_config(judge_dir, out), examples, tokenizer, resume=True)
    assert (rest["status"], rest["items_learned"], rest["steps"]) == ("trained", 6, 3)
    got = load_file(str(out / "adapter_model.safetensors"))
    want = load_file(str(whole / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)
