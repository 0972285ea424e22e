"""The dataset card (``README.md``) that makes an output directory a loadable Hugging Face dataset.

Its YAML header is the `datasets` metadata for a folder: ``configs`` names the shards
(``shard-*.tar``) as the data of the default config, so the manifests, plan, ledger and the other
parquet files are never read as samples, and ``dataset_info.features`` declares every member's
type (``vast.shards.schema.hf_features``), so `datasets` infers nothing from whichever samples
come first. The header holds no counts: a glob matches every shard a later commit adds, so the
card never goes stale. The driver writes it when a run starts (a crashed run's output loads too)
and again at its end, with the run's totals in the text.
"""

from __future__ import annotations

from typing import Any

import yaml

from vast.shards.schema import SAMPLE_FIELDS, SCHEMA_VERSION, hf_features
from vast.shards.store import OutputStore

CARD = "README.md"
SHARDS_GLOB = "shard-*.tar"
MANIFESTS_GLOB = "shard-*.parquet"


def card_metadata() -> dict[str, Any]:
    """The card's YAML header: the default config's data files and the declared features."""
    return {
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": "train", "path": SHARDS_GLOB}]}],
        "dataset_info": {"features": hf_features()},
        "tags": ["webdataset", "video", "audio", "vast-pipeline"],
    }


def card_text(url: str, summary: dict[str, Any] | None = None) -> str:
    """The whole README.md of an output directory."""
    header = yaml.safe_dump(card_metadata(), sort_keys=False, allow_unicode=True)
    totals = ""
    if summary:
        totals = (f"\nAt the end of the last run: {summary['clips']['ok']} clips in {summary['shards']} "
                  f"shard(s), {summary['hours']:.3f} h of video; {summary['clips']['failed']} failed "
                  "(see `ledger/`, or `vast-pipeline status` on this folder).\n")
    fields = ", ".join(f"`{name}`" for name in SAMPLE_FIELDS)
    return f"""---
{header}---

# A VAST-27M-style corpus built by vast-pipeline

WebDataset shards of video clips with 16 kHz audio, captions, subtitles and an omni-caption
(schema version {SCHEMA_VERSION}).{totals}

## Load it

```python
import datasets
ds = datasets.load_dataset("{url}", split="train")                  # or streaming=True
manifest = datasets.load_dataset("parquet", data_files="{url}/{MANIFESTS_GLOB}", split="train")

import webdataset as wds
samples = wds.WebDataset("{url}/shard-{{000000..000009}}.tar").decode()
```

To load a chosen list of shards with `datasets`, pass this card's features:
`load_dataset("webdataset", data_files=[...], features=datasets.load_dataset_builder("{url}").info.features)`.

## A sample

Every sample has the same four members: `mp4` (H.264 clip), `flac` (16 kHz mono), `json` and
`txt` (the omni-caption, empty when there is none). A clip without audio carries silence and
`json.has_audio` false; an audio-only item carries black frames and `json.has_video` false. Both
media last exactly the span the key names. `json` always holds {fields}, each with one type;
`meta`, `source_info`, `provenance` and `subtitle_segments` are free-form JSON.

Files that are not samples: `shard-*.parquet` (one manifest row per sample), `ledger/` (every
input clip's final status), `plan.parquet`, `config.yaml`, `summary.json`.
"""


def write_card(output: str | OutputStore, summary: dict[str, Any] | None = None) -> None:
    """(Re)write the output directory's dataset card (atomically: readers never see half a card)."""
    store = output if isinstance(output, OutputStore) else OutputStore(output)
    store.write_bytes(CARD, card_text(store.url, summary).encode())
