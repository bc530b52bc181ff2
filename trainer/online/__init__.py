"""The paper's run: SFT on a task set plus λ·DPO on conscience pairs sampled online.

Modules, one noun each: ``run`` (``OnlineConfig``, ``train_online``: the loop), ``sample`` (the
policy's answers), ``judge`` (the conscience and the store) and ``metrics`` (the report's totals,
``loss.png``). The losses, the reference, the encoding, the schedule, the checkpoints and the
metrics log are the nightly trainer's. Importing the package imports torch (``run`` needs it).
"""

from conscience.trainer.online.run import OnlineConfig, train_online

__all__ = ["OnlineConfig", "train_online"]
