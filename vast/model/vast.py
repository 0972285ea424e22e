"""The VAST model: vision, audio and subtitle encoders fused into one BERT by cross-attention.

Reading order: config, heads, the model (encoders -> per-modality projection with frame and type
embeddings -> contrastive features and cross-attention memory), then the training objectives
per task and the inference entry points (retrieval scores, captions, answers).
Parameter names match the official VAST checkpoints (``contra_head_t.linear``, ``itm_head``,
``hidden_trans_vision_multimodal`` ...) so they load without renaming.

Upstream rules this file follows (TXH-mercury/VAST 410ca47, ``model/vast.py`` and
``model/general_module.py``), each with the option that keeps our variant:

- Subtitle memory: subtitles are tokenized padded to ``max_subtitle_len`` (70) and all 70 slots,
  padding included, are cross-attention keys without a mask (``batch_get('subtitle_tokens')``
  pads to max_length, ``get_multimodal_forward_input_subtitle`` passes every slot). The released
  ``tvs``/``tvas`` weights were trained so. ``subtitle_memory="masked"``: pad to the longest
  subtitle and mask the padding.
- OM-VCC gather (``forward_ret``): local features against features all-gathered WITHOUT
  gradient (``concat_all_gather``, also in a single process), so each feature gets gradient only
  as a query; the loss averages this rank's rows. ``contrastive_gather="with_grad"``: the full
  global similarity matrix with gradient through the gather (open_clip ``gather_with_grad``).
- Temperature: ``contra_temp`` is used raw (no clamp) and weight-decayed like any parameter whose
  name lacks "bias"/"LayerNorm" (``utils/build_optimizer.py``). ``clamp_temperature=True`` clamps
  to [0.001, 0.5].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .audio import AudioConfig, BEATs
from .generation import GenerationConfig, generate
from .preprocess import audio_slices
from .tasks import Task, condition_of, modalities_needed, parse_task, text_key
from .text import BertForMaskedLM, TextConfig, tokenize
from .vision import EVAVisionTransformer, VisionConfig

TokenBatch = tuple[torch.Tensor, torch.Tensor]  # ids (B, L), valid (B, L)


@dataclass
class VASTConfig:
    """The whole model: towers (None leaves one out), fusion sizes and objective settings."""

    vision: VisionConfig | None = field(default_factory=VisionConfig)
    audio: AudioConfig | None = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    contra_dim: int = 512
    vision_frames: int = 8
    """Length of the learned frame embedding (resized when more or fewer frames come in)."""
    audio_clips: int = 1
    """Length of the learned audio-clip embedding."""
    contra_temp: float = 0.07
    label_smoothing: float = 0.1
    itm_weight: float = 0.1
    caption_mask_prob: float = 0.6
    answer_mask_prob: float = 0.99
    max_caption_len: int = 40
    max_omni_caption_len: int = 70
    max_subtitle_len: int = 70
    max_question_len: int = 40
    max_answer_len: int = 10
    subtitle_memory: str = "padded"
    """``padded`` (upstream): subtitles padded to ``max_subtitle_len``, every slot a cross-attention key,
    unmasked; ``masked``: padded to the longest subtitle, padding masked out of the memory."""
    contrastive_gather: str = "no_grad"
    """``no_grad`` (upstream): keys gathered without gradient, each feature learns as a query only;
    ``with_grad``: the global similarity matrix with gradient through the gather."""
    clamp_temperature: bool = False
    """Clamp the contrastive temperature to [0.001, 0.5] (ours); upstream uses it raw."""

    def __post_init__(self) -> None:
        if self.subtitle_memory not in ("padded", "masked"):
            raise ValueError(f"subtitle_memory {self.subtitle_memory!r}: padded or masked")
        if self.contrastive_gather not in ("no_grad", "with_grad"):
            raise ValueError(f"contrastive_gather {self.contrastive_gather!r}: no_grad or with_grad")

    def build(self) -> VAST:
        return VAST(self)


class ContraHead(nn.Module):
    """Bias-free projection to the contrastive space (stored as ``linear.weight``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MatchHead(nn.Module):
    """OM-VCM head on the [CLS] state: Linear, GELU, LayerNorm, Linear -> 2 logits."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.layernorm = nn.LayerNorm(dim, eps=1e-12)
        self.linear2 = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.layernorm(F.gelu(self.linear1(x))))


def projection(dim_in: int, dim_out: int) -> nn.Sequential:
    """Per-modality projection into the text width (``.0`` Linear, ``.1`` LayerNorm)."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.LayerNorm(dim_out, eps=1e-12))


def resize_frame_embedding(emb: torch.Tensor, n: int) -> torch.Tensor:
    """Nearest resize of a (1, T, C) frame embedding to (1, n, C): row i takes source floor(i*T/n)."""
    if emb.shape[1] == n:
        return emb
    return F.interpolate(emb.float().permute(0, 2, 1), size=n, mode="nearest").permute(0, 2, 1).to(emb.dtype)


@dataclass
class Encoded:
    """Encoder outputs of one batch; a modality the task does not need stays None."""

    vision: torch.Tensor | None = None  # (B, T, N, Cv) every token of every frame
    audio: torch.Tensor | None = None  # (B, A, N, Ca)
    subtitle: torch.Tensor | None = None  # (B, L, C)
    subtitle_valid: torch.Tensor | None = None  # (B, L)


class VAST(nn.Module):
    """Vision-Audio-Subtitle-Text omni-modality model."""

    def __init__(self, cfg: VASTConfig):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.text.hidden_size, cfg.contra_dim
        Cv = cfg.vision.width if cfg.vision else 0
        Ca = cfg.audio.encoder_embed_dim if cfg.audio else 0
        self.tokenizer: Any = None  # attach with set_tokenizer; not part of the state dict

        self.contra_temp = nn.Parameter(torch.tensor(cfg.contra_temp))
        self.multimodal_encoder: BertForMaskedLM = cfg.text.build()
        self.contra_head_t = ContraHead(C, D)
        self.contra_head_s = ContraHead(C, D)
        self.subtitle_type_embeddings = nn.Parameter(torch.zeros(1, 1, C))
        self.hidden_trans_subtitle_multimodal = projection(C, C)
        self.itm_head = MatchHead(C)
        self.vision_encoder: EVAVisionTransformer | None = None
        self.audio_encoder: BEATs | None = None
        if cfg.vision:
            self.vision_encoder = cfg.vision.build()
            self.vision_frame_embedding = nn.Parameter(torch.zeros(1, cfg.vision_frames, C))
            self.vision_type_embeddings = nn.Parameter(torch.zeros(1, 1, C))
            self.hidden_trans_vision_multimodal = projection(Cv, C)
            self.contra_head_v = ContraHead(Cv, D)
            self.contra_head_vs = nn.Linear(Cv + C, D)
        if cfg.audio:
            self.audio_encoder = cfg.audio.build()
            self.audio_frame_embedding = nn.Parameter(torch.zeros(1, cfg.audio_clips, C))
            self.audio_type_embeddings = nn.Parameter(torch.zeros(1, 1, C))
            self.hidden_trans_audio_multimodal = projection(Ca, C)
            self.contra_head_a = ContraHead(Ca, D)
        if cfg.vision and cfg.audio:
            self.contra_head_va = nn.Linear(Cv + Ca, D)
            self.contra_head_vas = nn.Linear(Cv + Ca + C, D)
        self._init_fusion()

    def _init_fusion(self) -> None:
        """Normal(0, 0.02) fusion layers and embeddings; the towers initialise themselves."""
        for name, child in self.named_children():
            if name in ("vision_encoder", "audio_encoder", "multimodal_encoder"):
                continue
            for m in child.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for name, p in self.named_parameters(recurse=False):
            if name != "contra_temp":
                nn.init.normal_(p, std=0.02)

    @property
    def modalities(self) -> set[str]:
        """The condition modalities this model can encode."""
        return {"s"} | ({"v"} if self.vision_encoder else set()) | ({"a"} if self.audio_encoder else set())

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every transformer block in the backward pass (vision, audio and text towers)."""
        for tower in (
            self.vision_encoder,
            self.audio_encoder and self.audio_encoder.encoder,
            self.multimodal_encoder,
        ):
            if tower is not None:
                tower.grad_checkpointing = enabled

    def set_tokenizer(self, tokenizer: Any) -> None:
        """Attach a BERT tokenizer; its special ids must be those of the text config."""
        t = self.cfg.text
        want = {"pad": t.pad_token_id, "cls": t.cls_token_id, "sep": t.sep_token_id, "mask": t.mask_token_id}
        got = {
            "pad": tokenizer.pad_token_id,
            "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id,
            "mask": tokenizer.mask_token_id,
        }
        if want != got or len(tokenizer) > t.vocab_size:
            raise ValueError(
                f"tokenizer ids {got} (vocab {len(tokenizer)}) do not fit the text config {want} "
                f"(vocab {t.vocab_size})"
            )
        self.tokenizer = tokenizer

    # ---------------------------------------------------------------- encoders

    def tokens(self, text: list[str] | TokenBatch, max_len: int) -> TokenBatch:
        """Token ids and validity (B, L) on the model's device from strings or ready tensors."""
        if isinstance(text, tuple):
            ids, valid = text
        else:
            if self.tokenizer is None:
                raise RuntimeError("text given as strings but no tokenizer attached (VAST.set_tokenizer)")
            ids, valid = tokenize(self.tokenizer, text, max_len)
        dev = self.contra_temp.device
        return ids.to(dev), valid.to(dev).bool()

    def encode_vision(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, T, 3, H, W) -> every token of every frame (B, T, N, Cv)."""
        assert self.vision_encoder is not None, "this model has no vision tower"
        B, T = frames.shape[:2]
        x = self.vision_encoder(frames.flatten(0, 1))  # (B*T, N, Cv)
        return x.view(B, T, *x.shape[1:])

    def encode_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """Fbank slices (B, A, frames, mel) -> tokens per slice (B, A, N, Ca)."""
        assert self.audio_encoder is not None, "this model has no audio tower"
        B, A = fbank.shape[:2]
        x = self.audio_encoder(fbank.flatten(0, 1))  # (B*A, N, Ca)
        return x.view(B, A, *x.shape[1:])

    def encode_text(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Bidirectional text-only encoding (B, L) -> (B, L, C)."""
        return self.multimodal_encoder.encode(ids, valid)

    def encode(self, batch: dict[str, Any], modalities: set[str]) -> Encoded:
        """Run the encoders a task needs on a batch (``frames``, ``audio``, ``subtitle``)."""
        missing = modalities - self.modalities
        if missing:
            raise ValueError(f"task needs modalities {sorted(missing)} this model was built without")
        enc = Encoded()
        if "v" in modalities:
            enc.vision = self.encode_vision(batch["frames"].to(self.contra_temp.device))
        if "a" in modalities:
            audio = batch["audio"]
            if isinstance(audio, list | tuple):  # 16 kHz waveforms (or None): the standard fbank slices
                mel = self.cfg.audio.mel_bins
                audio = torch.stack(
                    [audio_slices(w, self.cfg.audio_clips, self.training, mel_bins=mel) for w in audio]
                )
            enc.audio = self.encode_audio(audio.to(self.contra_temp.device))
        if "s" in modalities:
            L = self.cfg.max_subtitle_len
            ids, valid = self.tokens(batch["subtitle"], L)
            if self.cfg.subtitle_memory == "padded":  # upstream: always max_subtitle_len slots
                ids, valid = _pad_to(ids, L, self.cfg.text.pad_token_id), _pad_to(valid, L, False)
            enc.subtitle, enc.subtitle_valid = self.encode_text(ids, valid), valid
        return enc

    # ----------------------------------------------------------- fusion inputs

    def pooled(self, enc: Encoded, m: str) -> torch.Tensor:
        """Pooled raw feature of one modality: frame CLS mean (v), token then clip mean (a), CLS (s)."""
        if m == "v":
            return enc.vision[:, :, 0].mean(1)  # (B, Cv)
        if m == "a":
            return enc.audio.mean(2).mean(1)  # (B, Ca)
        return enc.subtitle[:, 0]  # (B, C)

    def condition_feature(self, enc: Encoded, cond: str) -> torch.Tensor:
        """L2-normalised contrastive feature (B, D) of a condition: v, a, s, va, vs or vas."""
        pooled = torch.cat([self.pooled(enc, m) for m in cond], dim=-1)  # (B, sum of widths)
        return F.normalize(getattr(self, f"contra_head_{cond}")(pooled), dim=-1)

    def text_feature(self, hidden: torch.Tensor) -> torch.Tensor:
        """L2-normalised contrastive feature (B, D) from text hidden states (B, L, C)."""
        return F.normalize(self.contra_head_t(hidden[:, 0]), dim=-1)

    def memory(self, enc: Encoded, cond: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys (B, M, C) and validity (B, M): the condition's tokens, concatenated.

        Each modality is projected to the text width, gets its frame (or clip) embedding broadcast
        over its tokens and its type embedding. Subtitle padding is a valid key in ``padded`` mode
        (upstream) and masked in ``masked`` mode.
        """
        parts, valid = [], []
        if "v" in cond:
            x = self.hidden_trans_vision_multimodal(enc.vision)  # (B, T, N, C)
            x = x + resize_frame_embedding(self.vision_frame_embedding, x.shape[1]).unsqueeze(2)
            parts.append(x.flatten(1, 2) + self.vision_type_embeddings)
        if "a" in cond:
            x = self.hidden_trans_audio_multimodal(enc.audio)  # (B, A, N, C)
            x = x + resize_frame_embedding(self.audio_frame_embedding, x.shape[1]).unsqueeze(2)
            parts.append(x.flatten(1, 2) + self.audio_type_embeddings)
        for p in parts:
            valid.append(torch.ones(p.shape[:2], dtype=torch.bool, device=p.device))
        if "s" in cond:
            parts.append(self.hidden_trans_subtitle_multimodal(enc.subtitle) + self.subtitle_type_embeddings)
            masked = self.cfg.subtitle_memory == "masked"
            valid.append(enc.subtitle_valid if masked else torch.ones_like(enc.subtitle_valid))
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1)

    def temperature(self) -> torch.Tensor:
        """The learnable contrastive temperature: raw (upstream), or clamped to [0.001, 0.5] if configured."""
        return self.contra_temp.clamp(0.001, 0.5) if self.cfg.clamp_temperature else self.contra_temp

    # -------------------------------------------------------------- objectives

    def forward(self, batch: dict[str, Any], task: str | list[Task]) -> dict[str, torch.Tensor]:
        """Training losses of ``task`` on ``batch``; ``loss`` is the total to optimise.

        Batch keys: ``frames`` (B, T, 3, H, W), ``audio`` fbank slices (B, A, 1024, 64) or a list of
        16 kHz waveforms (cut into ``cfg.audio_clips`` slices), ``subtitle``, and the texts:
        ``text`` or, on VAST-27M, ``vision_caption`` / ``audio_caption`` / ``omni_caption`` (one
        string per sample, see tasks.CAPTION_FOR_GROUP); for QA ``question`` and ``answer``. Texts
        are lists of strings or (ids, valid) tensors.
        Per group: ``vcc_<group>``, ``vcm_<group>``, ``vcg_<group>``, ``qa_<group>``. As upstream, a
        task averages its groups and ``loss`` sums the tasks: ret = VCC + itm_weight * VCM.
        """
        tasks = parse_task(task) if isinstance(task, str) else task
        enc = self.encode(batch, modalities_needed(tasks))
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        for t in tasks:
            task_loss = 0.0
            for group in t.groups:
                cond = condition_of(group)
                memory = self.memory(enc, cond)
                if t.kind == "ret":
                    text = self.caption_tokens(batch, group)
                    out[f"vcc_{group}"], out[f"vcm_{group}"] = self.retrieval_losses(enc, cond, memory, text)
                    task_loss = task_loss + out[f"vcc_{group}"] + self.cfg.itm_weight * out[f"vcm_{group}"]
                elif t.kind == "cap":
                    text = self.caption_tokens(batch, group)
                    out[f"vcg_{group}"] = self.caption_loss(memory, text)
                    task_loss = task_loss + out[f"vcg_{group}"]
                else:
                    out[f"qa_{group}"] = self.qa_loss(memory, batch["question"], batch["answer"])
                    task_loss = task_loss + out[f"qa_{group}"]
            total = total + task_loss / len(t.groups)
        out["loss"] = total
        return out

    def caption_tokens(self, batch: dict[str, Any], group: str) -> TokenBatch:
        """The text paired with ``group``: the omni-caption gets ``max_omni_caption_len`` tokens."""
        key = text_key(group, batch.keys())
        max_len = self.cfg.max_omni_caption_len if key == "omni_caption" else self.cfg.max_caption_len
        return self.tokens(batch[key], max_len)

    def retrieval_losses(
        self, enc: Encoded, cond: str, memory: TokenBatch, text: TokenBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """OM-VCC and OM-VCM, both over the global batch (all ranks).

        Matching sees, per local sample, the positive pair, the text with a hard-negative
        condition and the condition with a hard-negative text, negatives drawn from all ranks.
        """
        ids, valid = text
        feat_t = self.text_feature(self.encode_text(ids, valid))  # (B, D)
        feat_c = self.condition_feature(enc, cond)  # (B, D)
        temp = self.temperature()
        with_grad = self.cfg.contrastive_gather == "with_grad"
        vcc = losses.contrastive_loss(feat_t, feat_c, temp, self.cfg.label_smoothing, with_grad=with_grad)

        with torch.no_grad():
            t_all, c_all = losses.all_gather_no_grad(feat_t), losses.all_gather_no_grad(feat_c)  # (N, D)
        if t_all.shape[0] < 2:
            raise ValueError("the matching loss needs at least 2 samples in the global batch")
        offset = losses.rank() * ids.shape[0]
        neg_c, neg_t = losses.sample_hard_negatives(
            feat_t @ c_all.t() / temp, feat_c @ t_all.t() / temp, offset
        )
        mem, mem_valid = memory
        ids_all = losses.gather_padded(ids, self.cfg.text.pad_token_id)  # (N, L_max)
        valid_all = losses.gather_padded(valid, False)
        mem_all = losses.gather_padded(mem)  # (N, M_max, C), gradient flows back to every rank
        mem_valid_all = losses.gather_padded(mem_valid, False)
        L, M = ids_all.shape[1], mem_all.shape[1]
        ids, valid = _pad_to(ids, L, self.cfg.text.pad_token_id), _pad_to(valid, L, False)
        mem, mem_valid = _pad_to(mem, M, 0.0), _pad_to(mem_valid, M, False)
        logits = self.match_logits(
            torch.cat([ids, ids, ids_all[neg_t]]),
            torch.cat([valid, valid, valid_all[neg_t]]),
            torch.cat([mem, mem_all[neg_c], mem]),
            torch.cat([mem_valid, mem_valid_all[neg_c], mem_valid]),
        )
        return vcc, losses.matching_loss(logits)

    def match_logits(
        self, ids: torch.Tensor, valid: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor
    ) -> torch.Tensor:
        """Matching logits (B, 2) of texts against cross-attention memories (class 1 = match)."""
        h = self.multimodal_encoder.encode(ids, valid, memory, memory_valid)
        return self.itm_head(h[:, 0])

    def _mask(
        self, ids: torch.Tensor, maskable: torch.Tensor, prob: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.cfg.text
        return losses.mask_tokens(ids, maskable, prob, t.mask_token_id, (t.random_token_start, t.vocab_size))

    def caption_loss(self, memory: TokenBatch, text: TokenBatch) -> torch.Tensor:
        """OM-VCG: masked-token prediction under a causal mask with cross-attention to the memory.

        Every valid token but [CLS] may be masked (p = ``caption_mask_prob``), [SEP] included, so
        the decoder learns where to stop.
        """
        ids, valid = text
        maskable = valid.clone()
        maskable[:, 0] = False
        inp, labels = self._mask(ids, maskable, self.cfg.caption_mask_prob)
        h = self.multimodal_encoder.encode(inp, valid, memory[0], memory[1], causal=True)
        sel = labels != -100
        return losses.masked_lm_loss(self.multimodal_encoder.logits(h[sel]), labels[sel])

    def qa_tokens(self, question: list[str] | TokenBatch) -> TokenBatch:
        """Questions padded to exactly ``max_question_len`` so answer positions never depend on the batch."""
        ids, valid = self.tokens(question, self.cfg.max_question_len)
        L = self.cfg.max_question_len
        return _pad_to(ids, L, self.cfg.text.pad_token_id), _pad_to(valid, L, False)

    def qa_loss(
        self, memory: TokenBatch, question: list[str] | TokenBatch, answer: list[str] | TokenBatch
    ) -> torch.Tensor:
        """QA: ``question`` (bidirectional, never sees the answer) then ``[CLS] answer [SEP]`` (causal).

        Answer tokens after its [CLS] are masked with p = ``answer_mask_prob``.
        """
        q_ids, q_valid = self.qa_tokens(question)
        a_ids, a_valid = self.tokens(answer, self.cfg.max_answer_len)
        maskable = a_valid.clone()
        maskable[:, 0] = False
        a_inp, a_labels = self._mask(a_ids, maskable, self.cfg.answer_mask_prob)
        inp, valid = torch.cat([q_ids, a_inp], 1), torch.cat([q_valid, a_valid], 1)
        prefix = torch.full((inp.shape[0],), q_ids.shape[1], device=inp.device)
        h = self.multimodal_encoder.encode(inp, valid, memory[0], memory[1], causal=True, prefix_len=prefix)
        sel = a_labels != -100
        return losses.masked_lm_loss(
            self.multimodal_encoder.logits(h[:, q_ids.shape[1] :][sel]), a_labels[sel]
        )

    # --------------------------------------------------------------- inference

    @torch.no_grad()
    def retrieval_scores(
        self,
        texts: list[str] | TokenBatch,
        batch: dict[str, Any],
        group: str,
        rerank_k: int = 50,
        chunk: int = 64,
    ) -> torch.Tensor:
        """Text-to-item scores (Nt, Nc): contrastive similarity, top ``rerank_k`` per text re-scored.

        Re-scored entries get the matching head's match probability and rank above all others, as
        upstream (``evaluation/evaluation_mm.py::refine_score_matrix``). Upstream gives every other
        entry 0, so the order past rank k is whatever sorting ties yields; here they keep their
        contrastive order below the re-scored ones. Ranks 1..k (so R@1/5/10 for k >= 10) are the same.
        """
        cond = condition_of(group)
        enc = self.encode(batch, set(cond))
        ids, valid = self.tokens(texts, self.cfg.max_caption_len)
        feat_t = self.text_feature(self.encode_text(ids, valid))
        sim = (feat_t @ self.condition_feature(enc, cond).t()).float()  # (Nt, Nc)
        if rerank_k <= 0:
            return sim
        mem, mem_valid = self.memory(enc, cond)
        k = min(rerank_k, sim.shape[1])
        top = sim.topk(k, dim=1).indices  # (Nt, k)
        pairs_t = torch.arange(sim.shape[0], device=sim.device).repeat_interleave(k)
        pairs_c = top.reshape(-1)
        match_prob = []
        for i in range(0, pairs_t.numel(), chunk):
            t_i, c_i = pairs_t[i : i + chunk], pairs_c[i : i + chunk]
            logits = self.match_logits(ids[t_i], valid[t_i], mem[c_i], mem_valid[c_i])
            match_prob.append(logits.float().softmax(-1)[:, 1])
        scores = sim - 1e4
        scores[pairs_t, pairs_c] = torch.cat(match_prob)
        return scores

    @torch.no_grad()
    def generate_captions(
        self,
        batch: dict[str, Any],
        group: str = "tv",
        gen: GenerationConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[list[int]]]:
        """Caption token ids per item (``gen.num_return`` of them when sampling) for modality ``group``."""
        gen = gen or GenerationConfig(max_len=self.cfg.max_caption_len)
        cond = condition_of(group)
        mem, mem_valid = self.memory(self.encode(batch, set(cond)), cond)
        B = mem.shape[0]
        prefix = torch.full((B, 1), self.cfg.text.cls_token_id, dtype=torch.long, device=mem.device)
        return generate(
            self.multimodal_encoder,
            mem,
            mem_valid,
            prefix,
            torch.ones_like(prefix, dtype=torch.bool),
            gen,
            generator=generator,
        )

    @torch.no_grad()
    def caption(
        self,
        batch: dict[str, Any],
        group: str = "tv",
        gen: GenerationConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[str]]:
        """Captions as strings (needs a tokenizer): a list per item, ``gen.num_return`` long if sampling."""
        return [
            [self.decode(s) for s in seqs] for seqs in self.generate_captions(batch, group, gen, generator)
        ]

    @torch.no_grad()
    def answer(
        self, batch: dict[str, Any], group: str = "tv", gen: GenerationConfig | None = None
    ) -> list[list[int]]:
        """Answer token ids per item for ``batch['question']``: beam search after ``question [CLS]``."""
        gen = gen or GenerationConfig(
            strategy="beam", beam_size=3, length_penalty=1.0, max_len=self.cfg.max_answer_len
        )
        cond = condition_of(group)
        mem, mem_valid = self.memory(self.encode(batch, set(cond)), cond)
        q_ids, q_valid = self.qa_tokens(batch["question"])
        cls = torch.full_like(q_ids[:, :1], self.cfg.text.cls_token_id)
        ids, valid = (
            torch.cat([q_ids, cls], 1),
            torch.cat([q_valid, torch.ones_like(cls, dtype=torch.bool)], 1),
        )
        out = generate(
            self.multimodal_encoder, mem, mem_valid, ids, valid, gen, bidirectional_len=q_ids.shape[1]
        )
        return [seqs[0] for seqs in out]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text with the attached tokenizer."""
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached (VAST.set_tokenizer)")
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _pad_to(x: torch.Tensor, length: int, value: float | int | bool) -> torch.Tensor:
    """Right-pad dim 1 of (B, L, ...) to ``length``."""
    if x.shape[1] == length:
        return x
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)], dim=1)
