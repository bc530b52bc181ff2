"""The LoRA recipe flags of ``conscience train``: alpha, target modules, rank-stabilised LoRA.

Betley et al.'s open-model run uses rs-LoRA (r=32, alpha=64) on all seven projections; these
flags reach peft's ``LoraConfig`` and the adapter_config.json that vLLM reads.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conscience.trainer.cli import _config, add_train_commands  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402
from conscience.trainer.model import load_model  # noqa: E402

SEVEN = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", "--base-model", "m", "--out", "o", *argv])


def test_flags_reach_the_config() -> None:
    args = _parse(
        "--lora-r", "32", "--lora-alpha", "64", "--use-rslora", "--lora-targets", SEVEN,
        "--weight-decay", "0.01", "--gradient-checkpointing",
    )  # fmt: skip
    config = _config(args)
    assert config.gradient_checkpointing is True
    assert (config.lora_r, config.lora_alpha, config.use_rslora) == (32, 64, True)
    assert config.lora_targets == tuple(SEVEN.split(","))
    assert config.weight_decay == 0.01
    plain = _config(_parse("--lora-targets", "all-linear"))
    assert plain.lora_targets == "all-linear"
    assert plain.use_rslora is False and plain.lora_alpha == TrainConfig.lora_alpha
    assert plain.gradient_checkpointing is False


@pytest.mark.parametrize("rslora", [False, True])
def test_rslora_scales_by_the_square_root_of_the_rank(
    tiny_model_dir: Path, tmp_path: Path, rslora: bool
) -> None:
    config = TrainConfig(
        model=str(tiny_model_dir), out_dir=str(tmp_path), lora_r=4, lora_alpha=8, use_rslora=rslora
    )
    model = load_model(config, torch.device("cpu"), torch.float32)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = 8 / math.sqrt(4) if rslora else 8 / 4
    assert layer.scaling["default"] == pytest.approx(expected)
    model.save_pretrained(str(tmp_path))
    saved = (tmp_path / "adapter_config.json").read_text()
    assert f'"use_rslora": {"true" if rslora else "false"}' in saved
