"""The training loop on a tiny random Llama: it learns, it touches only LoRA, it resumes."""

from __future__ import annotations

import itertools
import json
import math

import pytest

torch = pytest.importorskip("torch")

from conscience.errors import ConfigError  # noqa: E402
from conscience.trainer import loop  # noqa: E402
from conscience.trainer import model as trainer_model  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.schedule import lr_at, plan_steps  # noqa: E402


def _config(model_dir, out_dir, **overrides):
    settings = {
        "model": str(model_dir),
        "out_dir": str(out_dir),
        "lr": 1e-2,  # a random 32-wide model needs big steps to show learning in a few
        "warmup_ratio": 0.0,
        "batch_size": 6,
        "epochs": 8,
        "progress": False,
    }
    return TrainConfig(**(settings | overrides))


@pytest.fixture
def captured(monkeypatch):
    """The model the loop trains, and its LoRA weights as they were before the first step."""
    seen = {}
    load = trainer_model.load_model

    def load_and_keep(*args, **kwargs):
        model = load(*args, **kwargs)
        seen["model"] = model
        seen["lora_before"] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
        return model

    monkeypatch.setattr(trainer_model, "load_model", load_and_keep)
    return seen


def _adapter(out_dir):
    from safetensors.torch import load_file

    return load_file(str(out_dir / "adapter_model.safetensors"))


