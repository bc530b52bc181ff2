"""bench/cuda_check.py: skips cleanly without CUDA, and its check runs end to end on CPU."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from conscience.bench import cuda_check  # noqa: E402


def test_without_cuda_it_says_skipped_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "skipped: no CUDA"


def test_the_check_itself_runs_on_cpu_when_allowed(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--allow-cpu", "--shape", "tiny", "--steps", "3", "--pairs-per-step", "2"]
    assert cuda_check.main([*argv, "--prompt-words", "8", "--answer-words", "8"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "ok"
    assert result["steps"] == 3
    assert result["dpo_loss_first"] == pytest.approx(0.6931, abs=1e-3)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(result["adapter_files"])
    assert result["reload_max_abs_logit_diff"] < 1e-4
