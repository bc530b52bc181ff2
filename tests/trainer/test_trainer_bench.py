"""bench/trainer_bench.py runs end to end on a tiny model (where TRL is installed)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")  # test/bench-only: not in the project's extras

from conscience.bench import trainer_bench


@pytest.mark.slow
def test_the_bench_prints_a_table_of_ratios(capsys):
    argv = ["--shape", "tiny", "--steps", "1", "--pairs-per-step", "2"]
    # Two of the three runs (each a child process importing torch): TRL's side is what drifts.
    assert trainer_bench.main([*argv, "--only", "trl", "ours-live"]) == 0
    table = capsys.readouterr().out
    for name in ("trl", "ours-live"):
        assert trainer_bench.RUNS[name] in table
    assert "x TRL" in table


def test_the_bench_compares_the_three_ways_of_the_answer_logps(capsys):
    argv = ["--logps", "--shape", "tiny", "--steps", "1", "--pairs-per-step", "2", "--words", "5"]
    assert trainer_bench.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    kept = {line[:24].strip(): float(line[24:43].strip().removesuffix("MB")) for line in table[1:4]}
    assert set(kept) == {"fused chunks (default)", "checkpointed chunks", "whole logits (before)"}
