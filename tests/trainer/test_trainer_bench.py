"""bench/trainer_bench.py runs end to end on a tiny model (where TRL is installed)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")  # test/bench-only: not in the project's extras

from bench import trainer_bench


@pytest.mark.slow
def test_the_bench_prints_a_table_of_ratios(capsys):
    assert trainer_bench.main(["--shape", "tiny", "--steps", "1", "--pairs-per-step", "2"]) == 0
    table = capsys.readouterr().out
    for label in trainer_bench.RUNS.values():
        assert label in table
    assert "x TRL" in table
