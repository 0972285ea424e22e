"""Test shards for the reader and trainer: distinct generated clips packed by ``shards build``.

Built once per test process (both ``tests/shards`` and ``tests/train`` use them): four videos of
visibly different content, each with its own tone (one silent), captions and a QA pair; packed
through the real ingest pipeline. ``vast27m_shards`` adds the VAST-27M annotation fields
(``vision_cap``, ``audio_cap``, ``subtitle``, ``vast_cap``, ``txt``) the captioner stages will write.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

SOURCES = {  # video_id -> (lavfi picture, tone Hz or None, captions, question, answer)
    "red": ("color=c=red:s=96x64", 300, ["a red screen hums low", "red light and a low hum"],
            "what color is it", "red"),
    "bars": ("smptebars=s=96x64", 600, ["color bars with a beep", "test bars and a tone"],
             "what is shown", "bars"),
    "fractal": ("mandelbrot=s=96x64", 1200, ["a fractal zooms with a whistle", "a swirling fractal"],
                "what is shown", "fractal"),
    "grid": ("testsrc2=s=96x64", None, ["a moving test pattern in silence", "a silent test grid"],
             "is there sound", "no"),
}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as the tiny model expects
INGEST = {"progress": False, "shards.samples_per_shard": 2, "stages.media.options.num_frames": 2,
          "stages.media.options.frame_size": 32, "stages.media.options.max_height": 64}


def make_clip(path: Path, picture: str, tone: int | None, seconds: float = 2.0) -> Path:
    """An H.264 mp4 of a lavfi picture source with an optional sine tone."""
    args = ["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", f"{picture}:r=10"]
    if tone:
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:duration={seconds}", "-c:a", "aac"]
    args += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
             "-g", "10", str(path)]
    subprocess.run(args, check=True, capture_output=True)
    return path


def annotations(kind: str) -> list[dict]:
    """Upstream-style annotation records: ``ret``/``cap`` (``desc``) or ``qa``."""
    if kind == "qa":
        return [{"video_id": v, "question": s[3], "answer": s[4]} for v, s in SOURCES.items()]
    return [{"video_id": v, "desc": s[2]} for v, s in SOURCES.items()]


def _tmp() -> Path:
    root = Path(tempfile.mkdtemp(prefix="vast-train-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def media_dir() -> Path:
    root = _tmp() / "media"
    root.mkdir()
    for vid, (picture, tone, *_rest) in SOURCES.items():
        make_clip(root / f"{vid}.mp4", picture, tone)
    return root


@functools.cache
def downstream_shards() -> Path:
    """Shards of the four clips with captions and a QA pair in ``meta`` (via ``shards build``)."""
    from vast.pipeline.build import shards_build

    root = _tmp()
    records = annotations("ret")
    for r, qa in zip(records, annotations("qa"), strict=True):
        r.update(question=qa["question"], answer=qa["answer"])
    ann = root / "ann.json"
    ann.write_text(json.dumps(records))
    out = root / "shards"
    # the same clips in the same shards on every run, however busy the machine: Ray otherwise commits
    # them in completion order (shard_urls orders the shards by the clips they hold)
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    options.preserve_order = True
    try:
        rc = shards_build(str(ann), str(media_dir()), str(out), preset="tiny", overrides=INGEST)
    finally:
        options.preserve_order = False
    assert rc == 0, "shards build failed on the test media"
    return out


def shard_urls(folder: Path) -> list[str]:
    """The shards ordered by the clips they hold, not by their commit numbers: which of two concurrent
    commits gets the lower number depends on the machine's load, and the trainer tests' figures on
    the order the clips are read in."""
    return [str(p) for p in sorted(folder.glob("shard-*.tar"), key=shard_keys)]


def shard_keys(path: str | Path) -> list[str]:
    """The sample keys a shard holds, sorted."""
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".", 1)[0] for m in tar})


@functools.cache
def vast27m_shards() -> Path:
    """The same clips with VAST-27M annotation fields, as the captioner stages will write them."""
    out = _tmp() / "vast27m"
    out.mkdir()
    for url in shard_urls(downstream_shards()):
        rewrite_tar(Path(url), out / Path(url).name, add_vast27m_fields)
    return out


def add_vast27m_fields(members: dict[str, bytes]) -> dict[str, bytes]:
    info = json.loads(members["json"])
    caps = SOURCES[info["video_id"]][2]
    info.update(vision_cap=[c.split(" with ")[0] for c in caps], audio_cap=[f"sound of {caps[0]}"],
                subtitle="", vast_cap=caps[0])
    return {**members, "json": json.dumps(info).encode(), "txt": caps[0].encode()}


def rewrite_tar(src: Path, dst: Path, edit) -> None:
    """Copy a shard, passing each sample's members (suffix -> bytes) through ``edit``."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(src) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    with tarfile.open(dst, "w") as tf:
        for key, members in samples.items():
            for ext, data in edit(members).items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def vocab_dir(root: Path) -> Path:
    """A WordPiece vocabulary trained offline on every test text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = [c for s in SOURCES.values() for c in (*s[2], s[3], s[4], f"sound of {s[2][0]}")]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus * 3, trainer)
    root.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(root))
    return root