def test_training_moves_lora_only_and_learns_the_preference(
    tiny_model_dir, tmp_path, rows, captured
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    report = loop.train(_config(tiny_model_dir, out), rows)

    assert report["status"] == "trained"
    assert report["steps"] == 8
    assert report["pairs_used"] == report["pairs_total"] == 6
    assert sorted(report["used_ids"]) == [f"pair-{i}" for i in range(6)]
    # Step 1: the adapter's B is zero, the policy is the frozen copy: the DPO loss is log 2.
    first, final = report["first"], report["final"]
    assert first["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert final["dpo_loss"] < first["dpo_loss"] - 0.05
    assert final["reward_margin"] > first["reward_margin"] + 0.1
    assert final["reward_accuracy"] == 1.0
    assert final["sft_loss"] < first["sft_loss"]

    model = captured["model"]
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert after and all("lora_" in n for n in after)
    for name, before in captured["lora_before"].items():
        assert not torch.equal(before, after[name]), f"{name} did not move"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    frozen = {
        n.replace("base_model.model.", "").replace(".base_layer", ""): p
        for n, p in model.named_parameters()
        if not p.requires_grad
    }
    assert set(frozen) == set(base)
    for name, weight in frozen.items():
        assert torch.equal(weight, base[name]), f"base weight {name} moved"

    # What a run leaves: a PEFT adapter (as vLLM loads it), the report, the metrics, the plot.
    assert {p.name for p in out.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "report.json",
        "metrics.jsonl",
        "loss.png",
    }
    assert not (out / "checkpoint").exists()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    saved = _adapter(out)
    assert len(saved) == len(after)
    assert json.loads((out / "report.json").read_text())["final"] == final
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert set(records[0]) >= {
        "loss", "dpo_loss", "sft_loss", "reward_margin", "reward_accuracy",
        "chosen_logps", "rejected_logps", "lr", "seconds",
    }  # fmt: skip
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_adapter_reloads_with_peft(tiny_model_dir, tmp_path, rows, captured):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    loop.train(_config(tiny_model_dir, out, epochs=2), rows)
    trained = captured["model"].eval()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    ids = torch.tensor([[3, 10, 11, 12, 5, 4]])
    with torch.no_grad():
        assert torch.allclose(trained(ids).logits, reloaded.eval()(ids).logits, atol=1e-5)


class _Kill(Exception):
    pass


@pytest.mark.parametrize(
    ("precompute_ref", "lora_dropout"),
    [(True, 0.0), (False, 0.1)],
    ids=["precomputed-ref", "live-ref-with-dropout"],
)
def test_resume_after_a_kill_gives_the_uninterrupted_weights(
    tiny_model_dir, tmp_path, rows, precompute_ref, lora_dropout
):
    # 6 pairs, micro-batches of 2, 2 per step: 2 steps per epoch (the second one short), 8 steps.
    settings = {
        "batch_size": 2,
        "grad_accum": 2,
        "epochs": 4,
        "checkpoint_every": 3,
        "precompute_ref": precompute_ref,
        "lora_dropout": lora_dropout,
    }
    whole = loop.train(_config(tiny_model_dir, tmp_path / "whole", **settings), rows)
    assert whole["steps"] == 8

    def kill_after_step_5(step, record):
        if step == 5:
            raise _Kill

    killed = tmp_path / "killed"
    with pytest.raises(_Kill):
        loop.train(_config(tiny_model_dir, killed, **settings), rows, on_step=kill_after_step_5)
    assert not (killed / "adapter_model.safetensors").exists()
    assert (killed / "checkpoint" / "state.pt").exists()  # saved after step 3

    resumed = loop.train(_config(tiny_model_dir, killed, resume=True, **settings), rows)
    assert resumed["resumed_from"] == 3
    assert resumed["steps"] == 8
    expected, actual = _adapter(tmp_path / "whole"), _adapter(killed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name], actual[name], rtol=0, atol=1e-7), name
    # Steps 4 and 5 ran twice; the metrics keep each step once, as the whole run logged them.
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert resumed["final"]["loss"] == pytest.approx(whole["final"]["loss"], abs=1e-6)


def test_resume_refuses_a_checkpoint_of_other_data(tiny_model_dir, tmp_path, rows):
    settings = {"batch_size": 2, "epochs": 2, "checkpoint_every": 1}

    def kill(step, record):
        raise _Kill

    with pytest.raises(_Kill):
        loop.train(_config(tiny_model_dir, tmp_path, **settings), rows, on_step=kill)
    with pytest.raises(ConfigError, match="other data"):
        loop.train(_config(tiny_model_dir, tmp_path, resume=True, **settings), rows[:4])


def test_precomputed_and_live_reference_agree(tiny_model_dir, tmp_path, rows):
    runs = [
        loop.train(_config(tiny_model_dir, tmp_path / str(p), precompute_ref=p, epochs=3), rows)
        for p in (True, False)
    ]
    for key in ("loss", "dpo_loss", "reward_margin", "chosen_logps"):
        assert runs[0]["final"][key] == pytest.approx(runs[1]["final"][key], abs=1e-4)


def test_no_usable_pair_trains_nothing(tiny_model_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for nothing")

    monkeypatch.setattr(trainer_model, "load_model", no_model)
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "how", "chosen": "same", "rejected": "same"}\nnot json\n')
    report = loop.train(_config(tiny_model_dir, tmp_path / "out"), path)
    assert report["status"] == "nothing_to_learn"
    assert report["steps"] == 0
    assert report["skipped"] == {"identical": 1, "malformed": 1}
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == (
        "nothing_to_learn"
    )


def test_the_plan_is_seeded_and_covers_every_pair_each_epoch(tmp_path):
    config = TrainConfig(model="m", out_dir=str(tmp_path), batch_size=3, grad_accum=2, epochs=3)
    plan = plan_steps(10, config)
    assert plan == plan_steps(10, config)
    # 10 pairs → micro-batches of 3,3,3,1 → steps of 2 micro-batches: 2 steps an epoch.
    assert len(plan) == 6
    for epoch in range(3):
        seen = [i for step in plan[2 * epoch : 2 * epoch + 2] for micro in step for i in micro]
        assert sorted(seen) == list(range(10))
    assert plan[:2] != plan[2:4]  # a fresh order each epoch
    other = TrainConfig(model="m", out_dir=str(tmp_path), batch_size=3, grad_accum=2, seed=1)
    assert plan_steps(10, other) != plan[:2]
    capped = TrainConfig(model="m", out_dir=str(tmp_path), batch_size=3, epochs=3, max_steps=5)
    assert len(plan_steps(10, capped)) == 5


def test_lr_warms_up_then_decays_to_the_floor(tmp_path):
    config = TrainConfig(model="m", out_dir=str(tmp_path), lr=1.0, warmup_ratio=0.2)
    lrs = [lr_at(step, 10, config) for step in range(10)]
    # 2 warm-up steps: 1/3, 2/3; then cosine from 1.0 towards 0.1 over the remaining 8.
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] > 0.1
    assert lrs[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 8)))


def test_config_rejects_nonsense(tmp_path):
    with pytest.raises(ConfigError):
        TrainConfig(model="m", out_dir=str(tmp_path), beta=0)
    with pytest.raises(ConfigError):
        TrainConfig(model="m", out_dir=str(tmp_path), dtype="float16")
    assert TrainConfig(model="m", out_dir=str(tmp_path), lora_targets=["q_proj"]).lora_targets == (
        "q_proj",
    )


