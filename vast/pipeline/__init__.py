"""The ingest graph: inputs → plan → fetch → media → (annotation stages) → committed shards."""
