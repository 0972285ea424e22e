"""The bundled trainer: stream committed shards to pretrain and finetune VAST.

Not built yet; it will read the shards ``vast.shards`` writes.
"""
