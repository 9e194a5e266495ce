"""Exact top-k selection and its streaming merge (pure numpy, no Ray).

Order: higher score first; equal scores break by smaller id (string order). Because this is a
total order on (score, id) and each sample's score does not depend on its batch, the top-k of
the union of any partition's per-part top-k is the global top-k: sharding never changes a pick.
A scorer may drop more than its batch's top-k: a row that is not in the top-k of everything the
same scorer has seen is ranked below k rows of the pool, so it cannot be a global pick either
(``RunningTopK``). That keeps what crosses the network to about k * (1 + ln(n / k)) rows per
scorer of n rows (rows in random order), instead of k per batch.

Class-balanced picks (``balanced_top_k``, the single-process reference): each candidate also
carries the class the model predicts for it; quotas per predicted class (``class_quotas``) are
filled with each class's best rows, and quota a class cannot fill goes to the best rows left
overall. Every quota and every refill takes at most k rows of one class, so each scorer keeping
a running top-k PER CLASS (``RunningClassTopK``) and the driver merging per class
(``StreamingBalancedTopK``), plus the per-class candidate counts summed over all scorers, gives
exactly the reference's picks, whatever the sharding.
"""
from __future__ import annotations

import numpy as np

BALANCES = ("none", "proportional", "equal")


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


