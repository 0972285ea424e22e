"""The gallery's sample rule and its tar reads, without Ray: tars written by webdataset's own
``TarWriter``, read back locally and through an fsspec ``memory://`` store."""

from __future__ import annotations

import hashlib

import fsspec
import pyarrow as pa
import pytest
import webdataset as wds

from vast.report.gallery import read_members, sample_rows
from vast.shards.store import OutputStore


def blake(ident: str) -> bytes:
    return hashlib.blake2b(ident.encode(), digest_size=8).digest()


SCHEMA = pa.schema([("key", pa.string()), ("input", pa.string()), ("status", pa.string()),
                    ("shard", pa.string()), ("commit", pa.int64())])


def ledger(n_ok: int, n_failed: int, unkeyed: int = 0) -> pa.Table:
    """Effective ledger rows: ok clips, failed clips, failed input lines without a key."""
    keys = [f"ok{i}_0_5000" for i in range(n_ok)] + [f"bad{i}_0_5000" for i in range(n_failed)]
    keys += [""] * unkeyed
    n = len(keys)
    return pa.table({"key": keys, "input": [f"ids.txt:{i + 1}" for i in range(n)],
                     "status": ["ok"] * n_ok + ["failed"] * (n_failed + unkeyed),
                     "shard": ["shard-000000.tar"] * n, "commit": [0] * n}, schema=SCHEMA)


def idents(table: pa.Table, status: str | None = None) -> list[str]:
    """Each row's key, or its input line when it has none, in table order."""
    rows = table.to_pylist()
    return [r["key"] or r["input"] for r in rows if status is None or r["status"] == status]


def test_the_sample_is_the_smallest_key_hashes_a_quarter_failed():
    table = ledger(100, 30, unkeyed=5)
    chosen = sample_rows(table, 8)
    assert chosen.equals(sample_rows(table, 8))  # deterministic
    assert sorted(idents(chosen, "ok")) == sorted(sorted(idents(table, "ok"), key=blake)[:6])
    assert sorted(idents(chosen, "failed")) == sorted(sorted(idents(table, "failed"), key=blake)[:2])
    assert idents(chosen) == sorted(idents(chosen), key=blake)  # shown in hash order: ok and failed mixed


def test_few_ok_clips_are_filled_up_with_failures_and_duplicates_never_shown():
    duplicate = pa.table({"key": [""], "input": ["ids.txt:99"], "status": ["duplicate"], "shard": [""],
                          "commit": [0]}, schema=SCHEMA)
    table = pa.concat_tables([ledger(3, 20), duplicate])
    chosen = sample_rows(table, 10)
    assert chosen["status"].to_pylist().count("ok") == 3 and chosen.num_rows == 10
    assert "duplicate" not in chosen["status"].to_pylist()
    assert sample_rows(table, 0).num_rows == 0 and sample_rows(ledger(0, 0), 5).num_rows == 0


def write_shard(path: str, n: int, fs: fsspec.AbstractFileSystem) -> dict[str, dict[str, bytes]]:
    samples = {}
    with fs.open(path, "wb") as f:
        writer = wds.TarWriter(f)
        for i in range(n):
            key = f"clip{i:03d}_0_5000"
            members = {"json": f'{{"key": "{key}"}}'.encode(), "mp4": bytes([i % 256]) * (1000 + 37 * i)}
            if i % 3:
                members["flac"] = bytes([255 - i % 256]) * (500 + i)
            samples[key] = members
            writer.write({"__key__": key, **members})
        writer.close()
    return samples


@pytest.mark.parametrize("url", ["local", "memory://gallery-test"])
def test_read_members_reads_only_the_chosen_samples_and_stops_after_the_last(tmp_path, url):
    url = str(tmp_path) if url == "local" else url
    store = OutputStore(url)
    samples = write_shard(store.path("shard-000000.tar"), 40, store.fs)
    wanted = {"clip003_0_5000", "clip017_0_5000"}
    got: dict[str, dict[str, bytes]] = {}
    for key, ext, data in read_members(store, "shard-000000.tar", wanted):
        got.setdefault(key, {})[ext] = data
    assert got == {k: samples[k] for k in wanted}

    # the walk ends after the last chosen sample: bytes past it are never read
    with store.fs.open(store.path("shard-000000.tar"), "rb") as f:
        data = f.read()
    cut = data.index(b"clip019_0_5000.json")  # the header of a sample after the next one
    with store.fs.open(store.path("shard-000001.tar"), "wb") as f:
        f.write(data[:cut] + b"\x07" * 4096)  # garbage where the next header should start
    got = {(k, e) for k, e, _ in read_members(store, "shard-000001.tar", wanted)}
    assert got == {(k, e) for k in wanted for e in samples[k]}
    if url.startswith("memory://"):
        store.fs.rm(store.root, recursive=True)
