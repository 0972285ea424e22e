"""The VAST objectives: OM-VCC (contrastive), OM-VCM (matching), OM-VCG (captioning) and QA.

Rules follow upstream ``model/vast.py`` (``forward_ret``, ``forward_cap``, ``forward_qa``) and
``model/general_module.py::TokenMasker``; see each function.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and keeps this rank's slice.

    Every rank computes the same global loss; summing makes each rank's local gradient the full
    gradient of that loss, and DDP's mean over ranks then yields exactly the global-loss gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def rank() -> int:
    """This process's rank in the default group (0 outside one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...) in rank order; identity outside a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world * B, ...) in rank order, detached (upstream ``concat_all_gather``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x.detach()
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    return torch.cat(out, dim=0)


def contrastive_loss(
    text: torch.Tensor,
    cond: torch.Tensor,
    temperature: torch.Tensor,
    label_smoothing: float = 0.1,
    with_grad: bool = False,
) -> torch.Tensor:
    """OM-VCC: symmetric InfoNCE of L2-normalised features (B, D), (B, D) over the global batch.

    Default (upstream ``model/vast.py::forward_ret``): this rank's texts against every condition and
    this rank's conditions against every text, the gathered side detached (single process too), so
    a feature gets gradient only as a query; the loss is the mean over this rank's rows, and DDP's
    gradient average makes it the global-batch gradient. ``with_grad``: every rank builds the whole
    (N, N) matrix with gradient through the gather (open_clip's ``gather_with_grad``).
    """
    if with_grad:
        text, cond = all_gather_with_grad(text), all_gather_with_grad(cond)  # (N, D)
        sim = text @ cond.t() / temperature  # (N, N)
        target = torch.arange(sim.shape[0], device=sim.device)
        t2c = F.cross_entropy(sim, target, label_smoothing=label_smoothing)
        c2t = F.cross_entropy(sim.t(), target, label_smoothing=label_smoothing)
        return (t2c + c2t) / 2
    B = text.shape[0]
    target = torch.arange(B, device=text.device) + rank() * B
    sim_t2c = text @ all_gather_no_grad(cond).t() / temperature  # (B, N)
    sim_c2t = cond @ all_gather_no_grad(text).t() / temperature  # (B, N)
    t2c = F.cross_entropy(sim_t2c, target, label_smoothing=label_smoothing)
    c2t = F.cross_entropy(sim_c2t, target, label_smoothing=label_smoothing)
    return (t2c + c2t) / 2


def gather_padded(x: torch.Tensor, value: float | int | bool = 0) -> torch.Tensor:
    """All-gather (B, L, ...) tensors whose L differs by rank: pad to the longest L, then gather with grad."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    length = torch.tensor([x.shape[1]], device=x.device)
    lengths = [torch.empty_like(length) for _ in range(dist.get_world_size())]
    dist.all_gather(lengths, length)
    pad = int(max(lengths)) - x.shape[1]
    if pad:
        x = torch.cat([x, x.new_full((x.shape[0], pad, *x.shape[2:]), value)], dim=1)
    return all_gather_with_grad(x)


@torch.no_grad()
def sample_hard_negatives(
    sim_t2c: torch.Tensor, sim_c2t: torch.Tensor, offset: int = 0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF hard negatives over the global batch, positives excluded.

    ``sim_t2c`` (B, N): local texts against all conditions; ``sim_c2t`` (B, N): local conditions
    against all texts; local sample i is global sample ``offset + i``. Returns global indices
    (condition per text, text per condition), each (B,), drawn with probability softmax + 1e-4.
    """
    B = sim_t2c.shape[0]
    rows, positives = torch.arange(B, device=sim_t2c.device), torch.arange(B, device=sim_t2c.device) + offset
    picks = []
    for sim in (sim_t2c, sim_c2t):
        weights = F.softmax(sim.float(), dim=1) + 1e-4
        weights[rows, positives] = 0
        picks.append(torch.multinomial(weights, 1, generator=generator).squeeze(1))
    return picks[0], picks[1]


def matching_loss(logits: torch.Tensor) -> torch.Tensor:
    """OM-VCM: cross-entropy of matching logits (3B, 2) ordered [(t, c), (t, c_neg), (t_neg, c)]."""
    B = logits.shape[0] // 3
    labels = torch.zeros(3 * B, dtype=torch.long, device=logits.device)
    labels[:B] = 1
    return F.cross_entropy(logits, labels)


def mask_tokens(
    ids: torch.Tensor,
    maskable: torch.Tensor,
    prob: float,
    mask_id: int,
    random_range: tuple[int, int],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of token ids (B, L): returns (input ids, labels with -100 where not masked).

    Each ``maskable`` token is chosen with ``prob``, redrawing a row until at least one is chosen
    (as upstream, so every row carries a loss); a chosen token becomes [MASK] 80% of the time, a
    random id from ``random_range`` (the non-special vocabulary) 10%, and stays 10%.
    """
    if prob <= 0:
        return ids, torch.full_like(ids, -100)
    rand = lambda shape: torch.rand(shape, generator=generator).to(ids.device)
    chosen = (rand(ids.shape) < prob) & maskable
    redraw = ~chosen.any(1) & maskable.any(1)
    while redraw.any():
        chosen[redraw] = (rand((int(redraw.sum()), ids.shape[1])) < prob) & maskable[redraw]
        redraw = ~chosen.any(1) & maskable.any(1)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    u = rand(ids.shape)
    out = torch.where(chosen & (u < 0.8), torch.full_like(ids, mask_id), ids)
    random_ids = torch.randint(*random_range, ids.shape, generator=generator).to(ids.device)
    return torch.where(chosen & (u >= 0.8) & (u < 0.9), random_ids, out), labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked positions only: logits (M, V) for labels (M,) already selected."""
    return F.cross_entropy(logits.float(), labels)