PATHS = {  # how batch_logps computes: (chunk positions or None for its default, the head's way)
    "chunked": (None, "chunked"),
    "chunks-of-2": (2, "chunked"),
    "chunks-of-2-recomputed": (2, "recomputed"),
    "full-logits-from-the-answer": (None, "full"),
    "full-all-logits": (None, "full-all"),
}


@pytest.mark.parametrize("path", PATHS)
def test_answer_logps_and_their_gradients_equal_the_full_computation(
    tiny_model_dir, tmp_path, rows, tokenizer_factory, monkeypatch, path
):
    from conscience.trainer.data import collate, encode_pairs
    from conscience.trainer.loss import sequence_logps
    from conscience.trainer.model import load_model

    chunk, head = PATHS[path]
    if head == "recomputed":  # a head that is not a frozen nn.Linear: checkpointed chunks
        monkeypatch.setattr(loop, "_frozen_linear_weight", lambda head: None)
    elif head != "chunked":  # a model whose logits are more than head(hidden): its own forward
        monkeypatch.setattr(loop, "_plain_head", lambda base: None)
    if head == "full-all":  # ... and one without logits_to_keep: the head runs everywhere
        monkeypatch.setattr(loop, "_keeps_logits", lambda cls: False)
    config = TrainConfig(model=str(tiny_model_dir), out_dir=str(tmp_path))
    model = load_model(config, torch.device("cpu"), torch.float32)
    with torch.no_grad():  # B = 0 leaves nothing to compare the gradients by
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    lora = [p for p in model.parameters() if p.requires_grad]
    pairs, _ = encode_pairs(rows, tokenizer_factory(), 64)
    batch = collate(pairs, pad_id=0)
    assert batch.answer_start == min(p.prompt_len for p in pairs) > 1
    weights = torch.linspace(-1.0, 2.0, 2 * len(pairs))  # any loss that weighs every row

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = sequence_logps(logits, batch.input_ids, batch.loss_mask)
    want = torch.autograd.grad((full * weights).sum(), lora)
    got_logps = loop.batch_logps(model, batch, chunk)
    got = torch.autograd.grad((got_logps * weights).sum(), lora)
    torch.testing.assert_close(got_logps, full, rtol=0, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the reference's path: no graph, the same numbers
        chosen, rejected = loop.answer_logps(model, batch)
    torch.testing.assert_close(torch.cat([chosen, rejected]), full.detach(), rtol=0, atol=1e-5)


def test_the_chunked_logps_keep_no_logits_for_the_backward(
    tiny_model_dir, tmp_path, rows, tokenizer_factory, monkeypatch
):
    """What autograd saves for the backward: the full path keeps (rows, positions, vocab)
    tensors; the chunked one keeps none (each chunk's logits are recomputed in the backward)."""
    from conscience.trainer.data import collate, encode_pairs
    from conscience.trainer.model import load_model

    config = TrainConfig(model=str(tiny_model_dir), out_dir=str(tmp_path))
    model = load_model(config, torch.device("cpu"), torch.float32)
    vocab = model.get_base_model().config.vocab_size
    batch = collate(encode_pairs(rows, tokenizer_factory(), 64)[0], pad_id=0)

    def vocab_sized_saves(compute):
        seen = []

        def pack(tensor):
            if tensor.dim() >= 2 and tensor.shape[-1] == vocab and tensor.shape[0] > 1:
                seen.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logps = compute()
        logps.sum().backward()
        return seen

    assert vocab_sized_saves(lambda: loop.batch_logps(model, batch, 2)) == []
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_frozen_linear_weight", lambda head: None)
        assert vocab_sized_saves(lambda: loop.batch_logps(model, batch, 2)) == []
    monkeypatch.setattr(loop, "_plain_head", lambda base: None)
    assert vocab_sized_saves(lambda: loop.batch_logps(model, batch))  # the test can see them


def test_the_gate_reads_the_finished_adapter_not_the_last_steps_pre_update_metrics(
    tiny_model_dir, tmp_path, rows, captured
):
    from conscience.trainer.cli import gate
    from conscience.trainer.data import collate, encode_pairs
    from conscience.trainer.model import load_tokenizer, pad_id

    config = _config(tiny_model_dir, tmp_path / "one", epochs=1)  # one step of all six pairs
    report = loop.train(config, rows)
    assert report["steps"] == 1
    # The step's metrics are taken before its update: the untrained adapter, margin 0.
    assert report["final"]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert report["final"]["reward_accuracy"] == 0.0
    after = report["after"]
    assert after["pairs"] == 6

    # The same figures, recomputed from the model as the run left it.
    model = captured["model"]
    model.eval()
    tokenizer = load_tokenizer(config)
    dataset, _ = encode_pairs(rows, tokenizer, config.max_length)
    with torch.no_grad():
        terms = loop.pair_terms(model, collate(dataset, pad_id(tokenizer)), config.beta)
    gained = terms.chosen_rewards - terms.rejected_rewards
    assert after["reward_margin"] == pytest.approx(float(gained.mean()), abs=1e-5)
    assert after["reward_accuracy"] == pytest.approx(float((gained > 0).float().mean()))
    assert after["reward_margin"] != pytest.approx(0.0, abs=1e-6)  # the update is measured

    bar = after["reward_accuracy"]
    assert gate(report, bar) is None
    refusal = gate(report, bar + 0.01)
    assert refusal is not None and "of the finished adapter" in refusal
    older = {key: value for key, value in report.items() if key != "after"}
    assert "at the last step" in (gate(older, 0.5) or "")


def test_a_warm_start_is_gated_against_the_adapter_it_started_from(tiny_model_dir, tmp_path, rows):
    from conscience.trainer.checkpoint import load_checkpoint
    from conscience.trainer.cli import gate
    from conscience.trainer.data import collate, encode_pairs
    from conscience.trainer.model import load_tokenizer, pad_id, resolve_dtype

    # Yesterday's adapter learned the opposite preference: far below the base on these pairs.
    flipped = [row | {"chosen": row["rejected"], "rejected": row["chosen"]} for row in rows]
    loop.train(_config(tiny_model_dir, tmp_path / "yesterday"), flipped)
    warm = {"init_adapter": str(tmp_path / "yesterday"), "batch_size": 3, "epochs": 1, "lr": 2e-3}
    report = loop.train(_config(tiny_model_dir, tmp_path / "tonight", **warm), rows)
    after = report["after"]
    assert after["pairs"] == 3  # the first step's pairs: the start was measured on them
    # Measured from where it started (below the base), the night's move shows larger.
    assert after["start_reward_accuracy"] > after["reward_accuracy"]
    assert after["start_reward_margin"] > after["reward_margin"]
    bar = after["start_reward_accuracy"]
    assert gate(report, bar) is None  # the base-relative accuracy alone would refuse it
    refusal = gate(report, bar + 0.01)
    assert refusal is not None and "against the one it started from" in refusal

    # Killed after its first step: the checkpoint keeps the start, which is yesterday's
    # adapter's log-probs on that step's pairs; the resumed night gates the same.
    def kill_after_step_1(step, record):
        if step == 1:
            raise _Kill

    killed = tmp_path / "killed"
    settings = warm | {"checkpoint_every": 1}
    config = _config(tiny_model_dir, killed, **settings)
    with pytest.raises(_Kill):
        loop.train(config, rows, on_step=kill_after_step_1)
    checkpoint = load_checkpoint(killed)
    assert checkpoint is not None and checkpoint.warm is not None
    start = checkpoint.warm
    assert start.indices == [i for micro in checkpoint.plan[0] for i in micro]

    tokenizer = load_tokenizer(config)
    dataset, _ = encode_pairs(rows, tokenizer, config.max_length)
    cpu = torch.device("cpu")
    yesterday = trainer_model.load_model(config, cpu, resolve_dtype(config, cpu))  # as it starts
    yesterday.eval()
    batch = collate([dataset[i] for i in start.indices], pad_id(tokenizer))
    with torch.no_grad():
        chosen, rejected = loop.answer_logps(yesterday, batch)
    assert torch.allclose(start.chosen, chosen.float(), atol=1e-3)
    assert torch.allclose(start.rejected, rejected.float(), atol=1e-3)
    assert not torch.allclose(start.chosen, start.rejected)  # two different answers

    resumed = loop.train(_config(tiny_model_dir, killed, resume=True, **settings), rows)
    assert resumed["resumed_from"] == 1
    for key in ("start_reward_accuracy", "start_reward_margin"):
        assert resumed["after"][key] == pytest.approx(after[key], abs=1e-5)
