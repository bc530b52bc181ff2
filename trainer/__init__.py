"""The trainer: DPO (+ SFT) on a LoRA adapter from the conscience's preference pairs.

Modules, one noun each: ``config`` (TrainConfig), ``data`` (pairs to batches), ``loss`` (pure
loss functions), ``model`` (loading + LoRA), ``schedule`` (data order, learning rate),
``checkpoint``, ``metrics``, ``loop`` (``train``), ``job`` (``train_from_store``) and the
``online`` package (the paper's run: SFT plus DPO on pairs sampled and judged online).
Importing the package imports nothing heavy: torch loads with the module that needs it.
"""
