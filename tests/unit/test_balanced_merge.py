"""Class-balanced picks: quotas, the single-process reference, and its exact sharded merge."""
import numpy as np
import pytest

from raydal.merge import (RunningClassTopK, StreamingBalancedTopK, add_counts, balanced_top_k,
                          class_counts, class_quotas)


def test_quotas_largest_remainder_ties_to_the_smaller_class():
    counts = np.array([7, 0, 2, 1])
    # 6 x (0.7, 0, 0.2, 0.1) = 4.2, 0, 1.2, 0.6: floors 4, 0, 1, 0; the one left to 0.6
    assert class_quotas(counts, 6, "proportional").tolist() == [4, 0, 1, 1]
    # equal over the 3 classes predicted at least once; 7 = 2 x 3 + 1, the 1 to class 0
    assert class_quotas(counts, 7, "equal").tolist() == [3, 0, 2, 2]
    # equal remainders: the smaller classes first
    assert class_quotas(np.array([5, 5, 5, 5]), 6, "proportional").tolist() == [2, 2, 1, 1]
    assert class_quotas(np.array([0, 0]), 3, "equal").tolist() == [0, 0]
    with pytest.raises(ValueError, match="balance must be one of 'proportional', 'equal'"):
        class_quotas(counts, 3, "none")


@pytest.mark.parametrize("seed", range(20))
def test_quotas_sum_to_the_budget_and_round_the_shares(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, int(rng.integers(1, 12))) * (rng.random() < 0.9)
    counts[int(rng.integers(0, len(counts)))] += 1  # at least one candidate
    k = int(rng.integers(1, 400))
    for balance in ("proportional", "equal"):
        q = class_quotas(counts, k, balance)
        weights = counts if balance == "proportional" else (counts > 0)
        share = k * weights / weights.sum()
        assert q.sum() == k
        assert np.all(np.abs(q - share) < 1) and np.all(q[counts == 0] == 0)


def test_a_short_class_gives_its_quota_to_the_best_rows_left():
    ids = np.array(list("abcdefghij"))
    scores = np.arange(10.0)[::-1]  # a best ... j worst
    classes = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2])
    # equal: 2 each; class 2 has one row, its second slot goes to the best row left: c
    got = balanced_top_k(ids, scores, classes, 6, "equal")
    assert got[0].tolist() == ["a", "b", "c", "h", "i", "j"]
    assert got[2].tolist() == [0, 0, 0, 1, 1, 2]
    # proportional to 7 / 2 / 1: quotas 4, 1, 1
    got = balanced_top_k(ids, scores, classes, 6, "proportional")
    assert got[0].tolist() == ["a", "b", "c", "d", "h", "j"]
    # none: the plain top 6
    assert balanced_top_k(ids, scores, classes, 6, "none")[0].tolist() == list("abcdef")
    # a budget above the candidates: every candidate once
    assert sorted(balanced_top_k(ids, scores, classes, 50, "equal")[0]) == sorted(ids)


