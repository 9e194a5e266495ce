"""Set-based (diversity) strategies: BADGE and Coreset.

Their picks depend on each other, so they do not fit the per-sample ``score`` path. A
``SetStrategy`` splits selection into
  embed(model, x, ids, context)    -> (B, D) float32 features      (on the scoring actors)
  candidates(ids, feats, m, ctx)   -> indices of <= m rows          (per batch, and on the driver)
  pick(ids, feats, k, ctx)         -> k ids in pick order           (on the driver, once)
and ``prepare`` (per-round context from the labeled set, as for dynamicAL). ``candidates`` and
``pick`` both run the strategy's own greedy algorithm. Their result depends only on the SET of
(id, feature) rows: rows are sorted by id first, ties go to the smaller id, and BADGE's random
draws are keyed by (seed, id, step), not by position.

Approximation (distributed): each batch keeps m = oversample * k candidates, the driver reduces
its buffer with ``candidates`` again whenever it holds more than 4m + 4096 rows
(``StreamingCandidates``), then runs ``pick`` on what is left: the global step sees the union of
per-shard candidates, not the whole pool (the two-round scheme of Malkomes et al., NeurIPS 2015,
a constant-factor approximation of greedy k-center). Which rows share a driver reduction depends
on arrival order, so picks are exactly reproducible only while the buffer never reduces.
``sharded_pick`` replays the scheme in one process; tests/unit/test_diversity.py and
benchmarks/al_quality.py measure its effect against the exact single-process algorithm.

BADGE (Ash et al., ICLR 2020): g_u = (p_u - e_yhat) ⊗ [h_u, 1], p = softmax, yhat = argmax, h the
penultimate features; k-means++ seeding on g, first center the largest ||g|| (as in the reference
code). Features are stored factorised as rows [C, q = p - e_yhat (C), h (d)], because
  <g_i, g_j> = <q_i, q_j> (<h_i, h_j> + 1),
so a distance pass costs O(N (C + d)) and no N x C(d+1) matrix is ever built.
Coreset (Sener & Savarese, ICLR 2018): k-center greedy on h (Euclidean), centers initialised
with the labeled set's embeddings (at most ``max_labeled``, the first in id order).
Distances are computed against blocks of centers: never an N x N matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from raydal.scoring.base import PositiveInt, Strategy, register_strategy
from raydal.scoring.uncertainty import hash_uniform

Gram = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (N, D), (M, D) float64 -> (N, M)
_BLOCK = 1024  # centers per distance block: N x 1024 float64 at most


# ---- geometry (pure numpy, float64) ------------------------------------------------------------
def dot_gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean inner products: (N, D), (M, D) -> (N, M)."""
    return a @ b.T


def badge_gram(num_classes: int) -> Gram:
    """Inner products of BADGE gradient embeddings from factorised rows [q (C), h (d)]:
    <g_i, g_j> = <q_i, q_j> (<h_i, h_j> + 1); (N, C+d), (M, C+d) -> (N, M)."""
    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        c = num_classes
        return (a[:, :c] @ b[:, :c].T) * (a[:, c:] @ b[:, c:].T + 1.0)
    return gram


def sq_norms(x: np.ndarray, gram: Gram) -> np.ndarray:
    """(N, D) -> (N,) squared norms under ``gram``, without forming N x N."""
    return np.concatenate([np.diagonal(gram(x[s:s + _BLOCK], x[s:s + _BLOCK]))
                           for s in range(0, len(x), _BLOCK)]) if len(x) else np.zeros(0)


def min_sq_dist(x: np.ndarray, x_norms: np.ndarray, centers: np.ndarray, gram: Gram
                ) -> np.ndarray:
    """(N,) squared distance of each row of x (N, D) to its nearest row of centers (M, D);
    +inf when M = 0. Computed over blocks of centers."""
    best = np.full(len(x), np.inf)
    for s in range(0, len(centers), _BLOCK):
        c = np.asarray(centers[s:s + _BLOCK], dtype=np.float64)
        d = x_norms[:, None] + sq_norms(c, gram)[None, :] - 2.0 * gram(x, c)
        best = np.minimum(best, np.maximum(d, 0.0).min(axis=1))
    return best


def step_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """(N,) uint64 per-id random keys (seeded hash of the id, independent of row order)."""
    return (hash_uniform(list(ids), seed).numpy() * 2.0**53).astype(np.uint64)


