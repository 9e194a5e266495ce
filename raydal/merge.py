"""Exact top-k selection and its streaming merge (pure numpy, no Ray).

Order: higher score first; equal scores break by smaller id (string order). Because this is a
total order on (score, id) and each sample's score does not depend on its batch, the top-k of
the union of any partition's per-part top-k is the global top-k: sharding never changes a pick.
A scorer may drop more than its batch's top-k: a row that is not in the top-k of everything the
same scorer has seen is ranked below k rows of the pool, so it cannot be a global pick either
(``RunningTopK``). That keeps what crosses the network to about k * (1 + ln(n / k)) rows per
scorer of n rows (rows in random order), instead of k per batch.
"""
from __future__ import annotations

import numpy as np


def top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of (ids (N,) str, scores (N,) float64), best first. NaN scores are dropped."""
    ids = np.asarray(ids, dtype=str)
    scores = np.asarray(scores, dtype=np.float64)
    keep = ~np.isnan(scores)
    ids, scores = ids[keep], scores[keep]
    if len(scores) > k:  # cheap prefilter: everything strictly above the k-th value, plus ties
        kth = np.partition(-scores, k - 1)[k - 1]
        keep = -scores <= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


class RunningTopK:
    """One scorer's top-k so far; ``admit`` passes on only the rows of a chunk that may enter it.

    Every row of the scorer's top-k is passed on at the time it is seen (and a few that are
    pushed out again by rows of the same chunk), so merging what all scorers passed on with
    ``StreamingTopK`` gives exactly the global top-k. Holds O(k) rows.
    """

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        self.k = k
        self._ids = np.array([], dtype=str)
        self._scores = np.array([], dtype=np.float64)

    def admit(self, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of (ids (N,) str, scores (N,) float64) to pass on, best first."""
        ids, scores = top_k(ids, scores, self.k)
        if len(self._ids) == self.k:  # full: only rows ranked above the current k-th can enter
            last_score, last_id = self._scores[-1], self._ids[-1]
            above = (scores > last_score) | ((scores == last_score) & (ids < last_id))
            ids, scores = ids[above], scores[above]
        if len(ids):
            self._ids, self._scores = top_k(np.concatenate([self._ids, ids]),
                                            np.concatenate([self._scores, scores]), self.k)
        return ids, scores


class StreamingTopK:
    """Merges (ids, scores) chunks into the exact top-k of distinct ids, holding O(k + chunk)
    rows."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        self.k = k
        self._ids: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._buffered = 0

    def add(self, ids: np.ndarray, scores: np.ndarray) -> None:
        self._ids.append(np.asarray(ids, dtype=str))
        self._scores.append(np.asarray(scores, dtype=np.float64))
        self._buffered += len(self._ids[-1])
        if self._buffered > 4 * self.k + 4096:
            self._reduce()

    def _reduce(self) -> None:
        if not self._ids:
            return
        ids, scores = np.concatenate(self._ids), np.concatenate(self._scores)
        # An id can arrive twice when Ray re-runs a block whose output was already delivered
        # (a retried task, a lost object rebuilt from lineage), with a score that may differ
        # in the last bits: keep its best entry, so a pick is never made twice.
        ids, scores = top_k(ids, scores, len(ids))
        _, first = np.unique(ids, return_index=True)
        keep = np.sort(first)[:self.k]
        self._ids, self._scores, self._buffered = [ids[keep]], [scores[keep]], len(keep)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (<=k,), scores (<=k,)), best first."""
        self._reduce()
        if not self._ids:
            return np.array([], dtype=str), np.array([], dtype=np.float64)
        return self._ids[0], self._scores[0]
