"""Why does a gradient-based selection pick what it picks? Round-by-round measurements.

For dynamicAL, s(u) = ||g_u||^2 + w <g_L, g_u>; these functions split a round's scores into their
terms and compare the picks with entropy's and with random picks:
  - Spearman correlation of s with entropy and with ||g_u||^2 alone;
  - the share of |s| that comes from the inner-product term;
  - ||g_L|| against the typical ||g_u||;
  - how wrong the model is on the picks (true labels are known in a benchmark);
  - redundancy: the mean pairwise cosine of the picks' gradient embeddings (the classifier
    layer's per-sample gradient (p - e_yhat) ⊗ [h, 1], exact), against random picks.
Pure torch/numpy; used by benchmarks/al_quality.py.
"""
from __future__ import annotations

import numpy as np
import torch

from raydal.scoring.diversity import badge_embedding, logits_and_features
from raydal.scoring.grads import dynamical_scores
from raydal.scoring.uncertainty import entropy


def ranks(v: np.ndarray) -> np.ndarray:
    """(N,) -> (N,) float ranks 0..N-1, ties get their mean rank."""
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=r)
    return sums[inverse] / counts[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two (N,) arrays (NaN if either is constant)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def mean_pairwise_cosine(q: np.ndarray, h: np.ndarray) -> float:
    """Mean cosine over pairs i != j of factorised gradient embeddings g = q ⊗ [h, 1]:
    <g_i, g_j> = <q_i, q_j> (<h_i, h_j> + 1). q (N, C), h (N, d) float64."""
    gram = (q @ q.T) * (h @ h.T + 1.0)
    norm = np.sqrt(np.clip(np.diagonal(gram), 1e-300, None))
    cos = gram / norm[:, None] / norm[None, :]
    n = len(q)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1))) if n > 1 else float("nan")


def head_embeddings(model: torch.nn.Module, x: torch.Tensor, batch: int = 512):
    """(logits (N, C), q = softmax - e_yhat (N, C) float64, h (N, d) float64)."""
    logits, q, h = [], [], []
    for s in range(0, len(x), batch):
        z, f = logits_and_features(model, x[s:s + batch])
        rows = badge_embedding(z, f).astype(np.float64)
        c = int(rows[0, 0])
        logits.append(z.double())
        q.append(rows[:, 1:1 + c])
        h.append(rows[:, 1 + c:])
    return torch.cat(logits), np.concatenate(q), np.concatenate(h)


def score_terms(model, x: torch.Tensor, g_L: dict | None, params: str = "all",
                batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(||g_u||^2 (N,), <g_L, g_u> (N,)) float64, the two terms of the dynamicAL score."""
    norms, inners = [], []
    for s in range(0, len(x), batch):
        xb = x[s:s + batch]
        n = dynamical_scores(model, xb, ip_weight=0.0, params=params)
        full = (dynamical_scores(model, xb, ip_weight=1.0, g_L=g_L, params=params)
                if g_L is not None else n)
        norms.append(n.numpy())
        inners.append((full - n).numpy())
    return np.concatenate(norms), np.concatenate(inners)


def diagnose(model, x: torch.Tensor, y: torch.Tensor, free: np.ndarray, picks: np.ndarray,
             g_L: dict | None = None, ip_weight: float | None = None, params: str = "all",
             sample: int = 2000, seed: int = 0) -> dict:
    """Diagnostics of one round. x (N, ...) the pool, y (N,) true labels, free (F,) unlabeled
    row indices, picks (b,) picked row indices; a uniform ``sample`` of the free rows stands for
    the pool and gives the random picks of the redundancy baseline. The dynamicAL terms are
    measured only when ``ip_weight`` is given (g_L is then the round's labeled gradient)."""
    rng = np.random.default_rng(seed)
    s_rows = np.sort(rng.choice(free, size=min(sample, len(free)), replace=False))
    rand = s_rows[rng.permutation(len(s_rows))[:len(picks)]]
    logits, q, h = head_embeddings(model, x[s_rows])
    ent = entropy(torch.softmax(logits, 1)).numpy()
    p_logits, p_q, p_h = head_embeddings(model, x[picks])
    _, r_q, r_h = head_embeddings(model, x[rand])
    out = {
        "picks_misclassified": float((p_logits.argmax(1) != y[picks]).double().mean()),
        "pool_misclassified": float((logits.argmax(1) != y[s_rows]).double().mean()),
        "entropy_picks_mean": float(entropy(torch.softmax(p_logits, 1)).mean()),
        "entropy_pool_mean": float(ent.mean()),
        "redundancy_picks": mean_pairwise_cosine(p_q, p_h),
        "redundancy_random": mean_pairwise_cosine(r_q, r_h),
    }
    if ip_weight is None:
        return out
    norm, inner = score_terms(model, x[s_rows], g_L, params)
    score = norm + ip_weight * inner
    p_norm, p_inner = score_terms(model, x[picks], g_L, params)
    g_L_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in g_L.values()))) \
        if g_L is not None else 0.0
    ip_share = lambda n, i: float(np.abs(ip_weight * i).sum()  # noqa: E731
                                  / max((np.abs(n) + np.abs(ip_weight * i)).sum(), 1e-300))
    return {
        **out,
        "spearman_score_entropy": spearman(score, ent),
        "spearman_score_gradnorm": spearman(score, norm),
        "spearman_gradnorm_entropy": spearman(norm, ent),
        "ip_share_pool": ip_share(norm, inner),
        "ip_share_picks": ip_share(p_norm, p_inner),
        "inner_negative_share_picks": float((p_inner < 0).mean()),
        "g_L_norm": g_L_norm,
        "g_u_norm_median_pool": float(np.median(np.sqrt(norm))),
        "g_u_norm_median_picks": float(np.median(np.sqrt(p_norm))),
    }
