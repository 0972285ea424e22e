"""The training reader: committed shards -> batches the VAST model's ``forward`` takes.

One WebDataset pipeline, written as an explicit list of stages (see :meth:`ShardStream.__iter__`):

1. shard URLs: brace patterns and lists, local paths or any fsspec URL (``s3://``, ``gs://`` ...);
   resampled (an endless draw with replacement) or epoch-exact (each shard once, shuffled per epoch);
2. split by node (rank) and by DataLoader worker; resampled streams instead get a seed of their own.
   Epoch-exact streams whose shards have parquet manifests are split by SAMPLES: slot
   ``rank * workers + worker`` reads a contiguous 1/(world x workers) share of the epoch's sample
   order, so every rank gets its share even with fewer shards than ranks x workers (and no more
   workers are used than have a batch to make). Without manifests, shards are split by rank
   then worker, or, with fewer shards than slots, every slot reads every shard and keeps every
   (world x workers)-th sample;
3. open each shard with fsspec and expand the tar into samples grouped by key (webdataset's key
   rule), reading only the slot's range;
4. mix several corpora by weight, one draw per sample;
5. shuffle in a buffer that holds the raw BYTES (decoding after the shuffle keeps the buffer cheap);
6. skip what a resumed run already consumed (exact resume, counted per worker before decoding);
7. decode: ``mp4`` -> frames (random frame per segment in training, the middle at test) with the
   model's transforms, ``flac`` -> BEATs fbank slices, ``json``/``txt`` -> caption strings;
8. batch and collate into the dict ``VAST.forward`` reads (the model tokenizes the strings).

Errors are data: a corrupt or incomplete sample, or a shard that cannot be opened or read to its
end, is skipped and counted by :class:`SkipCounter` in SAMPLES LOST, per shard path (a broken
shard loses the samples of its range it did not deliver, known from its manifest), with a
rate-limited warning, never a crash and never a sleep. Every batch carries ``__worker__``,
``__consumed__``, ``__skipped__`` (samples lost since the previous batch) and ``__bad_shards__``
(shard path -> samples lost, None when unknown) so the trainer can log losses, checkpoint the
data position and resume exactly. Losses after a stream's last batch come in one record without
samples (``samples_of(record)`` is False), which counts for the data position like a batch.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class CorpusConfig:
    """One corpus of shards."""

    urls: list[str] = field(default_factory=list)
    """Shard URLs: local paths or fsspec URLs, brace patterns allowed (``dir/shard-{000000..000009}.tar``)."""
    weight: float = 1.0
    """Relative share of samples drawn from this corpus when several are mixed."""
    name: str = ""
    """Label for logs (defaults to the first URL)."""


@dataclass
class ReaderConfig:
    """How shards are streamed (the decode settings come from the task: frames, audio clips, size)."""

    corpora: list[CorpusConfig] = field(default_factory=list)
    """The corpora to read; several are mixed by weight."""
    resampled: bool = True
    """True: endless draw of shards with replacement (pretraining); False: each shard once per epoch."""
    shuffle_buffer: int = 256
    """Samples (raw bytes) held by the shuffle buffer; 0 keeps shard order."""
    num_workers: int = 2
    """DataLoader worker processes (0 reads in the training process)."""
    seed: int = 0
    """Seed of shard draws, shuffling and augmentation (with rank, worker and epoch mixed in)."""
    warn_every_s: float = 30.0
    """At most one warning about skipped samples per this many seconds and worker."""


@dataclass
class DecodeSpec:
    """What one sample decodes to."""

    num_frames: int = 8
    """Frames per clip: one per equal segment."""
    num_audio_clips: int = 1
    """Fbank slice groups per clip; 0 skips audio decoding."""
    image_size: int = 224
    mel_bins: int = 64
    train: bool = True
    """Random frame/slice per segment (and crop+flip under ``crop_flip``); False: the middle frame."""
    video: bool = True
    """Decode frames (False for audio-only tasks)."""
    transforms: str = "none"
    """Frame transform (upstream ``vision_transforms``): ``none`` (squash) or ``crop_flip``."""
    antialias: bool = False
    """Antialias when resizing frames (ours; upstream resizes without)."""


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expand one pattern or a list of them into shard URLs, in order."""
    from braceexpand import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    return [u for p in patterns for u in braceexpand(p)]