def _naive(ids, scores, classes, k, balance):
    """Python loops over one sorted list: the meaning of balanced_top_k, written out."""
    rows = sorted((-s, i, c) for i, s, c in zip(ids, scores, classes) if not np.isnan(s))
    if balance == "none":
        return [i for _, i, _ in rows[:k]]
    n = max(c for _, _, c in rows) + 1 if rows else 0
    counts = [sum(1 for _, _, c in rows if c == x) for x in range(n)]
    weights = counts if balance == "proportional" else [int(v > 0) for v in counts]
    total = sum(weights)
    quotas = [k * w // total for w in weights]
    rems = sorted(range(n), key=lambda x: (-(k * weights[x] % total), x))
    for x in rems[:k - sum(quotas)]:
        quotas[x] += 1
    taken, picked = [0] * n, []
    for _, i, c in rows:
        if taken[c] < quotas[c]:
            taken[c] += 1
            picked.append(i)
    rest = [i for _, i, _ in rows if i not in set(picked)]
    picked += rest[:k - len(picked)]
    return [i for _, i, _ in rows if i in set(picked)]


def _pool(rng):
    n = int(rng.integers(1, 2500))
    ids = np.array([f"id{v:06d}" for v in rng.permutation(10 * n)[:n]])
    scores = rng.integers(0, int(rng.integers(1, 40)), n).astype(np.float64)  # many ties
    scores[rng.random(n) < 0.02] = np.nan
    num_classes = int(rng.integers(1, 12))
    # skewed classes: some rare, some absent, so quotas run short
    p = rng.dirichlet(np.full(num_classes, 0.3))
    classes = rng.choice(num_classes, n, p=p)
    return ids, scores, classes


@pytest.mark.parametrize("seed", range(10))
def test_the_reference_equals_the_written_out_rule(seed):
    rng = np.random.default_rng(300 + seed)
    ids, scores, classes = _pool(rng)
    k = int(rng.integers(1, 300))
    for balance in ("none", "proportional", "equal"):
        got = balanced_top_k(ids, scores, classes, k, balance)
        assert got[0].tolist() == _naive(ids.tolist(), scores.tolist(), classes.tolist(), k,
                                         balance), balance
        assert len(got[0]) == min(k, int((~np.isnan(scores)).sum()))
        assert np.all(np.diff(got[1]) <= 0)


@pytest.mark.parametrize("seed", range(16))
def test_running_top_k_per_class_and_shard_gives_the_reference_picks(seed):
    """Each shard passes on what enters its per-class running top-k and its class counts (as
    the scorers do); the driver merges per class: the single-process picks."""
    rng = np.random.default_rng(500 + seed)
    ids, scores, classes = _pool(rng)
    k = int(rng.integers(1, 300))
    num_shards = int(rng.integers(1, 9))
    shard_of = rng.integers(0, num_shards, len(ids))
    for balance in ("proportional", "equal"):
        want = balanced_top_k(ids, scores, classes, k, balance)
        merger, passed = StreamingBalancedTopK(k, balance), 0
        for shard in rng.permutation(num_shards):
            running = RunningClassTopK(k)
            idx = np.flatnonzero(shard_of == shard)
            batch = int(rng.integers(1, 300))
            for s in range(0, len(idx), batch):
                part = idx[s:s + batch]
                merger.add_counts(class_counts(classes[part], scores[part]))
                got = running.admit(ids[part], scores[part], classes[part])
                passed += len(got[0])
                merger.add(*got)
        got = merger.result()
        assert got[0].tolist() == want[0].tolist(), balance
        assert got[2].tolist() == want[2].tolist()
        assert merger.counts.tolist() == class_counts(classes, scores).tolist()
        assert passed <= len(ids)


def test_equal_and_proportional_differ_on_a_skewed_pool():
    rng = np.random.default_rng(3)
    ids = np.array([f"{i:05d}" for i in range(1000)])
    scores = rng.random(1000)
    classes = np.where(np.arange(1000) < 900, 0, np.arange(1000) % 3 + 1)  # 90% class 0
    prop = balanced_top_k(ids, scores, classes, 40, "proportional")[2]
    equal = balanced_top_k(ids, scores, classes, 40, "equal")[2]
    # 900 / 34 / 33 / 33 rows: 36, 1.36, 1.32, 1.32; the row left to class 1's 0.36
    assert np.bincount(prop).tolist() == [36, 2, 1, 1]
    assert np.bincount(equal).tolist() == [10, 10, 10, 10]


def test_a_repeated_id_is_picked_once():
    ids = np.array(["a", "b", "a", "c"])
    scores = np.array([1.0, 0.5, 0.9, 0.2])
    got = balanced_top_k(ids, scores, np.array([0, 1, 0, 1]), 3, "equal")
    assert got[0].tolist() == ["a", "b", "c"]


def test_counts_add_across_lengths_and_skip_nan():
    assert class_counts(np.array([2, 0, 2]), np.array([1.0, np.nan, 3.0])).tolist() == [0, 0, 2]
    assert add_counts(np.array([1, 2]), np.array([0, 0, 5])).tolist() == [1, 2, 5]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        RunningClassTopK(0)
    with pytest.raises(ValueError, match="balance must be one of 'proportional', 'equal', "
                                         "got 'none'"):
        StreamingBalancedTopK(3, "none")


def test_the_config_takes_a_balance_and_names_a_wrong_one():
    from raydal.config import ConfigError, parse_config
    assert parse_config({}).selection.balance == "none"
    assert parse_config({"selection": {"balance": "equal"}}).selection.balance == "equal"
    with pytest.raises(ConfigError, match="selection.balance"):
        parse_config({"selection": {"balance": "even"}})
