import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vast.model import losses


def _features(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    c = F.normalize(t + 0.5 * torch.randn(n, d, generator=g), dim=-1)
    return t, c


def test_contrastive_loss_matches_hand_computation():
    t, c = _features()
    temp = torch.tensor(0.07)
    sim = t @ c.t() / temp
    n, eps = sim.shape[0], 0.1
    target = (1 - eps) * torch.eye(n) + eps / n
    by_hand = (
        -(target * sim.log_softmax(1)).sum(1).mean() - (target * sim.t().log_softmax(1)).sum(1).mean()
    ) / 2
    assert torch.allclose(losses.contrastive_loss(t, c, temp, 0.1), by_hand, atol=1e-6)
    assert torch.allclose(losses.contrastive_loss(t, c, temp, 0.1, with_grad=True), by_hand, atol=1e-6)
    # aligned features give a lower loss than shuffled ones
    assert losses.contrastive_loss(t, c, temp) < losses.contrastive_loss(t, c.roll(1, 0), temp)


def test_upstream_gather_gives_each_feature_gradient_as_a_query_only():
    """Upstream forward_ret: sim_t2c = t @ gather(c).T and sim_c2t = c @ gather(t).T, gathers detached."""
    t, c = _features()
    temp = torch.tensor(0.07)
    t1, c1 = t.clone().requires_grad_(), c.clone().requires_grad_()
    losses.contrastive_loss(t1, c1, temp).backward()
    t2, c2 = t.clone().requires_grad_(), c.clone().requires_grad_()
    target = torch.arange(8)
    by_rule = (F.cross_entropy(t2 @ c2.detach().t() / temp, target, label_smoothing=0.1)
               + F.cross_entropy(c2 @ t2.detach().t() / temp, target, label_smoothing=0.1)) / 2
    by_rule.backward()
    assert torch.allclose(t1.grad, t2.grad, atol=1e-7) and torch.allclose(c1.grad, c2.grad, atol=1e-7)
    t3, c3 = t.clone().requires_grad_(), c.clone().requires_grad_()
    losses.contrastive_loss(t3, c3, temp, with_grad=True).backward()
    assert not torch.allclose(t1.grad, t3.grad, atol=1e-4)  # the key side is what the option adds


def test_hard_negatives_never_pick_the_positive():
    sim_t2c, sim_c2t = torch.randn(3, 6) * 5, torch.randn(3, 6) * 5  # 3 local rows of a global batch of 6
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        neg_c, neg_t = losses.sample_hard_negatives(sim_t2c, sim_c2t, offset=3, generator=g)
        assert (neg_c != torch.arange(3, 6)).all() and (neg_t != torch.arange(3, 6)).all()
        assert neg_c.max() < 6 and neg_t.max() < 6
    # the similarity steers the draw: a near-certain negative is (almost) always picked
    sim = torch.full((2, 2), -30.0)
    sim[0, 1] = sim[1, 0] = 30.0
    neg_c, _ = losses.sample_hard_negatives(sim, sim, generator=torch.Generator().manual_seed(0))
    assert neg_c.tolist() == [1, 0]


def test_matching_loss_labels_positive_first():
    logits = torch.tensor([[-5.0, 5.0]] * 2 + [[5.0, -5.0]] * 4)
    assert losses.matching_loss(logits) < 1e-3
    assert losses.matching_loss(logits.flip(1)) > 5


def test_mask_tokens_statistics_and_exclusions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 100, (64, 30), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    maskable[:, 25:] = False
    inp, labels = losses.mask_tokens(ids, maskable, 0.6, mask_id=4, random_range=(5, 100), generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 25:].any()
    assert (labels[chosen] == ids[chosen]).all()
    rate = chosen[:, 1:25].float().mean().item()
    assert 0.55 < rate < 0.65
    masked = (inp[chosen] == 4).float().mean().item()
    assert 0.75 < masked < 0.85
    assert (inp[~chosen] == ids[~chosen]).all()
    assert ((inp >= 5) | (inp == 4)).all()  # random replacements never draw special ids
    # rows are redrawn until something is masked, so every row carries a loss even at low p
    _, labels = losses.mask_tokens(ids[:, :3], maskable[:, :3], 0.05, 4, (5, 100), generator=g)
    assert ((labels != -100).sum(1) >= 1).all()
    _, labels = losses.mask_tokens(ids, maskable, 0.0, 4, (5, 100))
    assert (labels == -100).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, t: torch.Tensor, c: torch.Tensor, with_grad: bool, out: dict
            ) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = t.shape[0] // world
        t_local = t[rank * n : (rank + 1) * n].clone().requires_grad_()
        c_local = c[rank * n : (rank + 1) * n].clone().requires_grad_()
        loss = losses.contrastive_loss(t_local, c_local, torch.tensor(0.05), with_grad=with_grad)
        loss.backward()
        # DDP divides by the world size when it averages parameter gradients
        out[rank] = (loss.detach(), t_local.grad / world, c_local.grad / world)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("with_grad", [False, True])
def test_all_gather_loss_in_two_process_gloo_group_matches_single_process(with_grad):
    t, c = _features(n=8)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), t, c, with_grad, out), nprocs=2, join=True)
        results = dict(out)
    t_ref, c_ref = t.clone().requires_grad_(), c.clone().requires_grad_()
    ref = losses.contrastive_loss(t_ref, c_ref, torch.tensor(0.05), with_grad=with_grad)
    ref.backward()
    if with_grad:  # every rank computes the whole global loss
        assert all(torch.allclose(results[r][0], ref.detach(), atol=1e-6) for r in (0, 1))
    else:  # each rank its own rows: their mean is the global loss
        assert torch.allclose((results[0][0] + results[1][0]) / 2, ref.detach(), atol=1e-6)
    for rank in (0, 1):
        loss, gt, gc = results[rank]
        # after DDP's mean, each rank's gradient is the single-process gradient of its slice
        assert torch.allclose(gt, t_ref.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
        assert torch.allclose(gc, c_ref.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)


@pytest.mark.parametrize("n", [1, 3])
def test_all_gather_is_identity_without_a_group(n):
    x = torch.randn(n, 4)
    assert losses.all_gather_with_grad(x) is x
