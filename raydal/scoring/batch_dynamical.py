"""Batch-aware dynamicAL: dynamicAL's score with the cross terms between picks kept.

dynamicAL (``raydal.scoring.dynamical``) drops the terms sum_{u != v in Q} <g_u, g_v> between the
picks of a batch Q, so a batch may be many copies of one kind of sample. This strategy picks
greedily instead: after each ``chunk`` of picks with gradient sum g_Q, every remaining
candidate's gain is
    f(u | Q) = s(u) - 2 * diversity * <g_Q, g_u>,      s(u) = ||g_u||^2 + ip_weight <g_L, g_u>,
i.e. the dynamicAL reference code's "influence deduction" (chunked greedy), with the inner
products taken from seeded random projections of the per-sample gradients over the same
parameters as s(u) (``raydal.scoring.sketch``: unbiased, computed layer by layer by the same
gradient rules, a user's ``register_rule`` included, never the B x P matrix).
diversity = 0 is plain dynamicAL; the paper's objective G(L ∪ Q) itself would ADD the cross
terms (diversity = -0.5), which rewards redundant batches: that is why the sign is flipped.

Distributed (``SetStrategy``): every scoring actor embeds rows as [s(u) (exact), sketch_u];
per batch and on the driver only the top m = oversample * budget rows by s are kept, and the
greedy runs on the driver over those. The top m of the pool is always inside the union of
per-shard top m, so the picks equal the single-process picks for any sharding, as far as a
row's score and sketch do not depend on its batch (they do at the last float bits, as for
dynamicAL itself). The greedy sees only the top m by s: a candidate outside it is never picked,
whatever its diversity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from raydal.scoring.base import NonNegative, PositiveInt, register_strategy
from raydal.scoring.diversity import SetStrategy
from raydal.scoring.dynamical import DynamicAL
from raydal.scoring.sketch import gradient_sketch


def diverse_greedy(scores: np.ndarray, sketches: np.ndarray, k: int, diversity: float,
                   chunk: int = 1) -> list[int]:
    """Greedy picks maximising s(u) - 2 diversity <sum of picked sketches, sketch_u>, ``chunk``
    at a time. scores (N,), sketches (N, D) float64 -> <= k row indices in pick order; ties go
    to the smaller row index."""
    scores = np.asarray(scores, dtype=np.float64)
    sketches = np.asarray(sketches, dtype=np.float64)
    gain = scores.copy()
    taken = np.zeros(len(scores), dtype=bool)
    g_q = np.zeros(sketches.shape[1])
    picks: list[int] = []
    while len(picks) < min(k, len(scores)):
        masked = np.where(taken, -np.inf, gain)
        step = np.argsort(-masked, kind="stable")[:min(chunk, k - len(picks))]
        picks.extend(int(i) for i in step)
        taken[step] = True
        if diversity:
            g_q += sketches[step].sum(0)
            gain = scores - 2.0 * diversity * (sketches @ g_q)
    return picks


@register_strategy
@dataclass
class DynamicALBatch(SetStrategy):
    """Options: ip_weight, params (of the scores and of the sketches), gradient_reduction (as
    dynamicAL); diversity (weight of the deduction, 0 = dynamicAL), chunk (picks per greedy
    step; the reference code deducts after chunks), sketch_dim (directions of the gradient
    projection), seed (of the projection), oversample (candidates kept = oversample x
    budget)."""

    name: ClassVar[str] = "dynamicAL_batch"
    ip_weight: NonNegative = 2.0
    params: Literal["all", "head"] = "all"
    gradient_reduction: Literal["sum", "mean"] = "sum"
    diversity: NonNegative = 1.0
    chunk: PositiveInt = 1
    sketch_dim: PositiveInt = 128
    seed: int = 0
    oversample: PositiveInt = 3

    def __post_init__(self):
        super().__post_init__()
        self._score = DynamicAL(ip_weight=self.ip_weight, params=self.params,
                                gradient_reduction=self.gradient_reduction)

    @property
    def needs_labeled(self) -> bool:
        return self._score.needs_labeled

    def prepare(self, model, labeled):
        return self._score.prepare(model, labeled)

    def scores(self, model, x, ids, context) -> torch.Tensor:
        """(B,) float64 dynamicAL scores s(u) (exact), as ``DynamicAL.score``."""
        return self._score.score(model, x, ids, context)

    def embed(self, model, x, ids, context) -> np.ndarray:
        """Rows [s(u), sketch_u (sketch_dim)]: (B, 1 + sketch_dim) float32."""
        s = self.scores(model, x, ids, context)
        sk = gradient_sketch(model, x.to(next(model.parameters()).device), self.sketch_dim,
                             self.seed, params=self.params).cpu()
        return torch.cat([s.double()[:, None], sk], dim=1).float().numpy()

    def _top(self, ids: np.ndarray, feats: np.ndarray, m: int) -> np.ndarray:
        """Indices of the m highest scores, ties to the smaller id, in that order; an id
        delivered twice (a block Ray re-ran) counts once."""
        order = np.lexsort((np.asarray(ids, dtype=str), -feats[:, 0].astype(np.float64)))
        _, first = np.unique(np.asarray(ids, dtype=str)[order], return_index=True)
        return order[np.sort(first)][:m]

    def candidates(self, ids, feats, k, context) -> np.ndarray:
        return self._top(ids, np.asarray(feats), k)

    def pick(self, ids, feats, k, context) -> list[str]:
        ids, feats = np.asarray(ids, dtype=str), np.asarray(feats)
        top = self._top(ids, feats, self.num_candidates(k))
        top = top[np.argsort(ids[top], kind="stable")]  # greedy over rows in id order
        chosen = diverse_greedy(feats[top, 0], feats[top, 1:], k, self.diversity, self.chunk)
        return [str(ids[top[i]]) for i in chosen]
