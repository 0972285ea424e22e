"""The bundled trainer: stream committed shards to pretrain and finetune VAST.

- ``trainer``: ``TrainConfig`` (model, data, optim) and ``train(cfg)``: the loop, checkpoints with
  exact resume, validation, JSONL metrics; DDP under ``torchrun``.
- ``optim``: AdamW (0.9, 0.98), no decay on bias/norm, separate vision lr, warmup + linear decay.
- ``evaluate`` / ``metrics``: retrieval R@k and median rank, BLEU-4/ROUGE-L/CIDEr-D, QA accuracy.
- ``cli``: typed entry points ``train(config, overrides)``, ``shards_build(...)``; ``python -m vast.train``.
Presets live in ``vast/configs/train/``; the reader is ``vast.shards.reader``.
"""
