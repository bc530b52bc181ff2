"""How both loops keep their place: one fingerprint, start_or_resume, Progress.save_if_due.

A linear layer and SGD stand in for the adapter and AdamW: what is saved and restored is the
same (trainable tensors, optimizer state, RNGs), without loading a model.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from conscience.errors import ConfigError  # noqa: E402
from conscience.trainer.checkpoint import fingerprint, start_or_resume  # noqa: E402
from conscience.trainer.config import TrainConfig  # noqa: E402

PLAN = [[[0, 1]], [[2, 3]], [[0, 2]], [[1, 3]]]  # 4 steps, one micro-batch each
ROWS = [("a", 2, [1, 2, 3]), ("b", 1, [4, 5])]


def _config(tmp_path, **overrides):
    return TrainConfig(model="tiny", out_dir=str(tmp_path), progress=False, **overrides)


def _trainee():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _step(model, optimizer):
    model(torch.randn(4, 3)).pow(2).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_the_fingerprint_covers_the_data_the_plan_and_what_a_loop_adds(tmp_path):
    config = _config(tmp_path)
    base = fingerprint(ROWS, config)
    assert fingerprint(list(ROWS), config) == base  # deterministic, any iterable
    assert fingerprint(ROWS[:1], config) != base  # other data
    assert fingerprint(ROWS, _config(tmp_path, batch_size=2)) != base  # another plan
    assert fingerprint(ROWS, _config(tmp_path, lr=1.0)) == base  # lr does not shape the plan
    # The online run adds its samples per step: a nightly checkpoint is not one of its own.
    assert fingerprint(ROWS, config, 0) != base
    assert fingerprint(ROWS, config, 2) != fingerprint(ROWS, config, 0)


def test_a_fresh_run_starts_at_step_0_of_its_plan(tmp_path):
    model, optimizer = _trainee()
    progress = start_or_resume(
        tmp_path, _config(tmp_path, resume=True), "fp", PLAN, model, optimizer
    )
    assert (progress.start, progress.plan, progress.ref) == (0, PLAN, None)


def test_checkpoints_fall_every_n_steps_but_not_after_the_last(tmp_path):
    model, optimizer = _trainee()
    progress = start_or_resume(
        tmp_path, _config(tmp_path, checkpoint_every=2), "fp", PLAN, model, optimizer
    )
    saved = []
    for done in range(1, len(PLAN) + 1):
        progress.save_if_due(done, model, optimizer)
        saved.append((tmp_path / "checkpoint" / "state.pt").exists())
        _step(model, optimizer)
    assert saved == [False, True, True, True]  # step 2 wrote it; step 4, the last, did not
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 2


def test_never_with_checkpoint_every_0(tmp_path):
    model, optimizer = _trainee()
    config = _config(tmp_path, checkpoint_every=0)
    progress = start_or_resume(tmp_path, config, "fp", PLAN, model, optimizer)
    for done in range(1, len(PLAN) + 1):
        progress.save_if_due(done, model, optimizer)
    assert not (tmp_path / "checkpoint").exists()


def test_a_resumed_run_takes_the_checkpoints_step_plan_weights_and_rng(tmp_path):
    model, optimizer = _trainee()
    config = _config(tmp_path, checkpoint_every=1)
    shuffled = [PLAN[3], PLAN[0], PLAN[2], PLAN[1]]
    progress = start_or_resume(tmp_path, config, "fp", shuffled, model, optimizer)
    _step(model, optimizer)
    progress.save_if_due(1, model, optimizer)
    weights = model.weight.detach().clone()
    draw = torch.rand(3)  # what the run draws next, from the RNG state saved with step 1

    again, again_optimizer = _trainee()  # a fresh process: other weights, plan and RNG state
    resumed = start_or_resume(
        tmp_path, _config(tmp_path, resume=True), "fp", PLAN, again, again_optimizer
    )
    assert (resumed.start, resumed.plan) == (1, shuffled)
    assert torch.equal(again.weight, weights)
    assert again_optimizer.state_dict()["state"]  # the momentum came back too
    assert torch.equal(torch.rand(3), draw)


def test_a_checkpoint_of_other_data_is_refused(tmp_path):
    model, optimizer = _trainee()
    progress = start_or_resume(
        tmp_path, _config(tmp_path, checkpoint_every=1), "fp", PLAN, model, optimizer
    )
    progress.save_if_due(1, model, optimizer)
    with pytest.raises(ConfigError, match="other data or settings"):
        start_or_resume(tmp_path, _config(tmp_path, resume=True), "other", PLAN, model, optimizer)