class SkipCounter:
    """Error policy for the pipeline: count the samples lost, warn at most every ``every_s``, continue.

    Unlike ``wds.warn_and_continue`` it never sleeps. ``counts`` maps exception type -> failures,
    ``lost`` counts samples lost, ``lost_by_shard`` maps a shard path to its samples lost (None:
    the shard broke and has no manifest to tell how many).
    """

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self.counts: Counter[str] = Counter()
        self.lost = 0
        self.lost_by_shard: dict[str, int | None] = {}
        self._last_warn = -float("inf")

    @property
    def total(self) -> int:
        return self.lost

    def __call__(self, exn: BaseException, url: str | None = None, lost: int | None = 1) -> bool:
        """Record ``lost`` samples (None: unknown) of shard ``url`` lost to ``exn``; True = continue."""
        self.counts[type(exn).__name__] += 1
        self.lost += lost or 0
        if url is not None:
            before = self.lost_by_shard.get(url, 0)
            self.lost_by_shard[url] = None if lost is None or before is None else before + lost
        now = time.monotonic()
        if now - self._last_warn >= self.every_s:
            self._last_warn = now
            where = f" in {url}" if url else ""
            log.warning("skipped %d corrupt or incomplete samples so far (%s); latest%s: %s",
                        self.lost, dict(self.counts), where, str(exn)[:300])
        return True


# ------------------------------------------------------------------ stages (generators)


def resampled_urls(urls: list[str], rng: random.Random) -> Iterator[str]:
    """Endless draw of shards with replacement."""
    while True:
        yield rng.choice(urls)


def split_urls(urls: list[str], rank: int, world: int, worker: int, workers: int) -> list[str]:
    """Shards of this node, then of this worker (``wds.split_by_node`` then ``split_by_worker``)."""
    return urls[rank::world][worker::workers]


@dataclass(frozen=True)
class ShardRange:
    """Samples ``[lo, hi)`` (positions in the shard) of one shard; ``hi`` None = to the end.

    ``every``/``offset``: keep only samples whose epoch-wide index ``i`` has ``i % every == offset``
    (the split by samples when the shard sizes are unknown); ``start`` is the epoch-wide index of
    the shard's first sample for that rule.
    """

    url: str
    lo: int = 0
    hi: int | None = None
    every: int = 1
    offset: int = 0
    start: int = 0
    expected: int | None = None
    """Samples the whole shard holds (its manifest), to count what a broken read lost."""


def shard_sample_counts(urls: list[str]) -> list[int | None]:
    """Sample count per shard from its manifest (``x.tar`` -> ``x.parquet``); None where there is none."""
    import fsspec
    import pyarrow.parquet as pq

    counts: list[int | None] = []
    for url in urls:
        try:
            with fsspec.open(url.removesuffix(".tar") + ".parquet", "rb") as f:
                counts.append(pq.ParquetFile(f).metadata.num_rows)
        except (OSError, ValueError):  # no manifest (plain WebDataset shards) or an unreadable one
            counts.append(None)
    return counts


def sample_ranges(urls: list[str], counts: list[int], slot: int, slots: int) -> list[ShardRange]:
    """Slot ``slot`` of ``slots``: a contiguous, balanced share of the shards' samples in order."""
    total = sum(counts)
    start, end = slot * total // slots, (slot + 1) * total // slots
    out, offset = [], 0
    for url, n in zip(urls, counts, strict=True):
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            out.append(ShardRange(url, lo - offset, hi - offset))
        offset += n
    return out


def open_shard(url: str):  # noqa: ANN201 - a binary file object
    """A shard opened for reading through fsspec (local paths, file://, s3://, ...)."""
    import fsspec

    return fsspec.open(url, "rb").open()


_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key up to the first dot


def _members(stream: Any) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, suffix, data) of each regular tar member, in order; data None for metadata members."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            m = _KEY.match(info.name)
            if not info.isreg() or m is None or re.match(r"__[^/]*__($|/)", info.name):
                continue
            f = tar.extractfile(info)
            yield m.group(1), m.group(2).lower(), f.read() if f is not None else b""
            tar.members = []  # stream mode: forget what was read