# ---- class-balanced picks ------------------------------------------------------------------------
def class_counts(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidates per predicted class: (N,) int classes, (N,) float64 scores -> (C,) int64,
    C = the largest class + 1; rows with a NaN score are no candidates and are not counted."""
    classes = np.asarray(classes, dtype=np.int64)[~np.isnan(np.asarray(scores, np.float64))]
    return np.bincount(classes, minlength=0).astype(np.int64)


def add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of two per-class count vectors of any lengths."""
    out = np.zeros(max(len(a), len(b)), dtype=np.int64)
    out[:len(a)] += a
    out[:len(b)] += b
    return out


def class_quotas(counts: np.ndarray, k: int, balance: str) -> np.ndarray:
    """Picks per predicted class: counts (C,) candidates per class -> (C,) int64 summing to k
    (0 everywhere if there is no candidate).

    "proportional": k x counts[c] / sum(counts); "equal": k / (classes with a candidate) for
    each class with a candidate. Largest-remainder rounding: each class gets the floor of its
    share, the rows left go one each to the largest remainders, ties to the smaller class.
    A quota may exceed its class's candidates ("equal", or k above the pool): see
    ``balanced_top_k``.
    """
    if balance not in BALANCES[1:]:
        raise ValueError(f"balance must be one of {', '.join(map(repr, BALANCES[1:]))} for "
                         f"quotas, got {balance!r}")
    counts = np.asarray(counts, dtype=np.int64)
    weights = counts if balance == "proportional" else (counts > 0).astype(np.int64)
    total = int(weights.sum())
    if total == 0:
        return np.zeros(len(counts), dtype=np.int64)
    quotas = k * weights // total  # exact integer arithmetic: no float rounding at the cut
    remainders = k * weights % total
    order = np.lexsort((np.arange(len(counts)), -remainders))
    quotas[order[:k - int(quotas.sum())]] += 1
    return quotas


def balanced_top_k(ids: np.ndarray, scores: np.ndarray, classes: np.ndarray, k: int,
                   balance: str, counts: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The class-balanced best ``k`` of (ids (N,) str, scores (N,) float64, classes (N,) int
    predicted classes): (ids, scores, classes) of the picks, best first (score, then id).

    1. quotas = ``class_quotas(counts, k, balance)``; counts default to the candidates per
       class of these rows (``class_counts``): pass the whole pool's when the rows are a subset
       that holds every class's top k (``StreamingBalancedTopK``);
    2. each class c contributes its best min(quotas[c], its rows) rows;
    3. the quota left unused by classes short of rows goes to the best rows not yet picked,
       of any class, until k rows are picked or none is left.
    Order within a class and overall: higher score first, ties to the smaller id; NaN scores
    are dropped; an id given twice keeps its best row. balance "none" is plain ``top_k``.
    This is the single-process reference of the distributed merge.
    """
    ids = np.asarray(ids, dtype=str)
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    keep = ~np.isnan(scores)
    ids, scores, classes = ids[keep], scores[keep], classes[keep]
    order = np.lexsort((ids, -scores))
    ids, scores, classes = ids[order], scores[order], classes[order]
    _, first = np.unique(ids, return_index=True)  # a repeated id: its best row
    first = np.sort(first)
    ids, scores, classes = ids[first], scores[first], classes[first]
    if balance == "none":
        return ids[:k], scores[:k], classes[:k]
    quotas = class_quotas(class_counts(classes, scores) if counts is None else counts, k,
                          balance)
    quotas = np.concatenate([quotas, np.zeros(max(0, int(classes.max(initial=-1)) + 1
                                                  - len(quotas)), np.int64)])
    # rank of each row within its class (rows are in global order already)
    by_class = np.argsort(classes, kind="stable")
    sorted_classes = classes[by_class]
    within = np.empty(len(ids), dtype=np.int64)
    within[by_class] = np.arange(len(ids)) - np.searchsorted(sorted_classes, sorted_classes)
    picked = within < quotas[classes]
    unused = k - int(picked.sum())
    if unused > 0:
        picked[np.flatnonzero(~picked)[:unused]] = True
    return ids[picked], scores[picked], classes[picked]


class RunningClassTopK:
    """``RunningTopK`` per predicted class: ``admit`` passes on the rows of a chunk that enter
    their class's running top-k (what ``StreamingBalancedTopK`` needs). Holds O(k) rows a
    class."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        self.k = k
        self._running: dict[int, RunningTopK] = {}

    def admit(self, ids: np.ndarray, scores: np.ndarray, classes: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of (ids (N,) str, scores (N,) float64, classes (N,) int) to pass on, as
        (ids, scores, classes), class by class (smaller class first), best first within one."""
        ids = np.asarray(ids, dtype=str)
        scores = np.asarray(scores, dtype=np.float64)
        classes = np.asarray(classes, dtype=np.int64)
        out_ids, out_scores, out_classes = [np.array([], dtype=str)], [np.array([])], \
            [np.array([], dtype=np.int64)]
        for c in np.unique(classes):
            rows = classes == c
            running = self._running.setdefault(int(c), RunningTopK(self.k))
            got_ids, got_scores = running.admit(ids[rows], scores[rows])
            out_ids.append(got_ids)
            out_scores.append(got_scores)
            out_classes.append(np.full(len(got_ids), c, dtype=np.int64))
        return np.concatenate(out_ids), np.concatenate(out_scores), np.concatenate(out_classes)


class StreamingBalancedTopK:
    """Driver side of the class-balanced selection: merges (ids, scores, classes) chunks into
    each class's exact top-k (``StreamingTopK`` a class) and sums the scorers' per-class
    candidate counts; ``result`` applies ``balanced_top_k`` to them. Holds O(k) rows a class."""

    def __init__(self, k: int, balance: str):
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        if balance not in BALANCES[1:]:
            raise ValueError(f"balance must be one of {', '.join(map(repr, BALANCES[1:]))}, "
                             f"got {balance!r}")
        self.k, self.balance = k, balance
        self._per_class: dict[int, StreamingTopK] = {}
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, ids: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=str)
        scores = np.asarray(scores, dtype=np.float64)
        classes = np.asarray(classes, dtype=np.int64)
        for c in np.unique(classes):
            rows = classes == c
            self._per_class.setdefault(int(c), StreamingTopK(self.k)).add(ids[rows], scores[rows])

    def add_counts(self, counts: np.ndarray) -> None:
        """One scorer call's candidates per class (``class_counts``)."""
        self.counts = add_counts(self.counts, np.asarray(counts, dtype=np.int64))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, scores, classes) of the picks, best first."""
        parts = [(c, *m.result()) for c, m in sorted(self._per_class.items())]
        if not parts:
            return np.array([], dtype=str), np.array([]), np.array([], dtype=np.int64)
        ids = np.concatenate([p[1] for p in parts])
        scores = np.concatenate([p[2] for p in parts])
        classes = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int64) for p in parts])
        return balanced_top_k(ids, scores, classes, self.k, self.balance, counts=self.counts)
