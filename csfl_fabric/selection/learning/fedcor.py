"""FedCor: a Gaussian process over the clients' loss changes, and greedy selection by predicted loss reduction."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from typing_extensions import override

from csfl_fabric.registry import SELECTORS
from csfl_fabric.selection.base import ClientSelector, check_number, check_param
from csfl_fabric.state import Selection, SelectionContext

#: One GP training sample: (round, client ids, their loss changes over that round).
LossChanges = tuple[int, np.ndarray, np.ndarray]


def gp_condition(cov: np.ndarray, k: int) -> np.ndarray:
    """The covariance after observing client ``k``: Sigma - Sigma[:, k] Sigma[k, :] / Sigma[k, k].

    >>> gp_condition(np.array([[1.0, 0.9], [0.9, 1.0]]), 0).round(2).tolist()
    [[0.0, 0.0], [0.0, 0.19]]
    """
    return cov - np.outer(cov[:, k], cov[k, :]) / cov[k, k]


def fedcor_greedy(cov: np.ndarray, weights: np.ndarray, discount: np.ndarray, candidates: np.ndarray,
                  m: int) -> list[int]:
    """FedCor's sequential selection: m times the candidate k maximising alpha_k sum_i p_i Sigma_ik / sqrt(Sigma_kk).

    The sum runs over the candidates not chosen yet; after each pick the covariance is conditioned on it
    (`gp_condition`). Ties go to the earlier candidate.

    >>> cov = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> fedcor_greedy(cov, np.full(3, 1 / 3), np.ones(3), np.arange(3), 2)  # 1 is explained by 0 once 0 is in
    [0, 2]
    """
    sigma = np.array(cov, dtype=float)
    remaining = [int(c) for c in candidates]
    chosen: list[int] = []
    while remaining and len(chosen) < m:
        sub = sigma[np.ix_(remaining, remaining)]
        score = (weights[remaining] @ sub) * discount[remaining] / np.sqrt(np.maximum(np.diag(sub), 1e-12))
        x = remaining.pop(int(np.argmax(score)))
        chosen.append(x)
        sigma = gp_condition(sigma, x)
    return chosen


def poly_covariance(embedding: np.ndarray, noise: float) -> np.ndarray:
    """The order-1 polynomial kernel over client embeddings (columns), plus noise: X^T X + noise^2 I."""
    return embedding.T @ embedding + noise**2 * np.eye(embedding.shape[1])


def gp_log_likelihood(xs: torch.Tensor, dl: torch.Tensor, weights: torch.Tensor, noise: float) -> torch.Tensor:
    """sum_s w_s log N(dl_s; 0, xs^T xs + noise^2 I) for rows dl_s that share one client set (one Cholesky).

    >>> xs, dl = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    >>> round(float(gp_log_likelihood(xs, dl, torch.ones(1, dtype=torch.float64), noise=1.0)), 4)  # -log(2 pi)
    -1.8379
    """
    n = xs.shape[1]
    chol = torch.linalg.cholesky(xs.T @ xs + noise**2 * torch.eye(n, dtype=xs.dtype))
    solved = torch.cholesky_solve(dl.T, chol)  # n x S
    quad = (dl.T * solved).sum(0)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return (weights * (-0.5 * (quad + log_det + n * np.log(2 * np.pi)))).sum()


def train_embeddings(embedding: np.ndarray, data: list[LossChanges], gamma: float, epochs: int, lr: float,
                     noise: float) -> np.ndarray:
    """Fit the client embeddings by maximum marginal likelihood of the loss changes (Adam, FedCor's ``MML``).

    The loss is -sum_e gamma^(latest - e) log N(dl_e; 0, Sigma[ids_e, ids_e]) (zero prior mean, as the authors'
    default ``update_mean=False``); samples over the same clients share one Cholesky factor per step.
    """
    usable = [d for d in data if len(d[1]) > 0]
    if not usable:
        return embedding
    latest = max(e for e, _, _ in usable)
    groups: dict[tuple[int, ...], list[tuple[float, np.ndarray]]] = {}
    for e, ids, dl in usable:
        groups.setdefault(tuple(int(i) for i in ids), []).append((gamma ** (latest - e), dl))
    batches = [(torch.tensor(ids), torch.tensor(np.stack([dl for _, dl in rows]), dtype=torch.float64),
                torch.tensor([w for w, _ in rows], dtype=torch.float64)) for ids, rows in groups.items()]
    x = torch.tensor(embedding, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=lr)
    threads = torch.get_num_threads()
    # K x K matrices are far too small to share: a second thread made training ~20x slower on a busy 2-core machine.
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = -sum(gp_log_likelihood(x[:, ids], dl, w, noise) for ids, dl, w in batches)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return x.detach().numpy()


@SELECTORS.register("learning.fedcor")
class FedCorSelector(ClientSelector):
    """FedCor, correlation-based active selection (Tang et al., CVPR 2022, https://arxiv.org/abs/2103.13822).

    A Gaussian process models the change of every client's loss over a round, dl ~ N(0, Sigma), with Sigma from
    an order-1 polynomial kernel over learnt client embeddings (`poly_covariance`, ``dimension`` per client)
    fitted by maximum marginal likelihood (`train_embeddings`). Rounds:

    1. Warm-up (the first ``warmup`` rounds): random selection; the loss of the global model on every available
       client is probed at the start of each round (``ctx.probe``, counted), the changes between consecutive
       rounds are the training data, and the GP is trained (``warmup_epochs`` Adam steps) every round.
    2. Then every round selects greedily (`fedcor_greedy`): m times the available client k with the largest
       predicted weighted loss reduction alpha_k sum_i p_i Sigma_ik / sqrt(Sigma_kk), conditioning Sigma on each
       pick; a picked client's discount alpha_k is multiplied by ``discount``.
    3. Every ``interval`` rounds after the warm-up, one random-selection round has all available clients' losses
       probed before and after it; the GP is retrained on them (``epochs`` steps) and the discounts reset.

    Training data older than ``group_size`` rounds is dropped; older data weigh gamma^age. Aggregation: simple
    average (weight 1/m), as the authors' code (https://github.com/Yoruko-Tang/FedCor, ``average_weights``).
    Defaults are that code's (``options.py``: warmup 25, GPR_interval 5, group_size 10, GPR_gamma 0.8,
    GPR_Epoch 100, discount 0.9, Poly kernel, dimension 15, MML, noise 0.01; 150 warm-up steps at lr 0.01).

    Deviations: the code's retraining round is an extra, discarded round of random training on a copy of the
    model (its real round still selects by the GP); here the retraining round is the real round, trained on
    random clients, as the paper's text describes it. The code's warm-up is ``warmup + 1`` rounds (rounds
    0..warmup); here ``warmup``. Only available clients are probed, so a training sample covers the clients
    online at both ends of its round.

    Args:
        warmup: random warm-up rounds with every client's loss probed.
        interval: rounds between GP retraining rounds after the warm-up.
        group_size: rounds of loss changes kept for training.
        gamma: weight decay per round of age of the training data.
        epochs: Adam steps of a retraining; warmup_epochs: of each warm-up training.
        lr: Adam's learning rate.
        discount: factor applied to a client's alpha each time it is picked, in (0, 1].
        dimension: embedding dimension per client.
        noise: observation noise std of the GP.
    """

    def __init__(self, warmup: int = 25, interval: int = 5, group_size: int = 10, gamma: float = 0.8,
                 epochs: int = 100, warmup_epochs: int = 150, lr: float = 0.01, discount: float = 0.9,
                 dimension: int = 15, noise: float = 0.01) -> None:
        for name, value in (("warmup", warmup), ("interval", interval), ("group_size", group_size),
                            ("epochs", epochs), ("warmup_epochs", warmup_epochs), ("dimension", dimension)):
            check_param(name, value, type(value) is int and value >= 1, "use an integer >= 1")
        check_number("gamma", gamma, lambda v: 0 < v <= 1, "use a value in (0, 1]")
        check_number("lr", lr, lambda v: v > 0, "use a value > 0")
        check_number("discount", discount, lambda v: 0 < v <= 1, "use a value in (0, 1]")
        check_number("noise", noise, lambda v: v > 0, "use a value > 0")
        self.warmup, self.interval, self.group_size, self.gamma = warmup, interval, group_size, float(gamma)
        self.epochs, self.warmup_epochs, self.lr = epochs, warmup_epochs, float(lr)
        self.discount_factor, self.dimension, self.noise = float(discount), dimension, float(noise)
        self.embedding: np.ndarray | None = None  # dimension x K
        self.discount = np.zeros(0)
        self.data: list[LossChanges] = []
        self.start: tuple[int, np.ndarray, np.ndarray] | None = None  # (round, ids, losses) at a collecting round

    def collects(self, round_idx: int) -> bool:
        """Whether ``round_idx`` is a random round whose loss changes train the GP (warm-up or retraining)."""
        after = round_idx - self.warmup
        return after < 0 or (after > 0 and after % self.interval == 0)

    @override
    def select(self, ctx: SelectionContext) -> Selection:
        n = len(ctx.num_samples)
        if self.embedding is None:
            self.embedding = ctx.rng.standard_normal((self.dimension, n)) / np.sqrt(self.dimension)
            self.discount = np.ones(n)
        losses = None
        if self.start is not None:  # the round that collected has ended: its loss changes train the GP
            losses = ctx.probe(ctx.available)
            self._learn(ctx.round, ctx.available, np.asarray(losses, dtype=float))
        k = min(ctx.k, len(ctx.available))
        if self.collects(ctx.round):
            if losses is None:
                losses = ctx.probe(ctx.available)
            self.start = (ctx.round, ctx.available.copy(), np.asarray(losses, dtype=float))
            ids = ctx.rng.choice(ctx.available, size=k, replace=False).astype(np.int64)
        else:
            cov = poly_covariance(self.embedding, self.noise)
            ids = np.array(fedcor_greedy(cov, ctx.num_samples / ctx.num_samples.sum(), self.discount,
                                         ctx.available, k), dtype=np.int64)
            self.discount[ids] *= self.discount_factor
        return Selection(ids=ids, weights=np.full(k, 1.0 / k))

    def _learn(self, round_idx: int, ids: np.ndarray, losses: np.ndarray) -> None:
        start_round, start_ids, start_losses = self.start  # type: ignore[misc]
        both, at_start, at_end = np.intersect1d(start_ids, ids, return_indices=True)
        self.data = [d for d in self.data if d[0] + self.group_size >= start_round]
        self.data.append((start_round, both, losses[at_end] - start_losses[at_start]))
        warm = start_round < self.warmup
        self.embedding = train_embeddings(self.embedding, self.data, self.gamma,  # type: ignore[arg-type]
                                          self.warmup_epochs if warm else self.epochs, self.lr, self.noise)
        if not warm:
            self.discount[:] = 1.0  # retrained: every client's discount starts over
        self.start = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"embedding": None if self.embedding is None else self.embedding.copy(),
                "discount": self.discount.copy(), "data": [(e, i.copy(), d.copy()) for e, i, d in self.data],
                "start": None if self.start is None else (self.start[0], self.start[1].copy(), self.start[2].copy())}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        emb, start = state["embedding"], state["start"]
        self.embedding = None if emb is None else np.array(emb, dtype=float)
        self.discount = np.array(state["discount"], dtype=float)
        self.data = [(int(e), np.array(i, dtype=np.int64), np.array(d, dtype=float)) for e, i, d in state["data"]]
        self.start = None if start is None else (int(start[0]), np.array(start[1], dtype=np.int64),
                                                 np.array(start[2], dtype=float))