def shard_samples(part: ShardRange, handler: SkipCounter) -> Iterator[dict[str, Any]]:
    """Samples (``__key__``, ``__url__`` and one bytes value per member suffix) of one shard's range.

    A shard that cannot be opened or read to the end of the range is counted as the samples of the
    range it did not deliver (unknown for an open-ended range), under its path.
    """
    pos = 0  # complete samples seen so far in this shard

    def keep(p: int) -> bool:
        in_range = part.lo <= p and (part.hi is None or p < part.hi)
        return in_range and (p + part.start) % part.every == part.offset

    def lost_from(p: int) -> int | None:
        end = part.hi if part.hi is not None else part.expected if part.every == 1 else None
        return None if end is None else max(0, end - max(p, part.lo))

    try:
        stream = open_shard(part.url)
    except Exception as exn:  # a missing or unreadable shard is skipped and counted
        handler(exn, part.url, lost_from(0))
        return
    current: dict[str, Any] | None = None
    try:
        for key, suffix, data in _members(stream):
            if current is not None and key != current["__key__"]:
                if keep(pos):
                    yield current
                pos += 1
                current = None
                if part.hi is not None and pos >= part.hi:
                    return  # the rest of the shard belongs to other slots
            if current is None:
                current = {"__key__": key, "__url__": part.url}
            if suffix in current:  # as webdataset: a duplicate member name is an error
                raise CorruptSample(f"{key}.{suffix}: duplicate file name in {part.url}")
            current[suffix] = data
        if current is not None:
            if keep(pos):
                yield current
            pos += 1
    except (tarfile.TarError, OSError, EOFError, CorruptSample) as exn:
        handler(exn, part.url, lost_from(pos))
    finally:
        stream.close()


def tar_samples(parts: Iterable[ShardRange | str], handler: SkipCounter) -> Iterator[dict[str, Any]]:
    """Samples of a stream of shard ranges (or whole-shard URLs), shard after shard."""
    for part in parts:
        yield from shard_samples(ShardRange(part) if isinstance(part, str) else part, handler)


def mix(streams: list[Iterator[dict[str, Any]]], weights: list[float], rng: random.Random
        ) -> Iterator[dict[str, Any]]:
    """Draw each sample from a corpus chosen by weight; an exhausted corpus drops out."""
    streams, weights = list(streams), list(weights)
    while streams:
        i = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
        try:
            yield next(streams[i])
        except StopIteration:
            del streams[i], weights[i]


