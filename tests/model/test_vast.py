import pytest
import torch

from tests.model.synthetic import CAPTIONS, make_batch, tiny_model
from vast.model import GenerationConfig
from vast.model.vast import resize_frame_embedding

GROUPS = ["tv", "ta", "ts", "tva", "tvs", "tvas"]


def test_encoder_outputs_and_cross_attention_memory_shapes(model, batch):
    enc = model.encode(batch, {"v", "a", "s"})
    assert enc.vision.shape == (4, 2, 1 + 16, 128)  # 32 px / patch 8 -> 16 patches + CLS, every frame
    assert enc.audio.shape == (4, 1, 32, 128)  # 128 fbank frames x 64 mel / 16x16 patches
    L = enc.subtitle.shape[1]
    assert L == model.cfg.max_subtitle_len  # upstream: subtitles always fill max_subtitle_len slots
    mem, valid = model.memory(enc, "vas")
    assert mem.shape == (4, 2 * 17 + 32 + L, 128) and valid.shape == mem.shape[:2]
    assert valid.all()  # padding included, no memory mask
    for cond in ("v", "a", "s", "va", "vs", "vas"):
        feat = model.condition_feature(enc, cond)
        assert feat.shape == (4, 64) and torch.allclose(feat.norm(dim=-1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize("kind", ["ret", "cap", "qa"])
def test_every_task_and_modality_group_gives_finite_losses(model, batch, kind):
    task = kind + "%" + "%".join(GROUPS)
    out = model(batch, task)
    prefix = {"ret": ["vcc", "vcm"], "cap": ["vcg"], "qa": ["qa"]}[kind]
    assert set(out) == {f"{p}_{g}" for p in prefix for g in GROUPS} | {"loss"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    out["loss"].backward()
    assert model.multimodal_encoder.bert.embeddings.word_embeddings.weight.grad is not None


def test_subtitle_memory_is_max_length_and_unmasked_as_upstream(tokenizer, batch):
    """Upstream: tokenizer(padding="max_length", max_length=max_subtitle_len), BERT with that attention
    mask, then every slot projected (+ type embedding) into the memory, which has no mask."""
    torch.manual_seed(0)
    model = tiny_model(tokenizer).eval()
    L = model.cfg.max_subtitle_len
    tok = tokenizer(batch["subtitle"], padding="max_length", truncation=True, max_length=L,
                    return_tensors="pt")
    ids, att = tok["input_ids"], tok["attention_mask"].bool()
    assert ids.shape == (4, L) and not att.all()  # real padding in play
    with torch.no_grad():
        hidden = model.multimodal_encoder.encode(ids, att)
        want = model.hidden_trans_subtitle_multimodal(hidden) + model.subtitle_type_embeddings
        mem, valid = model.memory(model.encode(batch, {"s"}), "s")
        assert torch.allclose(mem, want, atol=1e-6) and valid.all()
        q, q_valid = model.tokens(batch["text"], 40)
        by_rule = model.multimodal_encoder.encode(q, q_valid, want, None)  # no memory mask
        assert torch.allclose(model.multimodal_encoder.encode(q, q_valid, mem, valid), by_rule, atol=1e-5)
    masked = tiny_model(tokenizer, subtitle_memory="masked").eval()
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        mem2, valid2 = masked.memory(masked.encode(batch, {"s"}), "s")
    assert mem2.shape[1] == int(att.sum(1).max()) < L and not valid2.all()  # ours: longest, masked
    with pytest.raises(ValueError, match="subtitle_memory"):
        tiny_model(tokenizer, subtitle_memory="unmasked")


def test_vast27m_batch_pairs_each_group_with_its_caption(model):
    batch = make_batch()
    del batch["text"]
    batch |= {"vision_caption": CAPTIONS, "audio_caption": CAPTIONS[::-1], "omni_caption": CAPTIONS}
    out = model(batch, "ret%tvas%tv%ta_cap%tvas%tv%ta")
    assert {"vcc_tv", "vcc_ta", "vcc_tvas", "vcg_ta"} <= set(out)
    assert torch.isfinite(out["loss"])


def test_more_frames_and_clips_than_the_frame_embedding_are_interpolated(model):
    batch = make_batch(frames=5, clips=3)
    enc = model.encode(batch, {"v", "a"})
    assert model.memory(enc, "va")[0].shape[1] == 5 * 17 + 3 * 32
    assert torch.isfinite(model(batch, "cap%tva")["loss"])
    emb = torch.arange(2.0).view(1, 2, 1)
    assert resize_frame_embedding(emb, 5).flatten().tolist() == [0, 0, 0, 1, 1]  # source floor(i * 2 / 5)
    emb = torch.arange(8.0).view(1, 8, 1)
    assert resize_frame_embedding(emb, 3).flatten().tolist() == [0, 2, 5]


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, batch):
    torch.manual_seed(0)
    model = tiny_model(tokenizer)
    grads = []
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        model.zero_grad()
        torch.manual_seed(1)  # same token masking and hard negatives in both runs
        model(batch, "ret%tvas_cap%tvas")["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], atol=1e-5), n


def test_a_model_without_a_tower_refuses_its_modality(tokenizer, batch):
    model = tiny_model(tokenizer, audio=None)
    assert not hasattr(model, "contra_head_va")
    assert torch.isfinite(model(batch, "cap%tvs")["loss"])
    with pytest.raises(ValueError, match="modalities"):
        model(batch, "cap%ta")


def test_tiny_model_learns_all_objectives_on_a_handful_of_samples(tokenizer):
    """Overfit 4 synthetic clips: retrieval ranks them, greedy/beam captions and answers reproduce targets."""
    torch.manual_seed(0)
    model = tiny_model(tokenizer)
    batch = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    task = "ret%tvas%tv_cap%tvas%tv_qa%tv"
    first, history = None, []
    for step in range(400):
        model.train()
        out = model(batch, task)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses = {k: v.item() for k, v in out.items()}
        first = first or losses
        history.append(losses["loss"])
        if step % 25 == 24 and _learned(model, batch):
            break
    assert _learned(model, batch), f"not learned after {step + 1} steps: {losses}"
    assert all(losses[k] < first[k] for k in first), (first, losses)
    assert sum(history[-5:]) < sum(history[:5]) / 5

    model.eval()
    scores = model.retrieval_scores(batch["text"], batch, "tvas", rerank_k=2)
    assert scores.shape == (4, 4) and (scores.argmax(1) == torch.arange(4)).all()
    beam = model.caption(batch, "tvas", GenerationConfig(strategy="beam", beam_size=3, max_len=16))
    assert beam == [[c] for c in CAPTIONS]
    sampled = model.caption(
        batch,
        "tv",
        GenerationConfig(strategy="sample", top_k=10, num_return=3, max_len=16),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(sampled) == 4 and all(len(s) == 3 for s in sampled)
    assert sum(s == CAPTIONS[i] for i, caps in enumerate(sampled) for s in caps) >= 6  # mostly the target


@torch.no_grad()
def _learned(model, batch) -> bool:
    model.eval()
    ok_ret = all(
        (model.retrieval_scores(batch["text"], batch, g, rerank_k=k).argmax(1) == torch.arange(4)).all()
        for g in ("tvas", "tv")
        for k in (0, 2)
    )
    greedy = GenerationConfig(strategy="greedy", max_len=16)
    ok_cap = all(model.caption(batch, g, greedy) == [[c] for c in CAPTIONS] for g in ("tvas", "tv"))
    ok_qa = [model.decode(a) for a in model.answer(batch, "tv")] == batch["answer"]
    return bool(ok_ret and ok_cap and ok_qa)


@pytest.mark.parametrize("kind", ["ret", "cap", "qa"])
def test_every_loss_decreases_with_training(tokenizer, kind):
    torch.manual_seed(0)
    model = tiny_model(tokenizer)
    batch = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    task = kind + "%" + "%".join(GROUPS)
    history = []
    for _ in range(20):
        out = model(batch, task)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    for key in history[0]:
        start = sum(h[key] for h in history[:3]) / 3
        end = sum(h[key] for h in history[-3:]) / 3
        assert end < start, (key, start, end)


def test_waveforms_are_accepted_in_place_of_fbank_slices(model):
    batch = make_batch()
    wav = torch.randn(16000 * 3).numpy() * 0.1
    batch["audio"] = [wav, None, wav[:8000], wav]
    model.eval()
    enc = model.encode(batch, {"a"})
    assert enc.audio.shape == (4, 1, 256, 128)  # one 1024-frame slice (cfg.audio_clips) of 256 tokens
    assert torch.allclose(enc.audio[0], enc.audio[3]) and not torch.allclose(enc.audio[0], enc.audio[1])


GRAD_CHECK = (
    "contra_head_t.linear.weight",
    "contra_head_vas.weight",
    "vision_encoder.patch_embed.proj.weight",
)


def _ret_worker(rank: int, world: int, port: int, vocab_dir: str, out: dict) -> None:
    import os

    import torch.distributed as dist

    from vast.model import load_tokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = tiny_model(load_tokenizer(vocab_dir), itm_weight=0.0)  # loss = VCC: deterministic
        full = make_batch()
        local = {k: v[rank * 2 : (rank + 1) * 2] for k, v in full.items()}  # subtitle lengths differ by rank
        losses = model(local, "ret%tvas%tv")
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if n in GRAD_CHECK}
        for g in grads.values():  # what DDP does: average over ranks
            dist.all_reduce(g)
            g /= world
        out[rank] = ({k: v.detach() for k, v in losses.items()}, grads)
    finally:
        dist.destroy_process_group()


def test_retrieval_losses_in_a_two_process_gloo_group(vocab_dir, tokenizer):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ret_worker, args=(2, port, str(vocab_dir), out), nprocs=2, join=True)
        results = dict(out)
    torch.manual_seed(0)
    model = tiny_model(tokenizer, itm_weight=0.0)
    single = model(make_batch(), "ret%tvas%tv")
    single["loss"].backward()
    for key in ("vcc_tvas", "vcc_tv", "loss"):
        # upstream VCC: each rank scores its own rows against the gathered batch; their mean is the
        # single-process loss over all 4 samples
        mean = (results[0][0][key] + results[1][0][key]) / 2
        assert torch.allclose(mean, single[key], atol=1e-5), key
    for rank in (0, 1):
        losses, grads = results[rank]
        # after DDP's averaging, the same gradient as one process on the whole batch
        for name, g in grads.items():
            assert torch.allclose(g, dict(model.named_parameters())[name].grad, atol=1e-5), name
        assert (
            torch.isfinite(losses["vcm_tvas"]) and losses["vcm_tvas"] > 0
        )  # matching ran on global negatives


def test_captioner_mode_from_decoded_media(model):
    """What the captioners call: uint8 frames or 16 kHz waveforms in, 3 sampled captions per clip out."""
    import numpy as np

    from vast.model import CAPTIONER_SAMPLING, media_batch

    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (n, 40, 60, 3), dtype=np.uint8) for n in (12, 30)]
    waves = [rng.standard_normal(16000 * 4).astype(np.float32) * 0.1, None]
    batch = media_batch(videos, waves, num_frames=2, num_clips=1, size=32)
    model.eval()
    g = torch.Generator().manual_seed(0)
    for group in ("tv", "ta"):
        captions = model.caption(batch, group, CAPTIONER_SAMPLING, generator=g)
        assert len(captions) == 2 and all(
            len(c) == 3 and all(isinstance(s, str) for s in c) for c in captions
        )
    answers = model.answer({**batch, "question": ["what is it", "who sings"]}, "tva")
    assert len(answers) == 2 and all(len(a) <= model.cfg.max_answer_len for a in answers)
