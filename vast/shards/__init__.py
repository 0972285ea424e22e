"""Shards: the sample schema, the committing shard writer, the ledger and the dataset summary."""