def step_uniform(keys: np.ndarray, step: int) -> np.ndarray:
    """(N,) uniforms in [0, 1) for draw ``step``: splitmix64 of key + step (vectorised)."""
    with np.errstate(over="ignore"):
        z = keys + np.uint64(step + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


# ---- the two greedy algorithms (rows already sorted by id) ------------------------------------
def k_center_greedy(x: np.ndarray, k: int, centers: np.ndarray | None = None,
                    gram: Gram = dot_gram) -> list[int]:
    """Sener & Savarese greedy: repeatedly add the row farthest from every center so far.

    x: (N, D) candidates; centers: (M, D) initial centers (the labeled set) or None, in which
    case the first pick is row 0. Returns <= k distinct row indices in pick order.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = sq_norms(x, gram)
    dist = min_sq_dist(x, norms, centers if centers is not None else x[:0], gram)
    picks: list[int] = []
    for _ in range(min(k, len(x))):
        i = int(np.argmax(dist))  # first maximum: the smaller id on ties
        picks.append(i)
        dist = np.minimum(dist, min_sq_dist(x, norms, x[i:i + 1], gram))
        dist[picks] = -np.inf  # duplicates of a center have distance 0: never re-pick
    return picks


def kmeans_pp(x: np.ndarray, k: int, keys: np.ndarray, gram: Gram = dot_gram) -> list[int]:
    """k-means++ seeding (BADGE): first the row of largest norm, then rows drawn with
    probability proportional to their squared distance to the nearest chosen row.

    x: (N, D); keys: (N,) ``step_keys`` of the rows' ids. Draw t is an exponential race,
    argmax D^2_i / E_i with E_i = -log(1 - U_i(t)), which samples i with probability
    D^2_i / sum D^2 and depends on the ids only. Returns <= k distinct row indices.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = sq_norms(x, gram)
    picks: list[int] = []
    taken = np.zeros(len(x), dtype=bool)
    dist = norms.copy()
    for t in range(min(k, len(x))):
        if t == 0:
            i = int(np.argmax(norms))
        else:
            race = np.maximum(-np.log1p(-step_uniform(keys, t)), 1e-300)
            weight = np.where(taken, -np.inf, dist / race)
            if weight.max() <= 0:  # every remaining row sits on a center: draw uniformly
                weight = np.where(taken, -np.inf, 1.0 / race)
            i = int(np.argmax(weight))
        picks.append(i)
        taken[i] = True
        dist = np.minimum(dist, min_sq_dist(x, norms, x[i:i + 1], gram))
    return picks


# ---- embeddings (torch) -------------------------------------------------------------------------
@torch.no_grad()
def logits_and_features(model: torch.nn.Module, x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """timm model in eval mode: x (B, ...) -> (logits (B, C), penultimate features h (B, d))."""
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise TypeError(f"{type(model).__name__} is not a timm model: set-based strategies need "
                        "forward_features / forward_head(pre_logits=True) for embeddings")
    model.eval()
    f = model.forward_features(x)
    return model.forward_head(f), model.forward_head(f, pre_logits=True)


def badge_embedding(logits: torch.Tensor, h: torch.Tensor) -> np.ndarray:
    """Factorised BADGE rows [C, q = softmax - onehot(argmax) (C), h (d)]: (B, 1 + C + d)
    float32. Column 0 holds C so the driver can split rows without the model."""
    p = torch.softmax(logits.double().cpu(), dim=1)
    q = p - torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).double()
    c = torch.full((len(p), 1), float(p.shape[1]), dtype=torch.float64)
    return torch.cat([c, q, h.double().cpu()], dim=1).float().numpy()


# ---- protocol -----------------------------------------------------------------------------------
@dataclass
class SetStrategy(Strategy):
    """Base of set-based strategies (see the module docstring). Subclasses implement ``embed``
    and ``_greedy(ids, feats, k, context) -> row indices`` on rows sorted by id.
    oversample: candidates kept per batch / driver reduction, as a multiple of the budget."""

    oversample: PositiveInt = 2

    def embed(self, model: torch.nn.Module, x: torch.Tensor, ids: list[str],
              context: Any) -> np.ndarray:
        """x (B, ...) model inputs -> (B, D) float32 features."""
        raise NotImplementedError

    def _greedy(self, ids: np.ndarray, feats: np.ndarray, k: int, context: Any) -> list[int]:
        raise NotImplementedError

    def num_candidates(self, k: int) -> int:
        return self.oversample * k

    def candidates(self, ids: np.ndarray, feats: np.ndarray, k: int, context: Any) -> np.ndarray:
        """Indices into (ids (N,), feats (N, D)) of <= k rows to keep, in pick order."""
        ids = np.asarray(ids, dtype=str)
        order = np.argsort(ids, kind="stable")
        return order[self._greedy(ids[order], np.asarray(feats)[order], k, context)]

    def pick(self, ids: np.ndarray, feats: np.ndarray, k: int, context: Any) -> list[str]:
        """The final ``k`` ids (fewer if there are fewer rows), in pick order."""
        return [str(ids[i]) for i in self.candidates(ids, feats, k, context)]

    def score(self, model, x, ids, context):
        raise TypeError(f"strategy {self.name!r} is set-based and has no per-sample score; "
                        "use raydal.select(...) or its embed/candidates/pick methods")


@register_strategy
@dataclass
class Badge(SetStrategy):
    """BADGE: k-means++ on last-layer gradient embeddings with pseudo-labels.
    seed: keys of the k-means++ draws."""

    name: ClassVar[str] = "badge"
    seed: int = 0

    def embed(self, model, x, ids, context) -> np.ndarray:
        return badge_embedding(*logits_and_features(model, x))

    def _greedy(self, ids, feats, k, context) -> list[int]:
        c = int(feats[0, 0]) if len(feats) else 0
        return kmeans_pp(feats[:, 1:], k, step_keys(ids, self.seed), badge_gram(c))


@register_strategy
@dataclass
class Coreset(SetStrategy):
    """Coreset: k-center greedy on penultimate features, labeled set as initial centers.
    max_labeled: at most this many labeled embeddings are kept as centers (bounds the context
    shipped to every actor and the N x L distance work)."""

    name: ClassVar[str] = "coreset"
    needs_labeled: ClassVar[bool] = True
    max_labeled: PositiveInt = 10_000

    def prepare(self, model, labeled) -> np.ndarray:
        """(L, d) float32 embeddings of the first ``max_labeled`` labeled samples."""
        if model is None:
            raise ValueError("coreset needs a model to embed the labeled set")
        chunks, n = [], 0
        for x, _ in labeled:
            if n >= self.max_labeled:
                break
            h = logits_and_features(model, x[:self.max_labeled - n])[1]
            chunks.append(h.float().cpu().numpy())
            n += len(chunks[-1])
        return np.concatenate(chunks) if chunks else None

    def embed(self, model, x, ids, context) -> np.ndarray:
        return logits_and_features(model, x)[1].float().cpu().numpy()

    def _greedy(self, ids, feats, k, context) -> list[int]:
        return k_center_greedy(feats, k, context)


# ---- driver side --------------------------------------------------------------------------------
class StreamingCandidates:
    """Driver merge of set-based candidates (the counterpart of ``raydal.merge.StreamingTopK``):
    buffers (id, feature) rows, reduces them to m = strategy.num_candidates(k) with
    ``candidates`` whenever more than ``max_rows`` (default 4m + 4096) are held, and runs
    ``pick`` on the rest in ``result``."""

    def __init__(self, strategy: SetStrategy, k: int, context: Any, max_rows: int | None = None):
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        self.strategy, self.k, self.context = strategy, k, context
        self.m = strategy.num_candidates(k)
        self.max_rows = max_rows if max_rows is not None else 4 * self.m + 4096
        self._ids: list[np.ndarray] = []
        self._feats: list[np.ndarray] = []
        self._buffered = 0
        self.reductions = 0

    def add(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """ids (B,) str, feats (B, D) float32."""
        if len(ids) == 0:
            return
        self._ids.append(np.asarray(ids, dtype=str))
        self._feats.append(np.asarray(feats, dtype=np.float32))
        self._buffered += len(ids)
        if self._buffered > self.max_rows:
            ids, feats = self._concat()
            keep = self.strategy.candidates(ids, feats, self.m, self.context)
            self._ids, self._feats, self._buffered = [ids[keep]], [feats[keep]], len(keep)
            self.reductions += 1

    def _concat(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._ids), np.concatenate(self._feats)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (<=k,) in pick order, scores (<=k,) float64 = k - rank: higher is picked first)."""
        if not self._ids:
            return np.array([], dtype=str), np.array([], dtype=np.float64)
        ids = np.asarray(self.strategy.pick(*self._concat(), self.k, self.context), dtype=str)
        return ids, np.arange(self.k, self.k - len(ids), -1, dtype=np.float64)


def sharded_pick(strategy: SetStrategy, ids: np.ndarray, feats: np.ndarray, k: int,
                 context: Any, batch_size: int = 256, max_rows: int | None = None) -> list[str]:
    """One-process replay of ``raydal.select``'s set-based path: per-batch ``candidates`` of
    (ids (N,), feats (N, D)) in batches of ``batch_size`` rows, then the driver merge."""
    merger = StreamingCandidates(strategy, k, context, max_rows)
    m = strategy.num_candidates(k)
    for s in range(0, len(ids), batch_size):
        b_ids, b_feats = np.asarray(ids[s:s + batch_size], dtype=str), feats[s:s + batch_size]
        keep = strategy.candidates(b_ids, b_feats, m, context)
        merger.add(b_ids[keep], b_feats[keep])
    return merger.result()[0].tolist()


def k_center_cost(x: np.ndarray, centers: np.ndarray, gram: Gram = dot_gram) -> float:
    """k-center objective: the largest distance of a row of x (N, D) to its nearest center."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(min_sq_dist(x, sq_norms(x, gram), centers, gram).max()))


def k_means_cost(x: np.ndarray, centers: np.ndarray, gram: Gram = dot_gram) -> float:
    """k-means objective: the sum over rows of x (N, D) of the squared distance to the nearest
    center."""
    x = np.asarray(x, dtype=np.float64)
    return float(min_sq_dist(x, sq_norms(x, gram), centers, gram).sum())


def features_from_bytes(rows: np.ndarray) -> np.ndarray:
    """(N,) float32 byte strings of equal length (as shipped by the scoring actors) -> (N, D)."""
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([np.frombuffer(r, dtype=np.float32) for r in rows])