def shuffle(samples: Iterable[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Buffer shuffle: fill ``bufsize`` elements, then yield a random one per element read."""
    if bufsize <= 0:
        yield from samples
        return
    buf: list[Any] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= bufsize:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


# ------------------------------------------------------------------ decoding


class CorruptSample(ValueError):
    """A sample that lacks a member or whose media cannot be decoded."""


def decode_frames(mp4: bytes, n: int, size: int, train: bool, rng: random.Random, transforms: str = "none",
                  antialias: bool = False) -> torch.Tensor:
    """H.264 clip bytes -> ``n`` normalised frames (n, 3, size, size), decord reading from memory."""
    import decord

    from vast.model.preprocess import frame_indices, preprocess_frames

    try:
        vr = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
        frames = vr.get_batch(frame_indices(len(vr), n, train, rng)).asnumpy()  # (n, H, W, 3) uint8
    except (decord.DECORDError, RuntimeError, ValueError) as e:
        raise CorruptSample(f"mp4 does not decode: {str(e)[-200:]}") from None
    return preprocess_frames(frames, size, train, rng, transforms, antialias)


def decode_flac(flac: bytes) -> np.ndarray:
    """FLAC bytes (16 kHz mono, as the writer stores them) -> float32 waveform in [-1, 1]."""
    import av

    try:
        with av.open(io.BytesIO(flac)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate
            chunks = [f.to_ndarray() for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as e:
        raise CorruptSample(f"flac does not decode: {e}") from None
    if not chunks:
        return np.zeros(0, np.float32)
    wav = np.concatenate(chunks, axis=-1)
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max)
    wav = wav.reshape(-1, wav.shape[-1]).mean(0) if wav.ndim > 1 else wav
    if rate != 16000:
        from vast.model.preprocess import resample

        wav = resample(torch.from_numpy(wav.astype(np.float32)), rate).numpy()
    return wav.astype(np.float32)


def _pick(values: Any, train: bool, rng: random.Random) -> str | None:
    """One caption from a string or a list of them: random in training, the first at test."""
    if isinstance(values, str):
        return values or None
    if isinstance(values, list):
        values = [v for v in values if isinstance(v, str) and v]
        if values:
            return rng.choice(values) if train else values[0]
    return None


def texts(info: dict[str, Any], txt: str | None, train: bool, rng: random.Random) -> dict[str, Any]:
    """The sample's texts under the batch keys the model reads (``vast.model.tasks.CAPTION_FOR_GROUP``).

    ``refs`` holds every reference caption (caption eval), ``qa`` every (question, answer) pair
    (QA eval); training draws one caption, one QA pair and one of its answers per visit (upstream
    ``data/IndexAnno.py`` draws the answer), testing takes the first.

    VAST-27M fields come from the json top level; a downstream set built by ``shards build`` keeps
    its annotation (``desc``/``caption``, ``question``, ``answer``) there or in ``meta``.
    """
    meta = info.get("meta") or {}
    get = lambda k: info.get(k, meta.get(k))  # noqa: E731
    omni = _pick(info.get("vast_cap"), train, rng) or (txt or None)
    downstream = _pick(get("desc"), train, rng) or _pick(get("caption"), train, rng)
    text = downstream or omni
    out: dict[str, Any] = {"key": info.get("key", ""), "subtitle": _pick(get("subtitle"), False, rng) or ""}
    if text is not None:
        out["text"] = text
        refs = get("desc") if get("desc") is not None else get("caption")
        refs = [refs] if isinstance(refs, str) else refs
        out["refs"] = [r for r in refs if isinstance(r, str)] if refs else [text]
    if omni is not None:
        out["omni_caption"] = omni
    for key, name in (("vision_cap", "vision_caption"), ("audio_cap", "audio_caption")):
        cap = _pick(info.get(key), train, rng)
        if cap is not None:
            out[name] = cap
        elif omni is not None:  # VAST-27M grouping falls back to the omni-caption
            out[name] = omni
    pairs = [p for p in (get("qa") or []) if isinstance(p, dict) and "question" in p and "answer" in p]
    question, answer = get("question"), get("answer")
    if pairs and train:
        pick = rng.choice(pairs)  # training: a random question of the clip each time it is seen
        question, answer = pick["question"], pick["answer"]
    if isinstance(question, str) and answer is not None:
        out["question"], out["answer"] = question, _pick(answer, train, rng) or str(answer)
        out["qa"] = [(str(p["question"]), str(p["answer"])) for p in pairs] or [(question, out["answer"])]
    return out


def decode_sample(sample: dict[str, Any], spec: DecodeSpec, rng: random.Random) -> dict[str, Any]:
    """Raw tar members -> frames (T, 3, S, S), audio (A, 1024, mel) and caption strings."""
    from vast.model.preprocess import audio_slices

    if "json" not in sample or (spec.video and "mp4" not in sample):
        raise CorruptSample(f"sample {sample.get('__key__')!r} lacks members: has {sorted(sample)}")
    try:
        info = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptSample(f"sample {sample.get('__key__')!r}: bad json: {e}") from None
    txt = sample["txt"].decode("utf-8", "replace") if "txt" in sample else None
    out = texts(info, txt, spec.train, rng)
    # placeholder tracks (black frames, silence: vast.shards.schema) count as missing
    if spec.video and not info.get("has_video", True):
        raise CorruptSample(f"sample {sample.get('__key__')!r} has no video (an audio-only item)")
    if spec.video:
        out["frames"] = decode_frames(sample["mp4"], spec.num_frames, spec.image_size, spec.train, rng,
                                      spec.transforms, spec.antialias)
    if spec.num_audio_clips > 0:
        wav = decode_flac(sample["flac"]) if sample.get("flac") and info.get("has_audio", True) else None
        out["audio"] = audio_slices(wav, spec.num_audio_clips, spec.train, rng, spec.mel_bins)
    return out


LOSS_REPORT = "__loss_report__"  # a record with no samples: only the losses after a stream's last batch
STRING_KEYS = ("text", "omni_caption", "vision_caption", "audio_caption", "subtitle", "question", "answer")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded samples -> one batch: tensors stacked, texts as lists of strings (the model tokenizes).

    A text key enters the batch only when every sample has it.
    """
    batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for k in ("frames", "audio"):
        if all(k in s for s in samples):
            batch[k] = torch.stack([s[k] for s in samples])  # (B, T, 3, S, S) / (B, A, 1024, mel)
    for k in (*STRING_KEYS, "refs", "qa"):
        if all(k in s for s in samples):
            batch[k] = [s[k] for s in samples]
    return batch


# ------------------------------------------------------------------ the stream


class ShardStream(torch.utils.data.IterableDataset):
    """Batches of decoded samples, one deterministic stream per (rank, worker); see the module docstring.

    ``resume``: ``DataPosition.state_dict()`` of a previous run (same config, rank, world size and
    worker count): each worker skips the raw samples it had consumed (before decoding) and workers
    take turns exactly where the previous run stopped.
    """

    def __init__(self, cfg: ReaderConfig, spec: DecodeSpec, batch_size: int, *, rank: int = 0,
                 world: int = 1, epoch: int = 0, drop_last: bool = True,
                 resume: dict[str, Any] | None = None):
        super().__init__()
        if not cfg.corpora:
            raise ValueError("the reader needs at least one corpus with shard URLs (data.*.corpora)")
        for c in cfg.corpora:
            if not c.urls:
                name = c.name or "(unnamed)"
                raise ValueError(f"corpus {name!r} has no shard URLs: set its urls (upstream "
                                 "annotations + media become shards with `vast-pipeline shards-build`)")
        self.cfg, self.spec, self.batch_size = cfg, spec, batch_size
        self.rank, self.world, self.epoch, self.drop_last = rank, world, epoch, drop_last
        self.resume = resume or {}
        self.urls = [expand_urls(c.urls) for c in cfg.corpora]
        # Epoch-exact streams split by samples when every shard's size is known (manifests).
        self.counts = [[None] * len(u) if cfg.resampled else shard_sample_counts(u) for u in self.urls]
        self.workers = max(1, cfg.num_workers)
        if not cfg.resampled and all(n is not None for c in self.counts for n in c):
            per_rank = sum(n for c in self.counts for n in c) // world  # type: ignore[misc]
            batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
            self.workers = max(1, min(self.workers, batches))  # a worker without a batch would idle

    def _logical_worker(self) -> int:
        info = torch.utils.data.get_worker_info()
        real = info.id if info is not None else 0
        # The DataLoader starts every run with worker 0; rotate roles so the run resumes with the
        # worker whose turn was next.
        return (real + int(self.resume.get("batches", 0))) % self.workers

    def _parts(self, i: int, worker: int) -> Iterable[ShardRange | str]:
        """Stages 1-2 for corpus ``i``: this (rank, worker)'s shards or sample ranges."""
        cfg, urls, counts = self.cfg, self.urls[i], self.counts[i]
        if cfg.resampled:  # every (rank, worker) draws shards with its own seed
            seed = f"{cfg.seed}:{self.rank}:{worker}:{self.epoch}:urls:{i}"
            return resampled_urls(urls, random.Random(seed))
        order = list(range(len(urls)))
        if self.spec.train:  # each shard once, in an order shuffled per epoch
            random.Random(f"{cfg.seed}:{self.epoch}:order:{i}").shuffle(order)
        urls, counts = [urls[j] for j in order], [counts[j] for j in order]
        slot, slots = self.rank * self.workers + worker, self.world * self.workers
        if all(n is not None for n in counts):
            return sample_ranges(urls, counts, slot, slots)  # type: ignore[arg-type]
        if len(urls) >= slots:
            size = dict(zip(urls, counts, strict=True))  # known sizes still count a broken shard's losses
            mine = split_urls(urls, self.rank, self.world, worker, self.workers)
            return [ShardRange(u, expected=size[u]) for u in mine]
        log.warning("%d shards without manifests for %d readers: every reader reads every shard and keeps "
                    "every %d-th sample", len(urls), slots, slots)
        return [ShardRange(u, every=slots, offset=slot, start=k) for k, u in enumerate(urls)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg, spec = self.cfg, self.spec
        worker = self._logical_worker()
        base = f"{cfg.seed}:{self.rank}:{worker}:{self.epoch}"
        handler = SkipCounter(cfg.warn_every_s)
        streams = [tar_samples(self._parts(i, worker), handler) for i in range(len(cfg.corpora))]  # 1-3
        samples = mix(streams, [c.weight for c in cfg.corpora], random.Random(f"{base}:mix"))  # 4
        bufsize = cfg.shuffle_buffer if spec.train else 0
        samples = shuffle(samples, bufsize, random.Random(f"{base}:shuffle"))  # 5: raw bytes
        consumed = 0
        skip = int(self.resume.get("consumed", {}).get(str(worker), 0))
        batch: list[dict[str, Any]] = []
        reported, shards_reported = 0, dict[str, Any]()

        def emit(batch: list[dict[str, Any]]) -> dict[str, Any]:
            nonlocal reported, shards_reported
            out = collate(batch) if batch else {LOSS_REPORT: True}
            bad = {u: n for u, n in handler.lost_by_shard.items() if shards_reported.get(u, 0) != n}
            out.update(__worker__=worker, __consumed__=consumed, __skipped__=handler.lost - reported,
                       __bad_shards__=bad)
            reported, shards_reported = handler.lost, dict(handler.lost_by_shard)
            return out

        for raw in samples:
            consumed += 1
            if consumed <= skip:  # 6: already trained on before the checkpoint
                continue
            # 7: augmentation randomness depends only on the sample's place in this stream
            rng = random.Random(f"{base}:sample:{consumed}")
            try:
                batch.append(decode_sample(raw, spec, rng))
            except CorruptSample as exn:  # bad data is counted; a programming error still raises
                handler(exn, raw.get("__url__"), 1)
                continue
            if len(batch) == self.batch_size:  # 8
                yield emit(batch)
                batch = []
        if batch and not self.drop_last:
            yield emit(batch)
        elif handler.lost != reported or handler.lost_by_shard != shards_reported:
            yield emit([])  # losses after the last batch still reach the trainer's count


def samples_of(batch: dict[str, Any]) -> bool:
    """False for the sample-less record that reports losses at the end of a stream."""
    return not batch.get(LOSS_REPORT, False)


def make_loader(stream: ShardStream) -> torch.utils.data.DataLoader:
    """A DataLoader over the stream (batching happens in the workers; no more than the stream uses)."""
    n = min(stream.cfg.num_workers, stream.workers)
    # A generator of its own: creating an iterator must not draw from the global torch RNG, or a
    # resumed run (which creates iterators at other moments) would diverge from the original.
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=n, persistent_workers=False,
                                       prefetch_factor=2 if n else None,
                                       generator=torch.Generator().manual_seed(stream.cfg.seed))


class DataPosition:
    """What the trainer consumed: raw samples per worker and batches, for exact resume; samples lost."""

    def __init__(self, state: dict[str, Any] | None = None):
        state = state or {}
        self.consumed: dict[str, int] = dict(state.get("consumed", {}))
        self.batches: int = int(state.get("batches", 0))
        self.skipped: int = int(state.get("skipped", 0))
        self.epoch: int = int(state.get("epoch", 0))
        self.bad_shards: dict[str, int | None] = dict(state.get("bad_shards", {}))
        """Shard path -> samples lost in it so far (None: unknown, the shard has no manifest)."""

    def next_epoch(self) -> None:
        """An epoch-exact stream ended: the next one starts from its beginning."""
        self.consumed, self.batches, self.epoch = {}, 0, self.epoch + 1

    def update(self, batch: dict[str, Any]) -> dict[str, int | None]:
        """Record one consumed batch; returns the shards that lost samples since the previous one."""
        self.consumed[str(batch["__worker__"])] = int(batch["__consumed__"])
        self.batches += 1
        self.skipped += int(batch["__skipped__"])
        new = dict(batch.get("__bad_shards__") or {})
        self.bad_shards.update(new)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": dict(self.consumed), "batches": self.batches, "skipped": self.skipped,
                "epoch": self.epoch, "bad_shards": dict(self.bad_shards)}
